"""``rtc``: real-time chunking (arXiv 2506.07339): the model itself is steered, while it
denoises, towards the command being executed.

Before inference (:meth:`RtcStrategy.guide`) the strategy gives the engine a
:class:`~reflex_ros.engine.types.ChunkGuide`: the target is where the command being executed
will be at each row of the new chunk (row i is for ``t_obs + i dt``; the node's model of the
controller, ``control/handover.py``), in the robot's action space (absolute positions, or
relative to the new observation's state in delta mode; action dims beyond the joints from the
previous chunk's rows); the engine normalizes it into the model's space. The first
``d = ceil(latency_compensation_ms / dt)`` rows are frozen to it: the same d the latency
compensation skips, so the rows executed while the chunk is computed come from the previous
chunk, and d follows the node's own learned latency. Rows ``d .. H-1`` are guided softly by
``rtc_prefix_attention_schedule`` up to the execution horizon H (``rtc_execution_horizon``;
0 = d + execute_steps: the rows this chunk runs before the next replaces it), capped where the
previous trajectory ends. ``rtc_mode``: ``guided`` is the exact guidance (a VJP through the
model per denoise step, torch engine), ``inpaint`` the gradient-free variant (any decomposed
engine); ``rtc_max_guidance_weight`` caps the guidance weight. The chunk is then planned like
every other (anchoring, limits).
"""

from __future__ import annotations

import numpy as np

from reflex_ros.control.chunking import PlannedChunk, control_period_ns, skipped_steps
from reflex_ros.control.strategies.base import ChunkRequest, ChunkStrategy, GuideRequest
from reflex_ros.engine.types import ChunkGuide
from reflex_ros.vocab import DELTA


class RtcStrategy(ChunkStrategy):
    name = "rtc"

    def __init__(self) -> None:
        super().__init__()
        self._last_chunk: tuple[np.ndarray, int] | None = None  # (raw actions, obs stamp)

    def reset(self) -> None:
        super().reset()
        self._last_chunk = None

    def guide(self, request: GuideRequest) -> ChunkGuide | None:
        s, info = request.settings, request.engine
        if self.command is None or not self.command.active or self.command.end_ns is None:
            return None
        dt_ns = control_period_ns(s.control_frequency_hz)
        rows = int(min(s.chunk_size or info.chunk_size, info.chunk_size))
        times = int(request.obs_stamp_ns) + np.arange(rows, dtype=np.int64) * dt_ns
        covered = int(np.count_nonzero(times <= self.command.end_ns))  # rows the old trajectory reaches
        if covered == 0 or times[0] < self.command.now_ns - dt_ns:
            return None  # nothing left to continue, or an observation older than the last publish
        commanded = self.commanded(times[:covered])
        if commanded is None or not np.all(np.isfinite(commanded)):
            return None
        n_joints = commanded.shape[1]
        target = np.zeros((covered, info.action_dim), dtype=np.float64)
        target[:, :n_joints] = commanded
        if s.action_mode == DELTA:
            target[:, :n_joints] -= np.asarray(request.state, dtype=np.float64)[None, :n_joints]
        if info.action_dim > n_joints and self._last_chunk is not None:  # e.g. a gripper dim not driven
            prev, prev_stamp = self._last_chunk
            shift = int(round((request.obs_stamp_ns - prev_stamp) / dt_ns))
            idx = np.clip(np.arange(covered) + shift, 0, len(prev) - 1)
            target[:, n_joints:] = prev[idx, n_joints:info.action_dim]
        d = skipped_steps(s.latency_compensation_ms, s.control_frequency_hz)
        horizon = int(s.rtc_execution_horizon or d + s.execute_steps)
        return ChunkGuide(target=target.astype(np.float32), delay=d, horizon=min(horizon, covered),
                          schedule=s.rtc_prefix_attention_schedule, max_weight=float(s.rtc_max_guidance_weight),
                          mode=s.rtc_mode)

    def plan(self, request: ChunkRequest) -> PlannedChunk:
        self._last_chunk = (np.asarray(request.actions, dtype=np.float64), int(request.obs_stamp_ns))
        return self.plan_anchored(request)
