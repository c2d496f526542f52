"""``temporal_ensemble``: ACT's temporal ensembling, on trajectories.

ACT is Zhao et al. 2023; LeRobot implements it as ``ACTTemporalEnsembler``. Every published
chunk that still covers a point's time votes for it. The target published for time t is

    p(t) = sum_i w_i a_i(t) / sum_i w_i,     w_i = exp(-m i),

- ``a_i(t)`` is chunk i's own latency-compensated target at t, linearly interpolated between its
  points. It is the raw prediction: earlier ensembles do not feed back.
- i = 0 is the oldest chunk covering t and the new one is the last, as in ACT.
- m is ``temporal_ensemble_coeff``: 0.01 as in ACT and LeRobot. A positive m weighs older
  predictions more, m = 0 is a plain mean, and a negative m favours the newest.

Only published chunks vote. A chunk the safety gate refused is never executed, so it is dropped.

ACT re-plans at every control tick. Here that is ``execute_steps:=1``, when the engine is fast
enough for it. With the default ``execute_steps`` the ensemble still averages the overlapping
chunks, over fewer votes.

Anchoring and the safety limits come after the ensemble, as for every strategy. The cost is a
few (n, J) interpolations per stored chunk, and any engine can use it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reflex_ros.control.chunking import PlannedChunk
from reflex_ros.control.strategies.base import ChunkRequest, ChunkStrategy


@dataclass(frozen=True)
class _Vote:
    """One published chunk's raw targets: point j is for ``stamp_ns + j * dt_ns``."""

    stamp_ns: int
    dt_ns: int
    targets: np.ndarray  # (n, J) absolute positions, before anchoring and limits

    @property
    def end_ns(self) -> int:
        return self.stamp_ns + (len(self.targets) - 1) * self.dt_ns

    def at(self, times_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(values (len(times), J), covered mask): linear interpolation inside the chunk's span."""
        pos = (times_ns - self.stamp_ns) / self.dt_ns
        covered = (pos >= -1e-9) & (pos <= len(self.targets) - 1 + 1e-9)
        j = np.clip(pos, 0.0, len(self.targets) - 1)
        lo = np.floor(j).astype(np.int64)
        hi = np.minimum(lo + 1, len(self.targets) - 1)
        frac = (j - lo)[:, None]
        return (1.0 - frac) * self.targets[lo] + frac * self.targets[hi], covered


class TemporalEnsembleStrategy(ChunkStrategy):
    name = "temporal_ensemble"

    def __init__(self) -> None:
        super().__init__()
        self._votes: list[_Vote] = []  # published chunks, oldest first
        self._pending: _Vote | None = None  # the chunk being planned, until it is published

    def reset(self) -> None:
        super().reset()
        self._votes = []
        self._pending = None

    def plan(self, request: ChunkRequest) -> PlannedChunk:
        coeff = float(request.settings.temporal_ensemble_coeff)
        self._pending = None

        def ensemble(targets: np.ndarray, stamp_ns: int, dt_ns: int) -> np.ndarray:
            new = _Vote(int(stamp_ns), int(dt_ns), np.array(targets, dtype=np.float64))
            self._pending = new
            if not self._votes:
                return targets
            times = stamp_ns + np.arange(len(targets), dtype=np.int64) * dt_ns
            total = np.zeros_like(new.targets)
            weight = np.zeros((len(times), 1))
            count = np.zeros((len(times), 1))  # older votes covering each time: the new one's index
            # oldest first (published() dropped the ones that ended): w = exp(-m * i), i per time
            for vote in self._votes:
                values, covered = vote.at(times)
                ok = covered[:, None] & np.all(np.isfinite(values), axis=1, keepdims=True)
                w = np.where(ok, np.exp(-coeff * count), 0.0)
                total += w * np.where(ok, values, 0.0)
                weight += w
                count += ok
            w_new = np.exp(-coeff * count)
            return (total + w_new * new.targets) / (weight + w_new)

        return self.plan_anchored(request, transform=ensemble)

    def published(self, plan: PlannedChunk, published_ns: int) -> None:
        super().published(plan, published_ns)
        if self._pending is not None:
            # keep only the votes that can still cover a future point, then add this chunk's
            start = self._pending.stamp_ns
            self._votes = [v for v in self._votes if v.end_ns >= start] + [self._pending]
            self._pending = None
