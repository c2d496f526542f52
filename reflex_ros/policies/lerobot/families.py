"""model_type -> the family's processor and model classes, imported on first use.

The processor lookup never imports torch (the ONNX serving path builds processors only);
the model lookup does.
"""

from __future__ import annotations

import importlib
from typing import Any

from reflex_ros.policies.lerobot.errors import CheckpointError
from reflex_ros.policies.lerobot.spec import MODEL_TYPES

_CLASSES = {
    "pi0": ("Pi0Processor", "Pi0Model"),
    "pi05": ("Pi05Processor", "Pi05Model"),
    "smolvla": ("SmolVLAProcessor", "SmolVLAModel"),
}


def _check(model_type: str) -> None:
    if model_type not in MODEL_TYPES:
        raise CheckpointError(f"LeRobot type {model_type!r} is not supported; supported: {', '.join(MODEL_TYPES)}")


def processor_class(model_type: str) -> Any:
    """The numpy processor class of ``model_type`` (torch-free)."""
    _check(model_type)
    return getattr(importlib.import_module(f"reflex_ros.policies.{model_type}.processor"), _CLASSES[model_type][0])


def model_class(model_type: str) -> Any:
    """The torch model class of ``model_type`` (imports torch)."""
    _check(model_type)
    return getattr(importlib.import_module(f"reflex_ros.policies.{model_type}.model"), _CLASSES[model_type][1])


def build_from_checkpoint(path: str, tokenizer: Any = None) -> tuple[Any, Any, Any]:
    """``(checkpoint, processor, model)`` for a LeRobot checkpoint directory (imports torch)."""
    from reflex_ros.policies.lerobot.checkpoint import load_lerobot_checkpoint

    ckpt = load_lerobot_checkpoint(path)
    processor = processor_class(ckpt.model_type)(ckpt.spec, ckpt.stats, tokenizer)
    model = model_class(ckpt.model_type)(ckpt.spec, ckpt.load_state_dict())
    return ckpt, processor, model
