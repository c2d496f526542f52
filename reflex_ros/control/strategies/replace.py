"""``replace``: each chunk replaces the one being executed (what a JTC does with a new message).

Latency compensation, delta -> absolute, the safety clamps and the stamp come from
:func:`~reflex_ros.control.chunking.plan_chunk`; with ``anchor_to_command`` (the default) the
first point is rate-limited against the command being executed at the takeover
(:meth:`~reflex_ros.control.strategies.base.ChunkStrategy.plan_anchored`), otherwise against
the measured state (the behaviour before issue 14). Nothing else of the previous chunk is used.
"""

from __future__ import annotations

from reflex_ros.control.chunking import PlannedChunk
from reflex_ros.control.strategies.base import ChunkRequest, ChunkStrategy


class ReplaceStrategy(ChunkStrategy):
    name = "replace"

    def plan(self, request: ChunkRequest) -> PlannedChunk:
        return self.plan_anchored(request)
