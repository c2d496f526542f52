"""``blend``: the new chunk is cross-faded in from the command being executed.

Over the first W control periods of the new trajectory (``blend_window_steps``; 0 = the
``execute_steps`` a chunk runs before the next replaces it) each point is

    p_j = (1 - w_j) * old(t_j) + w_j * new_j,     w_j = smoothstep(j / W) = x^2 (3 - 2 x),

where ``old(t)`` is where the command being executed would be at the point's time (the node's
model of the controller, ``control/handover.py``) and ``new_j`` the chunk's latency-compensated
target; j counts from the takeover (a chunk that arrives after its stamp starts part-way
through, and its points already past stay on the old command). w_0 = 0, so the first point is the old command (no position step at the takeover), and
the smoothstep's zero slope at both ends makes the command's velocity continuous into the
blend and out of it; the published velocities are the central differences of the blended
positions (the first across the old command one period earlier). Anchoring and the safety
limits are applied after the blend, as for every strategy. Cheap (a few (n, J) array
operations), any engine.
"""

from __future__ import annotations

import numpy as np

from reflex_ros.control.chunking import PlannedChunk
from reflex_ros.control.strategies.base import ChunkRequest, ChunkStrategy


class BlendStrategy(ChunkStrategy):
    name = "blend"

    def plan(self, request: ChunkRequest) -> PlannedChunk:
        s = request.settings
        window = int(s.blend_window_steps or s.execute_steps)

        def cross_fade(targets: np.ndarray, stamp_ns: int, dt_ns: int) -> np.ndarray:
            times = stamp_ns + np.arange(len(targets), dtype=np.int64) * dt_ns
            old = self.commanded(times)
            if old is None:
                return targets
            # from the takeover on (a late chunk starts part-way through: its past points stay old)
            since = (times - max(stamp_ns, self.takeover_ns or stamp_ns)) / dt_ns
            x = np.clip(since / max(1, window), 0.0, 1.0)
            w = (x * x * (3.0 - 2.0 * x))[:, None]
            known = np.isfinite(old)
            return np.where(known, (1.0 - w) * np.where(known, old, 0.0) + w * targets, targets)

        return self.plan_anchored(request, transform=cross_fade)
