"""``output_interface: action``: each chunk as a ``control_msgs/FollowJointTrajectory`` goal.

Each chunk (and each hold) is sent to ``<controller_name>/follow_joint_trajectory`` as a goal
whose trajectory is exactly what the topic would carry (same stamp, points, velocities). A new
goal preempts the previous one: ros2_control's joint_trajectory_controller cancels its active
goal when it accepts a new one, and once the new goal is accepted this client also asks the
server to cancel the previous goal if it is still running (a server that queues goals would
otherwise keep executing a stale chunk).

Outcomes are logged (throttled) and counted (:class:`GoalOutcomes`, in /diagnostics):
rejected goals, aborts (with the server's error_code and error_string), tolerance violations
(PATH_TOLERANCE_VIOLATED / GOAL_TOLERANCE_VIOLATED), goals the node preempted (CANCELED after
a newer goal was accepted: expected, not an error), goals that succeeded, and chunks not sent
because no action server is up.

Threads: :meth:`TrajectoryActionOutput.send` is called from the control thread; the goal and
result futures complete on the executor thread (rclpy's ActionClient is thread-safe for this,
and works with the EventsExecutor).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from reflex_ros.vocab import follow_joint_trajectory_action

# control_msgs/action/FollowJointTrajectory Result.error_code
SUCCESSFUL, INVALID_GOAL, INVALID_JOINTS, OLD_HEADER_TIMESTAMP = 0, -1, -2, -3
PATH_TOLERANCE_VIOLATED, GOAL_TOLERANCE_VIOLATED = -4, -5
ERROR_CODES = {SUCCESSFUL: "SUCCESSFUL", INVALID_GOAL: "INVALID_GOAL", INVALID_JOINTS: "INVALID_JOINTS",
               OLD_HEADER_TIMESTAMP: "OLD_HEADER_TIMESTAMP", PATH_TOLERANCE_VIOLATED: "PATH_TOLERANCE_VIOLATED",
               GOAL_TOLERANCE_VIOLATED: "GOAL_TOLERANCE_VIOLATED"}
# action_msgs/GoalStatus
STATUS_SUCCEEDED, STATUS_CANCELED, STATUS_ABORTED = 4, 5, 6
PROBLEM_RECENT_S = 5.0  # /diagnostics stays WARN this long after a rejection / abort / violation


@dataclass
class GoalOutcomes:
    """What happened to the goals sent (ROS-free; the node reports it in /diagnostics)."""

    sent: int = 0
    not_sent: int = 0  # no action server was up
    accepted: int = 0
    rejected: int = 0
    succeeded: int = 0
    preempted: int = 0  # canceled because a newer goal was accepted (expected)
    canceled: int = 0  # canceled by someone else
    aborted: int = 0  # aborted for any reason other than a tolerance
    tolerance_violations: int = 0
    last_problem: str = ""
    last_problem_t: float = field(default=-1e9, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _problem(self, text: str) -> str:
        self.last_problem, self.last_problem_t = text, time.monotonic()
        return text

    def on_not_sent(self, action: str) -> str:
        with self._lock:
            self.not_sent += 1
            return self._problem(f"no action server {action}: chunk not sent")

    def on_sent(self) -> None:
        with self._lock:
            self.sent += 1

    def on_response(self, accepted: bool, action: str) -> str | None:
        """A goal response; returns the problem to log, if any."""
        with self._lock:
            if accepted:
                self.accepted += 1
                return None
            self.rejected += 1
            return self._problem(f"goal rejected by {action} (its log says why)")

    def on_result(self, status: int, error_code: int, error_string: str, superseded: bool) -> str | None:
        """A goal's result; ``superseded``: a newer goal had been accepted. Returns the problem
        to log, if any (a preempted goal is not one)."""
        with self._lock:
            if status == STATUS_SUCCEEDED:
                self.succeeded += 1
                return None
            if status == STATUS_CANCELED:
                if superseded:
                    self.preempted += 1
                    return None
                self.canceled += 1
                return self._problem(f"goal canceled by the server: {error_string or 'no reason given'}")
            code = ERROR_CODES.get(error_code, str(error_code))
            if error_code in (PATH_TOLERANCE_VIOLATED, GOAL_TOLERANCE_VIOLATED):
                self.tolerance_violations += 1
                kind = "path" if error_code == PATH_TOLERANCE_VIOLATED else "goal"
                return self._problem(f"goal aborted: {kind} tolerance violated ({code}): {error_string}")
            self.aborted += 1
            return self._problem(f"goal aborted ({code}, status {status}): {error_string}")

    def values(self) -> dict[str, str]:
        with self._lock:
            return {"action_goals_sent": str(self.sent), "action_goals_not_sent": str(self.not_sent),
                    "action_goals_accepted": str(self.accepted), "action_goals_rejected": str(self.rejected),
                    "action_goals_succeeded": str(self.succeeded), "action_goals_preempted": str(self.preempted),
                    "action_goals_canceled": str(self.canceled), "action_goals_aborted": str(self.aborted),
                    "action_tolerance_violations": str(self.tolerance_violations),
                    "action_last_problem": self.last_problem}

    def recent_problem(self, within_s: float = PROBLEM_RECENT_S) -> str | None:
        with self._lock:
            return self.last_problem if time.monotonic() - self.last_problem_t <= within_s else None


class TrajectoryActionOutput:
    """The FollowJointTrajectory client of one configured node (see the module docstring)."""

    def __init__(self, node: Any, controller_name: str, outcomes: GoalOutcomes) -> None:
        from control_msgs.action import FollowJointTrajectory
        from rclpy.action import ActionClient

        self._goal_type = FollowJointTrajectory.Goal
        self.action = follow_joint_trajectory_action(controller_name)
        self._client = ActionClient(node, FollowJointTrajectory, self.action)
        try:  # as a user would type it: /ns/arm_controller/follow_joint_trajectory
            self.resolved_name = node.resolve_topic_name(self.action)
        except Exception:
            self.resolved_name = self.action
        self._logger = node.get_logger()
        self.outcomes = outcomes
        self._lock = threading.Lock()
        self._seq = 0
        self._newest_accepted = 0
        self._running: dict[int, Any] = {}  # seq -> goal handle, accepted and without a result yet

    @property
    def server_ready(self) -> bool:
        return bool(self._client.server_is_ready())

    def _log(self, text: str) -> None:
        self._logger.error(f"{self.action}: {text}", throttle_duration_sec=2.0)

    def send(self, trajectory: Any) -> bool:
        """Send ``trajectory`` (trajectory_msgs/JointTrajectory) as a new goal; False when no
        action server is up (counted and logged)."""
        if not self._client.server_is_ready():
            self._log(self.outcomes.on_not_sent(self.action))
            return False
        goal = self._goal_type()
        goal.trajectory = trajectory
        with self._lock:
            self._seq += 1
            seq = self._seq
        self.outcomes.on_sent()
        self._client.send_goal_async(goal).add_done_callback(partial(self._on_response, seq))
        return True

    def _on_response(self, seq: int, future: Any) -> None:
        try:
            handle = future.result()
        except Exception as exc:  # the request failed outright
            self._log(self.outcomes.on_result(STATUS_ABORTED, INVALID_GOAL, f"{type(exc).__name__}: {exc}", False))
            return
        problem = self.outcomes.on_response(bool(handle.accepted), self.action)
        if problem:
            self._log(problem)
            return
        with self._lock:
            stale = []
            if seq > self._newest_accepted:
                self._newest_accepted = seq
                stale = [h for s, h in self._running.items() if s < seq]
            self._running[seq] = handle
        for old in stale:  # the server normally preempted it already; make sure
            old.cancel_goal_async()
        handle.get_result_async().add_done_callback(partial(self._on_result, seq))

    def _on_result(self, seq: int, future: Any) -> None:
        with self._lock:
            self._running.pop(seq, None)
            superseded = seq < self._newest_accepted
        try:
            response = future.result()
            status, result = int(response.status), response.result
            problem = self.outcomes.on_result(status, int(result.error_code), str(result.error_string), superseded)
        except Exception as exc:
            problem = self.outcomes.on_result(STATUS_ABORTED, INVALID_GOAL, f"{type(exc).__name__}: {exc}", superseded)
        if problem:
            self._log(problem)

    def values(self) -> dict[str, str]:
        return {"action_server": self.resolved_name, "action_server_ready": str(self.server_ready).lower(),
                **self.outcomes.values()}

    def destroy(self) -> None:
        self._client.destroy()


__all__ = ["GoalOutcomes", "TrajectoryActionOutput"]
