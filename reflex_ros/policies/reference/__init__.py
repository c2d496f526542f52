"""The reference flow VLA: reflex_ros's own pi0-style model, random weights at preset sizes.

It has no trained weights; it exists so the whole pipe (export, parity, both engines, the
CUDA-graph fast path, the node, calibration) can be exercised at any size, from ``tiny``
(unit tests, the CPU demo) to ``pi0`` (the published pi0 dimensions, for GPU benchmarks).
Torch is imported only by the model-side methods.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reflex_ros.engine.types import ExportError
from reflex_ros.policies.base import ExportSource
from reflex_ros.policies.reference.config import PRESETS, PolicyConfig, get_preset
from reflex_ros.policies.reference.processor import ReferenceProcessor

MODEL_TYPE = "reflex_ros_flow_vla"


class ReferenceFamily:
    """:class:`~reflex_ros.policies.base.Family` for the reference model."""

    model_type = MODEL_TYPE
    description = "reflex_ros reference flow VLA (pi0-style, random weights; presets tiny/small/pi0)"
    presets = tuple(PRESETS)

    def processor(self, export_dir: Path, policy_config: Mapping[str, Any]) -> ReferenceProcessor:
        return ReferenceProcessor(PolicyConfig.from_dict(dict(policy_config)))

    def load_model(self, export_dir: Path, policy_config: Mapping[str, Any], *, device: Any, dtype: Any) -> Any:
        from reflex_ros.policies.reference.weights import load_policy

        return load_policy(export_dir, device=device, dtype=dtype)

    def fast_path(self, model: Any) -> Any | None:
        from reflex_ros.policies.reference.fused import FusedPolicy, supports

        return FusedPolicy(model) if supports(model.cfg) else None

    def export_source(self, source: str, *, num_cameras: int | None = None, seed: int = 0, **_: Any) -> ExportSource:
        from reflex_ros.policies.reference.weights import build_policy, save_policy

        if source not in PRESETS:
            raise ExportError(f"unknown model preset {source!r}; choose one of {sorted(PRESETS)}")
        try:
            cfg = get_preset(source, num_cameras=num_cameras, seed=seed)
        except ValueError as exc:
            raise ExportError(str(exc)) from None
        model = build_policy(cfg).eval()
        cams = f" --num-cameras {num_cameras}" if num_cameras else ""
        return ExportSource(
            model_type=MODEL_TYPE,
            model=model,
            processor=ReferenceProcessor(cfg),
            policy_config=cfg.to_dict(),
            write=lambda directory: save_policy(model, directory),
            label=f"preset {source}",
            preset=source,
            export_command=f"reflex-ros export --model {source}{cams} --seed {seed}",
        )


FAMILY = ReferenceFamily()


def torch_engine(model: Any, **kwargs: Any) -> Any:
    """A TorchEngine over an in-memory reference model (bench, GPU proofs, tests): the
    processor and fast path a loaded export would get."""
    from reflex_ros.engine.torch_runtime import TorchEngine

    kwargs.setdefault("fast_path", FAMILY.fast_path)
    kwargs.setdefault("model_type", MODEL_TYPE)
    return TorchEngine(model, ReferenceProcessor(model.cfg), **kwargs)
