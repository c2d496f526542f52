"""Save / load / build policies: ``policy.safetensors`` + ``policy_config.json``.

safetensors holds only tensors (no pickle, memory-mappable); the JSON makes the directory
self-describing so a loader can rebuild the architecture before reading the weights. Every
failure is an :class:`ExportError` naming the file and what was expected.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from reflex_ros.engine.precision import resolve_dtype
from reflex_ros.engine.types import ExportError
from reflex_ros.policies.reference.config import PolicyConfig, get_preset
from reflex_ros.policies.reference.model import FlowPolicy, create_policy

WEIGHTS_FILE = "policy.safetensors"
CONFIG_FILE = "policy_config.json"


def build_policy(preset_or_config: str | PolicyConfig, device: str | torch.device = "cpu", **overrides) -> FlowPolicy:
    """A seeded random-weight policy from a preset name (with overrides) or a config."""
    if isinstance(preset_or_config, PolicyConfig):
        cfg = preset_or_config.replace(**{k: v for k, v in overrides.items() if v is not None})
    else:
        cfg = get_preset(preset_or_config, **overrides)
    return create_policy(cfg, device=device)


def save_policy(model: FlowPolicy, directory: str | Path) -> Path:
    """Write ``policy.safetensors`` (fp32, contiguous) and ``policy_config.json``."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt", "preset": model.cfg.preset})
    (out / CONFIG_FILE).write_text(json.dumps(model.cfg.to_dict(), indent=2, sort_keys=True) + "\n")
    return out


def load_config(directory: str | Path) -> PolicyConfig:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise ExportError(f"{path} is missing; expected the policy config written by save_policy "
                          "(re-run `reflex-ros export`)")
    try:
        return PolicyConfig.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path} is not a valid policy config: {exc} (re-run `reflex-ros export`)") from exc


def load_policy(
    directory: str | Path, device: str | torch.device = "cpu", dtype: str | torch.dtype = torch.float32
) -> FlowPolicy:
    """Rebuild the architecture from the JSON and load the safetensors into it.

    Missing file, unreadable/corrupt safetensors, missing or unexpected tensor names and
    shape mismatches each raise ExportError naming the tensor and the expected shape.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    cfg = load_config(directory)
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise ExportError(f"{path} is missing; expected the policy weights (re-run `reflex-ros export`)")
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ExportError(f"{path} is not a readable safetensors file ({exc}); re-run `reflex-ros export`") from exc
    with torch.device("meta"):
        model = FlowPolicy(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ExportError(
            f"{path} does not match {CONFIG_FILE}: missing tensors {missing[:5]}, unexpected {unexpected[:5]} "
            "(weights and config come from different exports?)"
        )
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ExportError(
                f"{path}: tensor {name} has shape {tuple(tensors[name].shape)}; {CONFIG_FILE} expects {shape}"
            )
    model = model.to_empty(device=device)
    model.load_state_dict(tensors, strict=True)
    return model.to(resolve_dtype(dtype)).eval().requires_grad_(False)


@torch.no_grad()
def clone_policy(model: FlowPolicy, dtype: str | torch.dtype, device: str | torch.device | None = None) -> FlowPolicy:
    """A copy of ``model`` in ``dtype`` on ``device`` without a full-precision intermediate.

    ``nn.Module.to`` converts in place, so an fp32 engine and a bf16 engine in one process
    (the bench's comparison table) need a second module; allocating it directly in the
    target dtype keeps pi0's peak memory at fp32 + bf16 instead of 2 x fp32.
    """
    target = resolve_dtype(dtype)
    dev = torch.device(device) if device is not None else model.device
    with torch.device("meta"):
        copy = FlowPolicy(model.cfg).to(target)  # free on meta: no fp32 copy is ever allocated
    copy = copy.to_empty(device=dev)
    for dst, src in zip(copy.parameters(), model.parameters(), strict=True):
        dst.copy_(src)
    return copy.eval().requires_grad_(False)
