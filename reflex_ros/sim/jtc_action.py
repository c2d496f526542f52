"""The sim's ``<controller>/follow_joint_trajectory`` action server, as a joint_trajectory_controller serves it.

Modelled on ros2_controllers' JTC (the parts a policy node meets):

* **goal**: rejected when the trajectory is malformed or empty, names a joint the arm does not
  have, or ends before it arrives (a non-zero stamp wholly in the past); otherwise accepted
  and executed by the same :class:`~reflex_ros.control.jtc.TrajectoryExecutor` as the topic
  (so stamps, deferral and interpolation are the topic's).
* **preemption**: accepting a goal cancels the active one (CANCELED, error_code INVALID_GOAL,
  "Current goal cancelled due to new incoming action."), as JTC does.
* **cancel request** for the active goal: hold the current position, CANCELED.
* **tolerances** (position only): a goal's ``path_tolerance`` / ``goal_tolerance`` entries
  override the server's defaults (``> 0``; ``-1`` erases one, ``0`` keeps the default). While
  the trajectory runs, |measured - desired| beyond the path tolerance aborts the goal
  (PATH_TOLERANCE_VIOLATED) and the arm holds where it is. At the end, within the goal
  tolerance succeeds; otherwise it waits up to ``goal_time_tolerance`` (0 = forever, JTC's
  default) and then aborts (GOAL_TOLERANCE_VIOLATED).

Results are decided by a 50 Hz timer on the node's executor (the execute callback awaits a
future it completes), so the executor never blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from control_msgs.action import FollowJointTrajectory
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.task import Future

from reflex_ros.control.jtc import TimedTrajectory, TrajectoryExecutor, parse_joint_trajectory
from reflex_ros.control.stamps import stamp_to_ns

Result = FollowJointTrajectory.Result
CHECK_PERIOD_S = 0.02
PREEMPTED = "Current goal cancelled due to new incoming action."


@dataclass
class _Goal:
    handle: Any
    done: Future
    trajectory: TimedTrajectory
    start_ns: int  # absolute time of time_from_start = 0
    columns: np.ndarray  # arm joint index of each trajectory column
    path_tolerance: np.ndarray  # per column, rad; inf = not checked
    goal_tolerance: np.ndarray
    goal_time_ns: int  # 0 = wait for the goal tolerance forever

    @property
    def end_ns(self) -> int:
        return self.start_ns + int(self.trajectory.times_from_start_ns[-1])

    def desired(self, t_ns: int) -> np.ndarray:
        """The trajectory's positions at ``t_ns`` (linear between points, held after the last)."""
        times = self.start_ns + self.trajectory.times_from_start_ns
        return np.array([np.interp(t_ns, times, self.trajectory.positions[:, c])
                         for c in range(self.trajectory.positions.shape[1])])


def _tolerances(entries: Any, names: tuple[str, ...], default: float) -> np.ndarray:
    """Per trajectory column: the goal's entry (> 0 sets, -1 erases) or ``default`` (0 = none)."""
    out = np.full(len(names), default if default > 0 else np.inf)
    index = {n: i for i, n in enumerate(names)}
    for tol in entries:
        i = index.get(str(tol.name))
        if i is None:
            continue
        if tol.position > 0:
            out[i] = float(tol.position)
        elif tol.position < 0:
            out[i] = np.inf
    return out


class JtcActionServer:
    """See the module docstring. ``lock`` guards ``executor`` and the arm (the physics thread
    samples them); ``measured()`` is the arm's positions (called under ``lock``)."""

    def __init__(self, node: Any, action_name: str, *, lock: Any, executor: TrajectoryExecutor,
                 measured: Callable[[], np.ndarray], now_ns: Callable[[], int], open_loop: bool,
                 path_tolerance: Callable[[], float], goal_tolerance: float, goal_time_s: float, stats: Any) -> None:
        self._node = node
        self._lock = lock
        self._executor = executor
        self._measured = measured
        self._now = now_ns
        self._open_loop = open_loop
        self._path_tolerance = path_tolerance
        self._goal_tolerance = goal_tolerance
        self._goal_time_ns = int(goal_time_s * 1e9)
        self._stats = stats
        self._joints = {name: i for i, name in enumerate(executor.joint_names)}
        self._active: _Goal | None = None
        self._goals: dict[bytes, _Goal] = {}  # goal id -> its record, until its execute callback returns
        self.action_name = action_name
        self._server = ActionServer(node, FollowJointTrajectory, action_name, execute_callback=self._execute,
                                    goal_callback=self._on_goal, handle_accepted_callback=self._on_accepted,
                                    cancel_callback=self._on_cancel)
        self._timer = node.create_timer(CHECK_PERIOD_S, self._check)

    # ---------------------------------------------------------------- goal lifecycle

    def _log(self, level: str, text: str) -> None:
        getattr(self._node.get_logger(), level)(f"{self.action_name}: {text}", throttle_duration_sec=2.0)

    def _refuse(self, reason: str) -> GoalResponse:
        self._stats.goals_rejected += 1
        self._log("warning", f"goal rejected: {reason}")
        return GoalResponse.REJECT

    def _on_goal(self, goal: Any) -> GoalResponse:
        try:
            trajectory = parse_joint_trajectory(goal.trajectory)
        except ValueError as exc:
            return self._refuse(str(exc))
        if trajectory.times_from_start_ns.size == 0:
            return self._refuse("empty trajectory")
        unknown = [n for n in trajectory.joint_names if n not in self._joints]
        if unknown:
            return self._refuse(f"joints {unknown} are not this controller's {list(self._joints)}")
        now = self._now()
        if trajectory.start_ns and trajectory.start_ns + int(trajectory.times_from_start_ns[-1]) < now:
            return self._refuse("the trajectory ends before it arrived (header.stamp in the past)")
        return GoalResponse.ACCEPT

    def _finish(self, goal: _Goal, event: str, error_code: int, text: str) -> None:
        """End ``goal`` (succeed / abort / canceled) and hand its result to its execute callback."""
        if goal.handle.is_active:
            if event == "canceled" and not goal.handle.is_cancel_requested:
                goal.handle._update_state(_rclpy.GoalEvent.CANCEL_GOAL)  # server-side preemption, as JTC
            getattr(goal.handle, {"succeed": "succeed", "abort": "abort", "canceled": "canceled"}[event])()
        result = Result()
        result.error_code, result.error_string = int(error_code), text
        if not goal.done.done():
            goal.done.set_result(result)
        counter = {"succeed": "goals_succeeded", "abort": "goals_aborted", "canceled": "goals_canceled"}[event]
        setattr(self._stats, counter, getattr(self._stats, counter) + 1)

    def _on_accepted(self, handle: Any) -> None:
        request = handle.request
        trajectory = parse_joint_trajectory(request.trajectory)
        with self._lock:
            now = self._now()
            measured = None if self._open_loop else self._measured()
            result = self._executor.submit(trajectory, now, measured)
        if not result.accepted:  # cannot happen after _on_goal; never leave a goal hanging
            self._log("error", f"accepted goal not executable: {result.reason}")
        previous, self._active = self._active, None
        if previous is not None:
            self._finish(previous, "canceled", Result.INVALID_GOAL, PREEMPTED)
        names = trajectory.joint_names
        self._active = _Goal(
            handle=handle, done=Future(), trajectory=trajectory, start_ns=trajectory.start_ns or now,
            columns=np.array([self._joints[n] for n in names], dtype=np.intp),
            path_tolerance=_tolerances(request.path_tolerance, names, self._path_tolerance()),
            goal_tolerance=_tolerances(request.goal_tolerance, names, self._goal_tolerance),
            goal_time_ns=stamp_to_ns(request.goal_time_tolerance) or self._goal_time_ns)
        self._goals[bytes(handle.goal_id.uuid)] = self._active
        self._stats.goals_accepted += 1
        handle.execute()

    async def _execute(self, handle: Any) -> Any:
        """The result of this goal, whenever it ends (it may have ended before this runs: a
        loaded machine can preempt or abort a goal before its execute task starts)."""
        goal = self._goals[bytes(handle.goal_id.uuid)]
        try:
            return await goal.done
        finally:
            self._goals.pop(bytes(handle.goal_id.uuid), None)

    def _on_cancel(self, handle: Any) -> CancelResponse:
        return CancelResponse.ACCEPT  # the active goal is held and canceled at the next check

    def _hold(self) -> None:
        """Hold the measured position of every joint (an empty trajectory naming them: JTC's hold)."""
        names = tuple(self._joints)
        with self._lock:
            self._executor.submit(TimedTrajectory(names, np.zeros(0, np.int64), np.zeros((0, len(names)))),
                                  self._now(), self._measured())

    # ---------------------------------------------------------------- the 50 Hz check

    def _check(self) -> None:
        goal = self._active
        if goal is None:
            return
        if goal.handle.is_cancel_requested:
            self._active = None
            self._hold()
            self._finish(goal, "canceled", Result.SUCCESSFUL, "canceled on request: holding position")
            return
        now = self._now()
        with self._lock:
            actual = self._measured()[goal.columns]
        first = goal.start_ns + int(goal.trajectory.times_from_start_ns[0])
        if first <= now <= goal.end_ns:
            error = np.abs(actual - goal.desired(now))
            bad = np.flatnonzero(error > goal.path_tolerance)
            if bad.size:
                j = int(bad[0])
                text = (f"{goal.trajectory.joint_names[j]} is {error[j]:.4f} rad from the trajectory "
                        f"(path tolerance {goal.path_tolerance[j]:g})")
                self._active = None
                self._hold()
                self._log("warning", f"goal aborted: {text}")
                self._finish(goal, "abort", Result.PATH_TOLERANCE_VIOLATED, text)
            return
        if now < goal.end_ns:
            return
        error = np.abs(actual - goal.trajectory.positions[-1])
        bad = np.flatnonzero(error > goal.goal_tolerance)
        if not bad.size:
            self._active = None
            self._finish(goal, "succeed", Result.SUCCESSFUL, "")
        elif goal.goal_time_ns and now > goal.end_ns + goal.goal_time_ns:
            j = int(bad[0])
            text = (f"{goal.trajectory.joint_names[j]} is {error[j]:.4f} rad from its goal "
                    f"{goal.goal_time_ns * 1e-9:g} s after the trajectory ended (goal tolerance "
                    f"{goal.goal_tolerance[j]:g})")
            self._active = None
            self._log("warning", f"goal aborted: {text}")
            self._finish(goal, "abort", Result.GOAL_TOLERANCE_VIOLATED, text)

    def destroy(self) -> None:
        self._node.destroy_timer(self._timer)
        self._server.destroy()


__all__ = ["JtcActionServer"]
