"""What the node commanded and what the joints did, for passive actuation-lag estimation.

Both histories are short (seconds) and bounded; the estimate runs off the control path
(the node's 1 Hz housekeeping timer), never inside a control cycle. ROS-free.
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

from reflex_ros.calibration.actuation_lag import estimate_actuation_lag_ms
from reflex_ros.control.jtc import commanded_series


class MotionHistory:
    """Commanded trajectories (as a JTC would execute them) and measured joint positions."""

    def __init__(self, horizon_s: float = 8.0, max_measurements: int = 4000, max_commands: int = 400,
                 min_measured_motion: float = 1e-3) -> None:
        self.horizon_ns = int(horizon_s * 1e9)
        self.min_measured_motion = min_measured_motion
        self._commands: deque[tuple[int, np.ndarray, np.ndarray]] = deque(maxlen=max_commands)
        self._meas_t: deque[int] = deque(maxlen=max_measurements)
        self._meas_pos: deque[np.ndarray] = deque(maxlen=max_measurements)
        self._lock = threading.Lock()

    def add_command(self, start_ns: int, dt_ns: int, positions: np.ndarray, published_ns: int | None = None) -> None:
        """A published trajectory; ``published_ns`` bounds when it can have taken over."""
        offsets = np.arange(positions.shape[0], dtype=np.int64) * int(dt_ns)
        with self._lock:
            self._commands.append((int(start_ns), offsets, np.array(positions, dtype=np.float64), published_ns))

    def add_measurement(self, t_ns: int, positions: np.ndarray) -> None:
        with self._lock:
            self._meas_t.append(int(t_ns))
            self._meas_pos.append(np.asarray(positions, dtype=np.float64))

    def clear(self) -> None:
        with self._lock:
            self._commands.clear()
            self._meas_t.clear()
            self._meas_pos.clear()

    def estimate_lag_ms(self, now_ns: int, max_lag_ms: float = 300.0, step_ms: float = 2.0) -> float | None:
        """The actuation lag over the last ``horizon`` seconds, or None when the motion in
        that window does not determine it."""
        cutoff = int(now_ns) - self.horizon_ns
        with self._lock:
            segments = [c for c in self._commands if c[0] + int(c[1][-1]) >= cutoff]
            pairs = [(t, p) for t, p in zip(self._meas_t, self._meas_pos, strict=True) if t >= cutoff]
        if len(segments) < 2 or len(pairs) < 20:
            return None
        cmd_t, cmd_pos = commanded_series(segments)
        meas_t = np.array([t for t, _ in pairs], dtype=np.int64)
        meas_pos = np.stack([p for _, p in pairs])
        if cmd_pos.ndim != 2 or cmd_pos.shape[1] != meas_pos.shape[1]:
            return None
        if float(np.ptp(meas_pos, axis=0).max()) < self.min_measured_motion:
            return None  # the joints did not move: nothing to time (a stopped or absent arm)
        return estimate_actuation_lag_ms(cmd_t, cmd_pos, meas_t, meas_pos, max_lag_ms=max_lag_ms, step_ms=step_ms)
