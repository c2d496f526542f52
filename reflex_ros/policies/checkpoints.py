"""What ``reflex-ros export`` / ``predict`` were pointed at: a checkpoint directory or a hub id.

A LeRobot checkpoint is a directory holding ``config.json`` (whose ``type`` names the family)
and ``model.safetensors``. A hub id (``lerobot/smolvla_base``, ``me/my_finetune``) is resolved
through the local Hugging Face cache in offline mode: nothing is ever downloaded (a robot
computer may have no network, and a silent multi-GB download is not what ``export`` means).
When something is missing the error names it and gives the one command that fetches it on a
machine with internet access.
"""

from __future__ import annotations

import json
from pathlib import Path

from reflex_ros.engine.types import ExportError, ReflexError

CHECKPOINT_CONFIG = "config.json"
CHECKPOINT_WEIGHTS = "model.safetensors"


def hub_snapshot(repo_id: str) -> Path:
    """The local snapshot directory of a checkpoint's hub id (offline; ExportError if absent)."""
    from reflex_ros.policies.lerobot.hub_cache import resolve_repo_dir

    try:
        return resolve_repo_dir(repo_id, required=(CHECKPOINT_CONFIG, CHECKPOINT_WEIGHTS))
    except ReflexError as exc:
        raise ExportError(f"checkpoint {exc}") from None


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "/", "~"))


def resolve_checkpoint(source: str) -> tuple[str, Path]:
    """``(model_type, directory)`` of a checkpoint directory or hub id."""
    path = Path(source).expanduser()
    if not path.exists() and _looks_like_hub_id(source):
        path = hub_snapshot(source)
    if not path.exists():
        raise ExportError(f"checkpoint {source!r} is neither a directory nor a hub id in the local cache")
    if not path.is_dir():
        raise ExportError(f"checkpoint {path} is not a directory (expected LeRobot's config.json + model.safetensors)")
    if (path / "reflex_config.json").is_file():
        raise ExportError(f"{path} is already a reflex_ros export; serve it with `reflex-ros run {path}` or "
                          f"re-check it with `reflex-ros validate {path}`")
    cfg_path = path / CHECKPOINT_CONFIG
    if not cfg_path.is_file():
        raise ExportError(f"{path} has no {CHECKPOINT_CONFIG}: not a LeRobot checkpoint (expected config.json, "
                          "model.safetensors and the policy_preprocessor/postprocessor files)")
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExportError(f"{cfg_path} is not valid JSON ({exc})") from None
    model_type = config.get("type") if isinstance(config, dict) else None
    if not isinstance(model_type, str) or not model_type:
        raise ExportError(f"{cfg_path} has no 'type' key naming the policy family (smolvla, pi0, pi05)")
    return model_type, path
