"""Chunk strategies, by name (the node's ``chunk_strategy`` parameter offers every key).

To add one (blend, rtc, anchoring...): write a module here with a
:class:`~reflex_ros.control.strategies.base.ChunkStrategy` subclass and add one entry to
:data:`STRATEGIES`.
"""

from __future__ import annotations

from reflex_ros.control.strategies.base import ChunkRequest, ChunkStrategy, Executing
from reflex_ros.control.strategies.replace import ReplaceStrategy

STRATEGIES: dict[str, type[ChunkStrategy]] = {
    ReplaceStrategy.name: ReplaceStrategy,
}
DEFAULT_STRATEGY = ReplaceStrategy.name


def make_strategy(name: str) -> ChunkStrategy:
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise KeyError(f"unknown chunk strategy {name!r}; available: {sorted(STRATEGIES)}") from None


__all__ = ["DEFAULT_STRATEGY", "STRATEGIES", "ChunkRequest", "ChunkStrategy", "Executing", "make_strategy"]
