"""The data that flows through the engine: numpy in, numpy out, no ROS, no torch.

msgs -> :class:`Observation` -> engine -> :class:`ChunkResult` -> latency compensation ->
publishers. Everything downstream of the ROS layer speaks only these types, so the engine
and the calibrator can be tested, benchmarked and replayed from bags without rclpy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


class ReflexError(Exception):
    """Base class for errors a user can act on. The message names the thing and the fix."""


class UsageError(ReflexError, ValueError):
    """A value the caller chose is not allowed (an unsupported NFE, cfg_beta < 1, ...).

    Also a ValueError, so code that validates parameters with ``except ValueError`` keeps
    working, while code that reports user errors catches every ReflexError in one place."""


class ExportError(ReflexError):
    """An export directory is missing, corrupt, or does not match its reflex_config.json."""


class ObservationError(ReflexError):
    """An observation has the wrong shape, dtype, or non-finite values."""


class ProviderUnavailableError(ReflexError):
    """A requested execution provider / device / mode cannot run on this machine."""


class ParityError(ReflexError):
    """ONNX and torch disagree beyond the threshold (export refuses to write)."""


@dataclass
class Observation:
    """One synchronized observation.

    images: ``(H, W, 3)`` uint8 RGB arrays at the camera's own resolution: either a list in
        the export's camera order, or a mapping camera name -> image (``EngineInfo.camera_names``;
        for a LeRobot policy these are its feature keys, e.g. ``observation.images.top``). With
        a mapping, a camera that is absent is missing for this observation and the model
        handles it as its family does (LeRobot: a masked, -1-filled image). Resizing to the
        model's input size is the engine's job (each family resizes its own way).
    state: ``(state_dim,)`` float32 joint state in the order of the node's ``joint_names``;
        ``state_dim <= max_state_dim`` (the engine normalizes and zero-pads as the family does).
    instruction: the language instruction.
    stamp_ns: the observation time (ROS time, nanoseconds); chunks are stamped from it.
    """

    images: Sequence[np.ndarray] | Mapping[str, np.ndarray]
    state: np.ndarray
    instruction: str
    stamp_ns: int = 0


@dataclass
class ChunkResult:
    """One action chunk and how long it took.

    actions: ``(chunk_size, action_dim)`` float32, what the robot gets (un-normalized);
        row i is meant for ``stamp_ns + i*dt``.
    timings_ms: per-stage wall times: ``preprocess``, ``prefix``, ``denoise``, ``total``
        (GPU engines synchronize before reading the clock).
    """

    actions: np.ndarray
    timings_ms: dict[str, float]
    nfe: int
    stamp_ns: int = 0
    cfg_beta: float | None = None


#: how a :class:`ChunkGuide` steers the denoising (``rtc_mode``): ``guided`` is real-time
#: chunking's exact guidance (a vector-Jacobian product through the model per step; torch
#: only), ``inpaint`` the gradient-free variant (the predicted clean chunk's weighted rows
#: pulled to the target; any decomposed engine)
GUIDE_GUIDED, GUIDE_INPAINT = "guided", "inpaint"
GUIDE_MODES: tuple[str, ...] = (GUIDE_GUIDED, GUIDE_INPAINT)
#: prefix weight schedules of real-time chunking (LeRobot's RTCAttentionSchedule, lowercase)
GUIDE_SCHEDULES: tuple[str, ...] = ("zeros", "ones", "linear", "exp")


@dataclass(frozen=True)
class ChunkGuide:
    """Real-time chunking (arXiv 2506.07339): steer a new chunk towards what is already
    being executed while it is denoised.

    target: ``(rows, action_dim)`` the previous chunk's leftover in the robot's action space
        (what ``postprocess`` returns), aligned to the new chunk's rows: ``target[i]`` is what
        the robot is commanded at the new chunk's row-``i`` time. ``rows <= chunk_size``; the
        engine normalizes it into the model's action space (``Processor.normalize_actions``).
    delay: d, the rows executed before the new chunk can take over: weight 1 (frozen).
    horizon: the rows ``>= horizon`` are not guided (clamped to ``rows``).
    schedule: the weights of rows ``d .. horizon-1``: zeros (none), ones (1), linear
        (1 -> 0) or exp (LeRobot's exponential decay).
    max_weight: beta, the cap of the guidance weight ``min(beta, c * inv_r2)`` (guided mode).
    mode: ``guided`` (exact, a VJP per step) or ``inpaint`` (gradient-free).
    """

    target: np.ndarray
    delay: int
    horizon: int
    schedule: str = "linear"
    max_weight: float = 10.0
    mode: str = GUIDE_GUIDED


@dataclass
class EngineInfo:
    """What an engine is and what it can do; shown in diagnostics and used by the resolver."""

    engine: str  # "onnx" | "torch"
    provider: str  # e.g. "CPUExecutionProvider", "CUDAExecutionProvider", "cuda", "cpu"
    dtype: str  # "fp32" | "fp16" | "bf16"
    chunk_size: int
    action_dim: int
    max_state_dim: int
    num_cameras: int
    image_size: int  # the model's (square) input side in pixels; cameras may be any size
    supported_nfe: tuple[int, ...]
    model_hash: str
    cuda_graph: bool = False
    extra: dict[str, str] = field(default_factory=dict)
    model_type: str = "reflex_ros_flow_vla"
    #: camera names in the export's order (``Observation.images`` keys)
    camera_names: tuple[str, ...] = ()
    #: cameras the model expects to be absent at times (LeRobot's ``empty_camera_<i>``):
    #: nothing needs to feed them; every other camera needs a source
    optional_cameras: tuple[str, ...] = ()
    #: the sampler's action width (noise is ``(chunk_size, action_width)``); LeRobot models
    #: sample ``max_action_dim`` and the robot gets the first ``action_dim``
    action_width: int = 0
    #: the exact state length the model needs (a LeRobot policy normalizes per joint), or 0:
    #: any length up to ``max_state_dim``, zero-padded
    state_dim: int = 0
    #: the :class:`ChunkGuide` modes ``infer(..., guide=)`` accepts (empty: none)
    guide_modes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.camera_names:
            self.camera_names = tuple(f"camera{i}" for i in range(self.num_cameras))
        if not self.action_width:
            self.action_width = self.action_dim


@runtime_checkable
class Engine(Protocol):
    """The one interface both runtimes implement (see onnx_runtime.py, torch_runtime.py)."""

    info: EngineInfo

    def infer(
        self,
        obs: Observation,
        *,
        nfe: int | None = None,
        cfg_beta: float | None = None,
        noise: np.ndarray | None = None,
        guide: ChunkGuide | None = None,
    ) -> ChunkResult:
        """Compute one chunk. ``nfe`` must be in ``info.supported_nfe``; ``cfg_beta`` None
        means no guidance, otherwise it must be >= 1. ``noise`` (chunk_size, action_width)
        float32 makes the call deterministic (parity checks, replay, predict). ``guide``
        steers the chunk towards the one being executed (real-time chunking); its mode must
        be in ``info.guide_modes``."""
        ...

    def close(self) -> None:
        """Release sessions / GPU memory. The engine is unusable afterwards."""
        ...


#: the NFE values the auto-calibrator chooses among (Reflex's auto-calibrate page)
NFE_CHOICES: tuple[int, ...] = (1, 2, 4, 8, 10)
#: the most denoising steps one chunk may take; a decomposed export serves any NFE up to it
#: (its expert graph is one step), a monolithic one only its unrolled NFE
MAX_NFE = 100
ANY_NFE: tuple[int, ...] = tuple(range(1, MAX_NFE + 1))

#: the prefix of the arrays a processor's ``prepare(..., device_images=True)`` hands over:
#: one uint8 (H, W, 3) frame per present camera slot, resized on the GPU by the torch engine
FRAME_PREFIX = "frame_"


def frame_name(slot: int) -> str:
    """The array name of camera slot ``slot``'s raw frame (see :data:`FRAME_PREFIX`)."""
    return f"{FRAME_PREFIX}{int(slot)}"
