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
import os
from pathlib import Path

from reflex_ros.engine.types import ExportError

CHECKPOINT_CONFIG = "config.json"
CHECKPOINT_WEIGHTS = "model.safetensors"


def download_hint(repo_id: str) -> str:
    """The command that puts ``repo_id`` into the Hugging Face cache (run where there is
    network; copy ``~/.cache/huggingface`` over, or set ``HF_HOME``, on the robot)."""
    return f"`hf download {repo_id}` (or `huggingface-cli download {repo_id}`) on a machine with internet access"


def hub_snapshot(repo_id: str, *, what: str = "checkpoint") -> Path:
    """The local snapshot directory of ``repo_id`` in the HF cache, offline; ExportError if absent."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as exc:  # pragma: no cover - huggingface_hub ships with transformers
        raise ExportError(f"resolving the hub id {repo_id!r} needs huggingface_hub ({exc})") from None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    except Exception as exc:  # malformed ids, broken caches
        raise ExportError(f"{what} {repo_id!r} could not be resolved in the local Hugging Face cache "
                          f"({type(exc).__name__}: {exc}); fetch it with {download_hint(repo_id)}") from None
    from huggingface_hub.constants import HF_HUB_CACHE

    raise ExportError(f"{what} {repo_id!r} is not in the local Hugging Face cache ({HF_HUB_CACHE}); nothing is "
                      f"downloaded here: fetch it with {download_hint(repo_id)}")


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
