"""The one model of ros2_control's joint_trajectory_controller (JTC), positions only.

The simulated arm executes trajectories with it (:class:`TrajectoryExecutor`, sampled at each
physics step) and the actuation-lag estimator replays what the node published through it
(:func:`commanded_series`), so what the arm did and what the calibrator assumes it did
cannot drift apart. ROS-free: :func:`parse_joint_trajectory` reads rclpy and rosbags
messages alike.

Semantics:

* The trajectory's time axis starts at ``start_ns`` (``header.stamp``); ``0`` means "now".
* Between the message's arrival and the first point's time, the command moves linearly from
  the state at arrival to the first point. A future stamp therefore "waits": the command at
  arrival is the arrival state and reaches point 0 exactly at ``start + time_from_start[0]``.
* With ``defer_future`` (ros2_controllers' trajectory deferral, ROS 1 JTC) a future-stamped
  trajectory waits instead while the active one keeps running, and takes over at its stamp
  from the command at that instant: a trajectory takes over at ``max(stamp, arrival)``.
* Between points the command is interpolated linearly by ``time_from_start``.
* A new trajectory replaces the previous one (no splicing); after its last point the
  command holds the last point.
* A non-zero stamp whose whole trajectory lies in the past is rejected.
* Joints are matched by name: unknown names are reported (and ignored), joints absent from
  the message keep holding their last command.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reflex_ros.control.stamps import stamp_to_ns


@dataclass(frozen=True)
class TimedTrajectory:
    """A JointTrajectory reduced to what execution needs (ROS-free).

    joint_names: the message's joint order (columns of ``positions``).
    times_from_start_ns: ``(N,)`` int64, strictly increasing, >= 0.
    positions: ``(N, len(joint_names))`` float64.
    start_ns: the trajectory start (``header.stamp``) in ns; 0 means "when it arrives".
    """

    joint_names: tuple[str, ...]
    times_from_start_ns: np.ndarray
    positions: np.ndarray
    start_ns: int = 0

    def columns(self, joint_names: Sequence[str]) -> np.ndarray:
        """``positions`` for ``joint_names`` in that order; NaN where the message has no such joint."""
        index = {name: i for i, name in enumerate(self.joint_names)}
        out = np.full((len(self.times_from_start_ns), len(joint_names)), np.nan)
        for j, name in enumerate(joint_names):
            if name in index:
                out[:, j] = self.positions[:, index[name]]
        return out


def parse_joint_trajectory(msg: Any) -> TimedTrajectory:
    """``trajectory_msgs/JointTrajectory`` (rclpy or rosbags) -> :class:`TimedTrajectory`.

    Raises ValueError naming the malformed point (a point must have one position per joint).
    """
    names = tuple(msg.joint_names)
    times = np.empty(len(msg.points), dtype=np.int64)
    positions = np.empty((len(msg.points), len(names)), dtype=np.float64)
    for i, point in enumerate(msg.points):
        if len(point.positions) != len(names):
            raise ValueError(f"point {i} has {len(point.positions)} positions for {len(names)} joints "
                             "(position trajectories only)")
        times[i] = stamp_to_ns(point.time_from_start)
        positions[i] = point.positions
    return TimedTrajectory(names, times, positions, stamp_to_ns(msg.header.stamp))


@dataclass(frozen=True)
class SubmitResult:
    """What happened to a submitted trajectory, so the node can log why it was refused."""

    accepted: bool
    reason: str = ""
    unknown_joints: tuple[str, ...] = ()


@dataclass
class _ActiveTrajectory:
    """An accepted trajectory expanded to every joint of the arm (absent joints held)."""

    arrival_ns: int  # when it took over (arrival, or its start when deferred)
    arrival_positions: np.ndarray  # (J,) the command origin at takeover
    point_times_ns: np.ndarray  # (N,) absolute times of the points
    points: np.ndarray  # (N, J)

    def evaluate(self, t_ns: np.ndarray) -> np.ndarray:
        """Commands ``(len(t_ns), J)`` at the times ``t_ns``."""
        t = np.asarray(t_ns, dtype=np.int64).reshape(-1)
        times, points = self.point_times_ns, self.points
        if times.size == 1:
            out = np.repeat(points[:1], t.size, axis=0)
        else:
            # times[k-1] <= t < times[k]; differences in int64 first, so 1e18-ns stamps keep ns precision
            k = np.clip(np.searchsorted(times, t, side="right"), 1, times.size - 1)
            alpha = np.clip((t - times[k - 1]) / (times[k] - times[k - 1]), 0.0, 1.0)
            out = points[k - 1] + alpha[:, None] * (points[k] - points[k - 1])
            out[t >= times[-1]] = points[-1]
        before = t < times[0]
        if before.any():
            # before the first point: from the state at takeover towards point 0
            span = times[0] - self.arrival_ns
            alpha = np.clip((t[before] - self.arrival_ns) / span, 0.0, 1.0) if span > 0 else np.zeros(before.sum())
            origin = self.arrival_positions
            out[before] = origin + alpha[:, None] * (points[0] - origin)
            out[before & (t <= self.arrival_ns)] = origin
        return out


@dataclass
class _PendingTrajectory:
    """A future-stamped trajectory waiting for its start (deferral mode)."""

    start_ns: int
    point_times_ns: np.ndarray
    points: np.ndarray  # (N, J), NaN in the columns of joints the message does not name
    mentioned: np.ndarray  # (J,) bool


@dataclass
class TrajectoryExecutor:
    """Turns the accepted trajectories into a position command for any time.

    ``defer_future``: off (default) is the Humble/Jazzy JTC: a new message takes over on
    arrival, ramping from the arrival state to its first point. On is the JTC with trajectory
    deferral: a message stamped in the future waits, the active trajectory keeps running
    until that stamp, and then the new one takes over from the command at that instant; a
    later-arriving message with an earlier start drops pending ones that start after it.

    Not thread-safe: the sim node guards it with its own lock (messages arrive on the ROS
    executor thread, samples are taken on the physics thread).
    """

    joint_names: Sequence[str]
    initial_positions: np.ndarray
    defer_future: bool = False
    _index: dict[str, int] = field(init=False, repr=False)
    _last_command: np.ndarray = field(init=False, repr=False)
    _active: _ActiveTrajectory | None = field(init=False, default=None, repr=False)
    _pending: list[_PendingTrajectory] = field(init=False, default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.joint_names = tuple(self.joint_names)
        self._index = {name: i for i, name in enumerate(self.joint_names)}
        self._last_command = np.asarray(self.initial_positions, dtype=np.float64).copy()
        if self._last_command.shape != (len(self.joint_names),):
            raise ValueError(
                f"initial_positions has shape {self._last_command.shape}, "
                f"expected ({len(self.joint_names)},) for joints {self.joint_names}"
            )

    @property
    def last_command(self) -> np.ndarray:
        """The most recent command returned by :meth:`sample` (or the initial positions)."""
        return self._last_command.copy()

    @property
    def has_trajectory(self) -> bool:
        return self._active is not None or bool(self._pending)

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def reset(self, positions: np.ndarray) -> None:
        """Drop the active and pending trajectories and hold ``positions`` (a simulator that
        puts the arm somewhere else between episodes: nothing planned before still applies)."""
        positions = np.asarray(positions, dtype=np.float64).reshape(-1)
        if positions.shape != (len(self.joint_names),):
            raise ValueError(f"reset positions have shape {positions.shape}, expected ({len(self.joint_names)},)")
        self._active = None
        self._pending.clear()
        self._last_command = positions.copy()

    def submit(
        self, trajectory: TimedTrajectory, now_ns: int, measured_positions: np.ndarray | None = None
    ) -> SubmitResult:
        """Validate ``trajectory`` and schedule it, replacing what it supersedes.

        ``measured_positions`` is the arm's state at arrival (JTC's default closed-loop
        start); ``None`` starts from the last command instead (JTC's open_loop_control).
        A deferred trajectory always starts from the command at its start (a splice).
        An empty trajectory means "stop": hold the state at arrival.
        """
        names = tuple(trajectory.joint_names)
        if len(set(names)) != len(names):
            return SubmitResult(False, f"duplicate joint names in {names}")
        unknown = tuple(n for n in names if n not in self._index)
        known_cols = [i for i, n in enumerate(names) if n in self._index]
        if names and not known_cols:
            return SubmitResult(
                False, f"none of the joints {names} belong to this arm ({self.joint_names})", unknown
            )
        mentioned = np.zeros(len(self.joint_names), dtype=bool)
        mentioned[[self._index[names[c]] for c in known_cols]] = True

        times = np.asarray(trajectory.times_from_start_ns, dtype=np.int64).reshape(-1)
        positions = np.asarray(trajectory.positions, dtype=np.float64)
        if times.size == 0:
            origin = self._origin(measured_positions, mentioned)
            self._pending.clear()
            self._active = _ActiveTrajectory(now_ns, origin, np.array([now_ns]), origin[None, :])
            return SubmitResult(True, "empty trajectory: holding the state at arrival", unknown)
        if positions.shape != (times.size, len(names)):
            return SubmitResult(
                False,
                f"positions have shape {positions.shape}, expected ({times.size}, {len(names)}) "
                "(one position per joint per point)",
                unknown,
            )
        if not np.all(np.isfinite(positions[:, known_cols])):
            return SubmitResult(False, "non-finite position in trajectory", unknown)
        if times[0] < 0 or np.any(np.diff(times) <= 0):
            return SubmitResult(False, "time_from_start must be >= 0 and strictly increasing", unknown)

        start_ns = int(trajectory.start_ns) if trajectory.start_ns != 0 else int(now_ns)
        point_times = start_ns + times
        if trajectory.start_ns != 0 and point_times[-1] < now_ns:
            late_ms = (now_ns - point_times[-1]) / 1e6
            return SubmitResult(
                False, f"trajectory ended {late_ms:.1f} ms before it arrived (wholly in the past)", unknown
            )
        points = np.full((times.size, len(self.joint_names)), np.nan)
        for c in known_cols:
            points[:, self._index[names[c]]] = positions[:, c]
        # Whatever was scheduled to start at or after this one's start is superseded.
        self._pending = [p for p in self._pending if p.start_ns < start_ns]
        if self.defer_future and start_ns > now_ns:
            self._pending.append(_PendingTrajectory(start_ns, point_times, points, mentioned))
            return SubmitResult(True, "deferred until its start", unknown)
        self._pending.clear()
        origin = self._origin(measured_positions, mentioned)
        self._active = self._expand(int(now_ns), origin, point_times, points, mentioned)
        return SubmitResult(True, "", unknown)

    def _origin(self, measured: np.ndarray | None, mentioned: np.ndarray) -> np.ndarray:
        """Start of the interpolation: measured (closed loop) or last command (open loop);
        joints the message does not name keep their last command either way, so a partial
        goal never disturbs them."""
        origin = self._last_command.copy()
        if measured is not None:
            origin[mentioned] = np.asarray(measured, dtype=np.float64)[mentioned]
        return origin

    @staticmethod
    def _expand(
        takeover_ns: int,
        origin: np.ndarray,
        point_times: np.ndarray,
        points: np.ndarray,
        mentioned: np.ndarray,
    ) -> _ActiveTrajectory:
        full = points.copy()
        full[:, ~mentioned] = origin[~mentioned]
        return _ActiveTrajectory(takeover_ns, origin, point_times, full)

    def _take_due(self, t_ns: int) -> None:
        """Pending trajectories whose start has come take over (splice from the command then)."""
        while self._pending and self._pending[0].start_ns <= t_ns:
            due = self._pending.pop(0)
            origin = (self._active.evaluate(due.start_ns)[0] if self._active is not None
                      else self._last_command.copy())
            self._active = self._expand(due.start_ns, origin, due.point_times_ns, due.points, due.mentioned)

    def sample(self, t_ns: int) -> np.ndarray:
        """The position command for time ``t_ns`` (and remember it as the last command)."""
        return self.sample_many(np.array([t_ns], dtype=np.int64))[0].copy()

    def sample_many(self, t_ns: np.ndarray) -> np.ndarray:
        """Commands ``(n, J)`` at non-decreasing times, exactly as ``n`` calls of :meth:`sample`."""
        t = np.asarray(t_ns, dtype=np.int64).reshape(-1)
        out = np.empty((t.size, len(self.joint_names)))
        i = 0
        while i < t.size:
            self._take_due(int(t[i]))
            # up to the next pending start the active trajectory stays the same
            end = int(np.searchsorted(t, self._pending[0].start_ns, side="left")) if self._pending else t.size
            end = max(end, i + 1)
            out[i:end] = self._active.evaluate(t[i:end]) if self._active is not None else self._last_command
            i = end
        if t.size:
            self._last_command = out[-1].copy()
        return out


def commanded_series(segments: Sequence[tuple]) -> tuple[np.ndarray, np.ndarray]:
    """What a deferring JTC commanded, given the trajectories it received: ``(t_ns[n], positions[n, J])``.

    ``segments``: ``(start_ns, time_from_start_ns[k], positions[k, J])`` or
    ``(start_ns, time_from_start_ns[k], positions[k, J], arrival_ns)`` in arrival order; NaN
    columns are joints a trajectory does not drive. Each is submitted to a
    :class:`TrajectoryExecutor` (``defer_future``, open loop) at its arrival (the node's
    publish time or a bag's receive time; without one, at its stamp), so a trajectory takes
    over at ``max(stamp, arrival)`` and a late one never gets credit for motion before it
    arrived. The series is sampled at every point, takeover and arrival (and just before
    each), so linear interpolation between its samples is the command; it runs from the first
    takeover to the end of the last trajectory.
    """
    parsed: list[tuple[TimedTrajectory, int]] = []
    joints: int | None = None
    for i, seg in enumerate(segments):
        start_ns, offsets, positions = int(seg[0]), np.asarray(seg[1], dtype=np.int64).reshape(-1), seg[2]
        p = np.asarray(positions, dtype=np.float64)
        if p.ndim != 2 or p.shape[0] != offsets.size or offsets.size == 0:
            raise ValueError(f"trajectory {i}: need [k, joints] positions for k = {offsets.size} points, got {p.shape}")
        if joints is not None and p.shape[1] != joints:
            raise ValueError(f"trajectories disagree on the number of joints: {sorted({joints, p.shape[1]})}")
        joints = p.shape[1]
        arrival = int(seg[3]) if len(seg) > 3 and seg[3] is not None else start_ns
        driven = [j for j in range(p.shape[1]) if np.isfinite(p[:, j]).all()]
        parsed.append((TimedTrajectory(tuple(str(j) for j in driven), offsets, p[:, driven], start_ns), arrival))
    if not parsed:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0))
    first, first_arrival = parsed[0]
    last, last_arrival = parsed[-1]
    begin = max(first_arrival, (first.start_ns or first_arrival) + int(first.times_from_start_ns[0]))
    end = (last.start_ns or last_arrival) + int(last.times_from_start_ns[-1])
    marks = [np.array([a - 1, a, (tr.start_ns or a) - 1, tr.start_ns or a], dtype=np.int64) for tr, a in parsed]
    marks += [(tr.start_ns or a) + tr.times_from_start_ns for tr, a in parsed]
    times = np.unique(np.concatenate(marks))
    times = times[(times >= begin) & (times <= end)]

    executor = TrajectoryExecutor(tuple(str(j) for j in range(joints)), np.full(joints, np.nan), defer_future=True)
    out = np.empty((times.size, joints))
    done = 0
    for trajectory, arrival in parsed:
        upto = int(np.searchsorted(times, arrival, side="left"))  # samples before the arrival
        if upto > done:
            out[done:upto] = executor.sample_many(times[done:upto])
            done = upto
        executor.sample(arrival)  # what the controller had done by then (due deferred ones took over)
        executor.submit(trajectory, arrival)
    out[done:] = executor.sample_many(times[done:])
    keep = np.isfinite(out).any(axis=1)
    return times[keep], out[keep]


__all__ = ["SubmitResult", "TimedTrajectory", "TrajectoryExecutor", "commanded_series", "parse_joint_trajectory"]
