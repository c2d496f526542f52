"""Execute JointTrajectory commands the way ros2_control's joint_trajectory_controller does.

ROS-free on purpose: the sim node converts messages into :class:`TimedTrajectory` and asks
:meth:`TrajectoryExecutor.sample` for the command at each physics step, so the semantics
that the policy node's stamping relies on can be unit-tested without DDS or MuJoCo.

Semantics (JTC, positions only):

* The trajectory's time axis starts at ``start_ns`` (``header.stamp``); ``0`` means "now".
* Between the message's arrival and the first point's time, the command moves linearly from
  the state at arrival to the first point. A future stamp therefore "waits": the command at
  arrival is the arrival state and reaches point 0 exactly at ``start + time_from_start[0]``.
  (With ``defer_future`` the previous trajectory keeps running until the stamp instead,
  see :class:`TrajectoryExecutor`.)
* Between points the command is interpolated linearly by ``time_from_start``.
* A new trajectory replaces the previous one (no splicing); after its last point the
  command holds the last point.
* A non-zero stamp whose whole trajectory lies in the past is rejected.
* Joints are matched by name: unknown names are reported (and ignored), joints absent from
  the message keep holding their last command.

:class:`CommandDelayLine` then delays the executor's output before it reaches the actuators,
standing in for a real arm's bus and servo lag (what the calibrator must discover).
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


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

    def evaluate(self, t_ns: int) -> np.ndarray:
        times, points = self.point_times_ns, self.points
        if t_ns < times[0]:
            if t_ns <= self.arrival_ns:
                return self.arrival_positions.copy()
            # before the first point: from the state at takeover towards point 0
            alpha = (t_ns - self.arrival_ns) / (times[0] - self.arrival_ns)
            return self.arrival_positions + alpha * (points[0] - self.arrival_positions)
        if t_ns >= times[-1]:
            return points[-1].copy()
        k = int(np.searchsorted(times, t_ns, side="right"))  # times[k-1] <= t < times[k]
        alpha = (t_ns - times[k - 1]) / (times[k] - times[k - 1])
        return points[k - 1] + alpha * (points[k] - points[k - 1])


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
    deferral (ROS 1, and ros2_controllers' replacement mode): a message stamped in the future
    waits, the active trajectory keeps running until that stamp, and then the new one takes
    over from the command at that instant; a later-arriving message with an earlier start
    drops pending ones that start after it.

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

    def sample(self, t_ns: int) -> np.ndarray:
        """The position command for time ``t_ns`` (and remember it as the last command)."""
        while self._pending and self._pending[0].start_ns <= t_ns:
            due = self._pending.pop(0)
            # Splice: the new trajectory takes over from where the old command is at its start.
            origin = (
                self._active.evaluate(due.start_ns) if self._active is not None else self._last_command.copy()
            )
            self._active = self._expand(due.start_ns, origin, due.point_times_ns, due.points, due.mentioned)
        if self._active is None:
            return self._last_command.copy()
        self._last_command = self._active.evaluate(t_ns)
        return self._last_command.copy()


class CommandDelayLine:
    """Delays commands by ``delay_ns``: the output at t is the input pushed for t - delay.

    Inputs are pushed once per physics step, so the output is exact when the delay is a
    multiple of the step and otherwise lags by less than one step (zero-order hold).
    Before any input is old enough, the output is ``initial``.
    """

    def __init__(self, delay_ns: int, initial: np.ndarray) -> None:
        if delay_ns < 0:
            raise ValueError(f"actuation delay must be >= 0 ns, got {delay_ns}")
        self.delay_ns = int(delay_ns)
        self._current = np.asarray(initial, dtype=np.float64).copy()
        self._pending: collections.deque[tuple[int, np.ndarray]] = collections.deque()

    def push(self, t_ns: int, command: np.ndarray) -> None:
        """Record the command computed for time ``t_ns`` (times must not decrease)."""
        self._pending.append((int(t_ns), np.asarray(command, dtype=np.float64).copy()))

    def output(self, t_ns: int) -> np.ndarray:
        """The command that reaches the actuators at ``t_ns``."""
        due_ns = t_ns - self.delay_ns
        while self._pending and self._pending[0][0] <= due_ns:
            self._current = self._pending.popleft()[1]
        return self._current.copy()
