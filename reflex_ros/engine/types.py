"""The data that flows through the engine: numpy in, numpy out, no ROS, no torch.

msgs -> :class:`Observation` -> engine -> :class:`ChunkResult` -> latency compensation ->
publishers. Everything downstream of the ROS layer speaks only these types, so the engine
and the calibrator can be tested, benchmarked and replayed from bags without rclpy.
"""

from __future__ import annotations

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

    images: one ``(H, W, 3)`` uint8 RGB array per camera, in the export's camera order and
        already at the model's input size (the ROS layer decodes and resizes).
    state: ``(state_dim,)`` float32 joint state in the order of the node's ``joint_names``;
        ``state_dim <= max_state_dim`` (the engine zero-pads, as pi0 does).
    instruction: the language instruction.
    stamp_ns: the observation time (ROS time, nanoseconds); chunks are stamped from it.
    """

    images: list[np.ndarray]
    state: np.ndarray
    instruction: str
    stamp_ns: int = 0


@dataclass
class ChunkResult:
    """One action chunk and how long it took.

    actions: ``(chunk_size, action_dim)`` float32; row i is meant for ``stamp_ns + i*dt``.
    timings_ms: per-stage wall times: ``preprocess``, ``prefix``, ``denoise``, ``total``
        (GPU engines synchronize before reading the clock).
    """

    actions: np.ndarray
    timings_ms: dict[str, float]
    nfe: int
    stamp_ns: int = 0
    cfg_beta: float | None = None


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
    image_size: int  # square input side in pixels
    supported_nfe: tuple[int, ...]
    model_hash: str
    cuda_graph: bool = False
    extra: dict[str, str] = field(default_factory=dict)


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
    ) -> ChunkResult:
        """Compute one chunk. ``nfe`` must be in ``info.supported_nfe``; ``cfg_beta`` None
        means no guidance, otherwise it must be >= 1. ``noise`` (chunk_size, action_dim)
        float32 makes the call deterministic (parity checks, replay)."""
        ...

    def close(self) -> None:
        """Release sessions / GPU memory. The engine is unusable afterwards."""
        ...


NFE_CHOICES: tuple[int, ...] = (1, 2, 4, 8, 10)
