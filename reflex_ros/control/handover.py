"""What the controller is commanded across chunk boundaries: the model of the command being
executed (anchoring, blending, RTC targets) and the smoothness metrics. ROS-free.

:class:`CommandModel` replays what the node published through the one
joint_trajectory_controller model (:class:`~reflex_ros.control.jtc.TrajectoryExecutor`, open
loop: a new trajectory starts from the last command) and answers "where will the command be
at time t". A trajectory takes over on arrival, or, when the controller defers future-stamped
trajectories (``defer_future_trajectories``), at ``max(stamp, arrival)``
(:func:`takeover_ns`).

:class:`HandoverStats` measures, from the same model:

* **boundary jump** at every replan: the new minus the old commanded position at the takeover
  time T = max(stamp, arrival), when the new trajectory's first point is due (a deferring
  controller switches there; one that takes over on arrival has ramped from its command to
  that point by then), the old trajectory evaluated as if it had kept running; the same for
  the velocity (the command's slope over the control period after T); per joint, and overall
  as the largest joint's per replan, reported as p50 / p95 / max;
* **commanded jerk**: the RMS of the third difference of the commanded positions sampled every
  control period, divided by dt^3 (rad/s^3), per joint and over all joints;
* **tracking error**: commanded vs measured positions (RMS, rad), the command interpolated at
  each measurement's stamp.

The node reports them in /diagnostics (``control.stats``), the demo in its summary
(``apps.loop_report``), the strategy rollout in its table (``sim.strategy_rollout``).
"""

from __future__ import annotations

import copy
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from reflex_ros.control.jtc import TimedTrajectory, TrajectoryExecutor


def takeover_ns(stamp_ns: int, arrival_ns: int, defer: bool) -> int:
    """When a trajectory stamped ``stamp_ns`` that arrives at ``arrival_ns`` takes over: on
    arrival, or (deferring controller) at its stamp unless that has passed."""
    return max(int(stamp_ns), int(arrival_ns)) if defer else int(arrival_ns)


class CommandModel:
    """The command a joint_trajectory_controller produces from the trajectories it was sent
    (open loop: each takes over from the command at its takeover; see the module docstring).

    ``submit`` in arrival order; ``peek`` evaluates any times at or after the last arrival
    without changing the model. Not thread-safe (callers hold their own lock)."""

    def __init__(self, joint_names: Sequence[str], defer: bool = False) -> None:
        self.joint_names = tuple(joint_names)
        self.defer = bool(defer)
        self._executor: TrajectoryExecutor | None = None
        self._now_ns = 0
        self.end_ns: int | None = None  # the last point of the newest trajectory

    @property
    def active(self) -> bool:
        return self._executor is not None

    @property
    def now_ns(self) -> int:
        """How far the model has advanced (the newest arrival)."""
        return self._now_ns

    def reset(self) -> None:
        self._executor = None
        self.end_ns = None

    def advance(self, t_ns: int) -> None:
        """Let the controller run until ``t_ns`` (due deferred trajectories take over). A clock
        that jumped back (sim time reset) forgets everything."""
        if self._executor is None:
            return
        if t_ns < self._now_ns:
            self.reset()
            return
        self._executor.sample(int(t_ns))
        self._now_ns = int(t_ns)

    def submit(self, start_ns: int, offsets_ns: np.ndarray, positions: np.ndarray, arrival_ns: int,
               origin: np.ndarray | None = None) -> None:
        """A trajectory (stamp, time_from_start, positions ``(n, J)``) arriving at
        ``arrival_ns``; ``origin`` is the command before the very first one (the robot's state;
        default its first point)."""
        positions = np.asarray(positions, dtype=np.float64)
        offsets = np.asarray(offsets_ns, dtype=np.int64).reshape(-1)
        if self._executor is not None and arrival_ns < self._now_ns:
            self.reset()
        if self._executor is None:
            start = positions[0] if origin is None or not np.all(np.isfinite(origin)) else origin
            self._executor = TrajectoryExecutor(self.joint_names, np.asarray(start, dtype=np.float64),
                                                defer_future=self.defer)
            self._now_ns = int(arrival_ns)
        else:
            self.advance(arrival_ns)
        self._executor.submit(TimedTrajectory(self.joint_names, offsets, positions, int(start_ns)),
                              int(arrival_ns), None)
        self.end_ns = int(start_ns or arrival_ns) + int(offsets[-1])

    def peek(self, times_ns: Any) -> np.ndarray | None:
        """The commands ``(n, J)`` at non-decreasing ``times_ns`` (clamped to the last arrival),
        or None before any trajectory."""
        if self._executor is None:
            return None
        t = np.maximum(np.asarray(times_ns, dtype=np.int64).reshape(-1), self._now_ns)
        return copy.deepcopy(self._executor).sample_many(t)


def _percentiles(values: np.ndarray) -> tuple[float, float, float] | tuple[None, None, None]:
    if values.size == 0:
        return None, None, None
    p50, p95 = np.percentile(values, [50, 95], axis=0)
    return p50, p95, values.max(axis=0)


class HandoverStats:
    """Boundary jumps, commanded jerk and tracking error (see the module docstring) over the
    last ``window`` replans / control periods / measurements. Thread-safe: trajectories and
    measurements may come from different threads."""

    def __init__(self, joint_names: Sequence[str], defer: bool = False, window: int = 1000) -> None:
        self.joint_names = tuple(joint_names)
        self.model = CommandModel(joint_names, defer)
        self._lock = threading.Lock()
        self.jump_pos: deque[np.ndarray] = deque(maxlen=window)
        self.jump_vel: deque[np.ndarray] = deque(maxlen=window)
        self.jerk: deque[np.ndarray] = deque(maxlen=window * 10)
        self.track: deque[np.ndarray] = deque(maxlen=window * 10)
        self.replans = 0
        self._grid: list[tuple[int, np.ndarray]] = []  # the last commanded samples on the dt grid
        self._series_t: deque[int] = deque(maxlen=256)
        self._series_p: deque[np.ndarray] = deque(maxlen=256)
        self._next_grid_ns: int | None = None
        self._dt_ns: int | None = None
        self._pending_meas: deque[tuple[int, np.ndarray]] = deque(maxlen=2000)

    def set_defer(self, defer: bool) -> None:
        with self._lock:
            if bool(defer) != self.model.defer:
                self.model = CommandModel(self.joint_names, defer)
                self._restart_series()

    def reset(self) -> None:
        """Nothing is being executed any more (a hold, deactivate): the next trajectory is not
        a replan, and the series starts over."""
        with self._lock:
            self.model.reset()
            self._restart_series()

    def _restart_series(self) -> None:
        self._grid.clear()
        self._series_t.clear()
        self._series_p.clear()
        self._next_grid_ns = None
        self._pending_meas.clear()

    # ------------------------------------------------------------------ inputs
    def on_trajectory(self, start_ns: int, offsets_ns: np.ndarray, positions: np.ndarray, arrival_ns: int,
                      dt_ns: int, origin: np.ndarray | None = None) -> None:
        """One published trajectory, in arrival order (``dt_ns``: the control period)."""
        positions = np.asarray(positions, dtype=np.float64)
        offsets = np.asarray(offsets_ns, dtype=np.int64).reshape(-1)
        with self._lock:
            model = self.model
            if self._dt_ns != int(dt_ns):
                self._dt_ns = int(dt_ns)
                self._restart_series()
            if model.active and arrival_ns >= model.now_ns:
                self._sample_series(int(arrival_ns))
                # where the first point is due: a deferring controller switches there, one that
                # takes over on arrival ramps from its command to that point by then
                t = takeover_ns(start_ns or arrival_ns, arrival_ns, True)
                probe = np.array([t, t + dt_ns], dtype=np.int64)
                old = model.peek(probe)
                model.submit(start_ns, offsets, positions, arrival_ns, origin)
                new = model.peek(probe)
                if old is not None and new is not None and np.all(np.isfinite(old)) and np.all(np.isfinite(new)):
                    self.replans += 1
                    self.jump_pos.append(np.abs(new[0] - old[0]))
                    self.jump_vel.append(np.abs((new[1] - new[0]) - (old[1] - old[0])) / (dt_ns * 1e-9))
            else:
                model.submit(start_ns, offsets, positions, arrival_ns, origin)
                self._restart_series()
            if self._next_grid_ns is None:
                self._next_grid_ns = takeover_ns(start_ns or arrival_ns, arrival_ns, model.defer)

    def on_measurement(self, stamp_ns: int, positions: np.ndarray) -> None:
        with self._lock:
            if self._next_grid_ns is not None and stamp_ns >= (self._series_t[0] if self._series_t else
                                                                self._next_grid_ns):
                self._pending_meas.append((int(stamp_ns), np.asarray(positions, dtype=np.float64).copy()))
            self._match_measurements()

    def flush(self, until_ns: int) -> None:
        """Sample the command up to ``until_ns`` (the end of a recording: no trajectory follows)."""
        with self._lock:
            if self.model.active and until_ns >= self.model.now_ns:
                self._sample_series(int(until_ns))

    # ------------------------------------------------------------------ series
    def _sample_series(self, until_ns: int) -> None:
        """Commanded positions on the dt grid up to (excluding) ``until_ns``: final, since no
        later trajectory can take over before its own arrival."""
        if self._next_grid_ns is None or self._dt_ns is None or until_ns <= self._next_grid_ns:
            return
        n = (until_ns - 1 - self._next_grid_ns) // self._dt_ns + 1
        n = int(min(n, 100_000))
        times = self._next_grid_ns + np.arange(n, dtype=np.int64) * self._dt_ns
        values = self.model.peek(times)
        self._next_grid_ns = int(times[-1] + self._dt_ns)
        if values is None:
            return
        dt3 = (self._dt_ns * 1e-9) ** 3
        for t, p in zip(times.tolist(), values, strict=True):
            self._series_t.append(t)
            self._series_p.append(p)
            self._grid.append((t, p))
            if len(self._grid) > 4:
                self._grid.pop(0)
            if len(self._grid) == 4:
                p0, p1, p2, p3 = (g[1] for g in self._grid)
                self.jerk.append((p3 - 3 * p2 + 3 * p1 - p0) / dt3)
        self._match_measurements()

    def _match_measurements(self) -> None:
        if not self._series_t:
            return
        last = self._series_t[-1]
        ts = np.fromiter(self._series_t, dtype=np.int64)
        ps = None
        while self._pending_meas and self._pending_meas[0][0] <= last:
            t, meas = self._pending_meas.popleft()
            if t < ts[0]:
                continue
            if ps is None:
                ps = np.stack(self._series_p)
            k = int(np.searchsorted(ts, t, side="right"))
            if k >= ts.size:
                cmd = ps[-1]
            else:
                a = (t - ts[k - 1]) / (ts[k] - ts[k - 1])
                cmd = ps[k - 1] + a * (ps[k] - ps[k - 1])
            self.track.append(meas - cmd)

    # ------------------------------------------------------------------ results
    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers: per joint lists in ``joint_names`` order, overall = the largest
        joint per replan (jumps) or over all joints (jerk RMS, tracking RMS)."""
        with self._lock:
            pos = np.array(self.jump_pos).reshape(-1, len(self.joint_names))
            vel = np.array(self.jump_vel).reshape(-1, len(self.joint_names))
            jerk = np.array(self.jerk).reshape(-1, len(self.joint_names))
            track = np.array(self.track).reshape(-1, len(self.joint_names))
            replans = self.replans
        out: dict[str, Any] = {"replans": replans, "joint_names": list(self.joint_names)}
        for name, values in (("jump_pos", pos), ("jump_vel", vel)):
            worst = values.max(axis=1) if values.size else values.reshape(0)
            p50, p95, mx = _percentiles(worst)
            j50, j95, jmx = _percentiles(values)
            unit = "rad" if name == "jump_pos" else "rad_s"
            out.update({f"{name}_p50_{unit}": p50, f"{name}_p95_{unit}": p95, f"{name}_max_{unit}": mx})
            out[f"{name}_per_joint_{unit}"] = (
                None if j50 is None else {"p50": list(map(float, j50)), "p95": list(map(float, j95)),
                                          "max": list(map(float, jmx))})
        out["jerk_rms_rad_s3"] = float(np.sqrt(np.mean(jerk**2))) if jerk.size else None
        out["jerk_rms_per_joint_rad_s3"] = list(map(float, np.sqrt(np.mean(jerk**2, axis=0)))) if jerk.size else None
        out["tracking_rms_rad"] = float(np.sqrt(np.mean(track**2))) if track.size else None
        out["tracking_rms_per_joint_rad"] = (list(map(float, np.sqrt(np.mean(track**2, axis=0))))
                                             if track.size else None)
        for key in ("jump_pos_p50_rad", "jump_pos_p95_rad", "jump_pos_max_rad",
                    "jump_vel_p50_rad_s", "jump_vel_p95_rad_s", "jump_vel_max_rad_s"):
            out[key] = None if out[key] is None else float(out[key])
        return out


__all__ = ["CommandModel", "HandoverStats", "takeover_ns"]
