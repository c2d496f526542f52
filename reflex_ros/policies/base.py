"""What a policy family provides, so export, predict, the runtimes and bench need no family code.

A *family* is one model architecture with its own pre- and post-processing: the reference
flow VLA (``reference/``), LeRobot's pi0, pi0.5 and SmolVLA. Everything family-specific sits
behind three objects:

- :class:`Processor` (numpy only, no torch): a raw :class:`~reflex_ros.engine.types.Observation`
  (cameras at any size, raw joint state, instruction) -> the model's named input arrays, and
  the sampler's output -> what the robot gets. Both runtimes call it, so the ONNX and torch
  engines see identical inputs, and the ONNX serving path never imports torch.
- :class:`PolicyModel` (torch): ``prefix`` once per chunk -> a flat per-layer KV list and the
  prefix mask; ``velocity`` once per Euler step. The exporter traces exactly these two into
  ``vlm_prefix.onnx`` / ``expert_denoise.onnx``, and the torch engine runs them (eager or
  captured); the Euler/CFG loop around them is ``engine.schedule.euler_loop`` for everyone.
- :class:`Family`: builds both from an export directory, and builds an :class:`ExportSource`
  (a model + processor + what to write) from whatever the user points ``export`` at.

Adding a family = one package under ``policies/`` exposing ``FAMILY`` + one line in
``policies/__init__.py``'s registry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from reflex_ros.engine.types import Observation

#: (name, numpy dtype name, shape); a str dim is symbolic (the dynamic batch axis)
TensorSpec = tuple[str, str, tuple[int | str, ...]]


class Processor(Protocol):
    """numpy in, numpy out; never imports torch."""

    #: camera names in the model's order (``Observation.images`` keys)
    camera_names: tuple[str, ...]
    #: cameras that may be absent by design (LeRobot's empty cameras); the rest need a source
    optional_cameras: tuple[str, ...]
    #: the model's input side in pixels (what a camera is resized to; informative)
    image_size: int
    chunk_size: int
    #: what the robot gets per row
    action_dim: int
    #: the sampler's width (noise is ``(chunk_size, action_width)``)
    action_width: int
    max_state_dim: int
    #: the exact state length the family needs (it normalizes per joint), or None: any
    #: length up to ``max_state_dim`` (zero-padded)
    state_dim: int | None
    #: longest instruction in tokens (after the family's prompt template)
    max_lang_tokens: int
    #: whether ``prepare(..., cfg_beta=...)`` builds the RECAP [cond, uncond] batch
    supports_cfg: bool

    def input_specs(self) -> list[TensorSpec]:
        """Every array :meth:`prepare` returns, batch axis symbolic (``"batch"``)."""
        ...

    def prepare(self, obs: Observation, cfg_beta: float | None = None) -> dict[str, np.ndarray]:
        """Validated model inputs with a leading batch axis: 1, or 2 = [cond, uncond] with CFG.
        Bad input raises ObservationError naming the thing."""
        ...

    def postprocess(self, x: np.ndarray) -> np.ndarray:
        """Sampler output ``(chunk_size, action_width)`` -> ``(chunk_size, action_dim)`` float32."""
        ...

    def normalize_actions(self, actions: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`postprocess`: robot actions ``(rows, action_dim)`` -> the
        sampler's space ``(rows, action_width)`` float32 (real-time chunking's target)."""
        ...


class PolicyModel(Protocol):
    """The torch model of a family (an ``nn.Module``) as the engine and the exporter use it."""

    prefix_input_names: tuple[str, ...]
    #: inputs each velocity step needs besides x_t, t, the KV and the prefix mask
    expert_input_names: tuple[str, ...]

    def prefix(self, **inputs: Any) -> tuple[list[Any], Any]:
        """Flat per-layer KV list ``[k_0, v_0, k_1, v_1, ...]`` and the prefix mask bool [B, P]."""
        ...

    def velocity(self, x_t: Any, t: Any, kv: list[Any], prefix_mask: Any, **expert_inputs: Any) -> Any:
        """``v_t`` [B, chunk, action_width] at flow time ``t`` [B] (float32)."""
        ...

    def kv_shapes(self, batch: int | str) -> list[tuple[int | str, ...]]:
        """Shapes of the KV list (and so of the ONNX KV tensors)."""
        ...


@dataclass
class ExportSource:
    """Everything ``reflex-ros export`` needs from a family for one model.

    ``write(dir)`` writes the weights, ``policy_config.json`` and any assets (tokenizer files)
    into the export directory; the family's ``processor``/``load_model`` read them back from
    there, so serving never needs the original checkpoint, the HF cache or the network.
    ``extra_config``: ``assets`` (files/dirs ``write`` adds, checked at load) and
    ``num_inference_steps`` (the checkpoint's default NFE)."""

    model_type: str
    model: Any
    processor: Processor
    policy_config: dict[str, Any]
    write: Callable[[Path], None]
    #: what the user asked for, for messages ("preset tiny", "checkpoint ~/ckpt")
    label: str
    preset: str | None = None
    #: how to re-create this export (remediation hints)
    export_command: str = ""
    extra_config: dict[str, Any] = field(default_factory=dict)


class Family(Protocol):
    """One entry of the registry (``policies/__init__.py``)."""

    model_type: str
    description: str

    def processor(self, export_dir: Path, policy_config: Mapping[str, Any]) -> Processor:
        """The numpy processor of an export (torch-free)."""
        ...

    def load_model(self, export_dir: Path, policy_config: Mapping[str, Any], *, device: Any, dtype: Any) -> Any:
        """The torch :class:`PolicyModel` of an export, on ``device`` in ``dtype``."""
        ...

    def fast_path(self, model: Any) -> Any | None:
        """A fused CUDA-graph path for ``model`` (``allocate/prefix/denoise``), or None: the
        torch engine then captures the model's own ``prefix``/``velocity``."""
        ...

    def export_source(self, source: str, **options: Any) -> ExportSource:
        """The model behind ``source`` (a preset name or a checkpoint) ready to export."""
        ...
