"""Find a Hugging Face repo in the local cache, without the network and without huggingface_hub.

LeRobot checkpoints name their tokenizer (and SmolVLA its backbone) by hub id. A user has
those repos in their cache after one download; we only ever read that cache, so a robot
never blocks on (or silently depends on) the network. A missing repo is an error that says
which command fetches it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from reflex_ros.policies.lerobot.errors import HubFileNotFoundError


def hub_cache_dir() -> Path:
    """The hub cache directory, resolved the way huggingface_hub does it.

    ``HF_HUB_CACHE`` wins, then ``HF_HOME/hub``, then ``XDG_CACHE_HOME/huggingface/hub``,
    then ``~/.cache/huggingface/hub``.
    """
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def download_hint(repo_id: str) -> str:
    """The commands that put ``repo_id`` into the cache (both CLI spellings are in use)."""
    return f"`hf download {repo_id}` (or `huggingface-cli download {repo_id}`)"


def resolve_repo_dir(repo_or_dir: str | os.PathLike[str], required: Iterable[str] = ()) -> Path:
    """A directory holding ``repo_or_dir``'s files.

    ``repo_or_dir`` is either a local directory (an export's copy of the tokenizer files, or
    a plain download) or a hub id such as ``google/paligemma-3b-pt-224``, looked up as
    ``models--google--paligemma-3b-pt-224/snapshots/<refs/main>`` in the cache. Every name
    in ``required`` must exist there; otherwise :class:`HubFileNotFoundError` names the repo,
    the cache searched and the download command.
    """
    required = tuple(required)
    local = Path(os.fspath(repo_or_dir)).expanduser()
    if local.is_dir():
        missing = [name for name in required if not (local / name).is_file()]
        if missing:
            raise HubFileNotFoundError(f"{local} has no {', '.join(missing)}")
        return local

    repo_id = str(repo_or_dir)
    cache = hub_cache_dir()
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = _pick_snapshot(repo_dir)
    if snapshot is None:
        raise HubFileNotFoundError(
            f"{repo_id!r} is not in the Hugging Face cache ({cache}); nothing is downloaded at run "
            f"time. Fetch it once with {download_hint(repo_id)}, or set HF_HOME / HF_HUB_CACHE to "
            "the cache that has it."
        )
    missing = [name for name in required if not (snapshot / name).is_file()]
    if missing:
        raise HubFileNotFoundError(
            f"{repo_id!r} in the Hugging Face cache ({snapshot}) lacks {', '.join(missing)}; "
            f"fetch the whole repo with {download_hint(repo_id)}"
        )
    return snapshot


def _pick_snapshot(repo_dir: Path) -> Path | None:
    """The snapshot ``refs/main`` points at, else the only (or newest) snapshot present."""
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        candidate = snapshots / ref.read_text().strip()
        if candidate.is_dir():
            return candidate
    found = [p for p in snapshots.iterdir() if p.is_dir()]
    if not found:
        return None
    return max(found, key=lambda p: p.stat().st_mtime)
