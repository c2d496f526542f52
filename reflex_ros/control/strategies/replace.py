"""``replace``: each chunk replaces the one being executed (what a JTC does with a new message).

Latency compensation, delta -> absolute, the safety clamps and the stamp come from
:func:`~reflex_ros.control.chunking.plan_chunk`; the previous chunk plays no part.
"""

from __future__ import annotations

from reflex_ros.control.chunking import PlannedChunk, plan_chunk
from reflex_ros.control.strategies.base import ChunkRequest, ChunkStrategy


class ReplaceStrategy(ChunkStrategy):
    name = "replace"

    def plan(self, request: ChunkRequest) -> PlannedChunk:
        s = request.settings
        return plan_chunk(
            request.actions, state=request.state, obs_stamp_ns=request.obs_stamp_ns,
            control_frequency_hz=s.control_frequency_hz, latency_compensation_ms=s.latency_compensation_ms,
            limits=request.limits, action_mode=s.action_mode, chunk_size=s.chunk_size or None,
            joint_names=request.joint_names, state_tolerance=s.state_limit_tolerance_rad)
