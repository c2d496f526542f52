"""``output_interface:=action`` end to end over DDS: the policy node sends each chunk as a
control_msgs/FollowJointTrajectory goal to the simulated SO-101 arm, which serves
``joint_trajectory_controller/follow_joint_trajectory`` like a joint_trajectory_controller.

Covers: goals accepted and executed (the arm moves; nothing on the trajectory topic), each new
goal preempting the previous one (counted as preempted, not as a failure), a path-tolerance
violation on the sim's side aborting goals that the node logs and counts in /diagnostics
(WARN), and the server's view matching the node's.

Three processes: the sim, the policy node, and this one (a RosHarness listening). ``normal``
puts the sim's path tolerance back before every test, so the order does not matter.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from _ros_harness import RosHarness, wait_for
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from sensor_msgs.msg import JointState

from reflex_ros.ros.process import ChildProcess
from reflex_ros.ros.runner import PolicyNodeProcess, ros_environment

NODE = "reflex_policy_action"
SIM = "/so101_sim"


@pytest.fixture(scope="module")
def setup(tiny_export: Path, tmp_path_factory: pytest.TempPathFactory):
    logs = tmp_path_factory.mktemp("action")
    sim = ChildProcess([sys.executable, "-m", "reflex_ros.sim.sim_node", "--ros-args",
                        "-p", "camera_rate_hz:=10.0", "-p", "image_size:=64",
                        "-p", f"trajectory_topic:=/{NODE}/joint_trajectory"],
                       env=ros_environment(dict(os.environ)), log_path=logs / "sim.log").start()
    node = PolicyNodeProcess(tiny_export, embodiment="so100", node_name=NODE, log=lambda line: None,
                             parameters={"output_interface": "action", "controller_name": "joint_trajectory_controller",
                                         "execute_steps": 3, "max_observation_age_ms": 2000.0})
    robot = None
    try:
        node.__enter__()
        robot = RosHarness(node_fqn=node.fqn, camera_topics=[])
        joints: list[JointState] = []
        robot.node.create_subscription(JointState, "/joint_states", joints.append, 100)
        setter = robot.node.create_client(SetParameters, f"{SIM}/set_parameters")
        yield node, robot, sim, joints, setter
    finally:
        if robot is not None:
            robot.close()
        try:
            node.stop()
        finally:
            node.kill()
            sim.stop()


def set_path_tolerance(robot: RosHarness, setter, value: float) -> None:
    request = SetParameters.Request()
    request.parameters = [ParameterMsg(name="path_tolerance_rad", value=ParameterValue(
        type=ParameterType.PARAMETER_DOUBLE, double_value=value))]
    result = robot._call(setter, request)
    assert result.results[0].successful, result.results[0].reason


@pytest.fixture(autouse=True)
def normal(setup) -> None:
    node, robot, sim, joints, setter = setup
    set_path_tolerance(robot, setter, 0.0)


def _diag(robot: RosHarness, predicate, what: str, timeout_s: float = 120.0) -> dict:
    return wait_for(lambda: (d := robot.latest_diagnostics(after_ns=robot.now_ns())) and predicate(d) and d,
                    timeout_s, what)


def test_chunks_are_goals_the_sim_executes_each_preempting_the_last(setup) -> None:
    node, robot, sim, joints, setter = setup
    before = _diag(robot, lambda d: "action_goals_accepted" in d, "action counters in /diagnostics")
    n_joints = len(joints)
    after = _diag(robot, lambda d: int(d["action_goals_preempted"]) >= int(before["action_goals_preempted"]) + 3,
                  "goals preempted by newer ones")
    assert after["action_server"] == "/joint_trajectory_controller/follow_joint_trajectory"
    assert after["action_server_ready"] == "true"
    assert int(after["action_goals_accepted"]) >= int(before["action_goals_accepted"]) + 3
    assert int(after["action_goals_sent"]) >= int(after["action_goals_accepted"])
    assert after["action_goals_rejected"] == "0" and after["action_goals_not_sent"] == "0"
    assert int(after["action_goals_aborted"]) == int(before["action_goals_aborted"])
    assert int(after["action_tolerance_violations"]) == int(before["action_tolerance_violations"])
    assert after["_level"] == 0, after["_message"]
    # the arm follows the goals (random weights: it moves), and no trajectory went to the topic
    recent = np.array([list(m.position) for m in joints[n_joints:]])
    assert recent.shape[0] > 50 and np.ptp(recent, axis=0).max() > 0.05
    with robot.lock:
        assert robot.trajectories == []


def test_a_path_tolerance_violation_is_logged_and_counted(setup) -> None:
    node, robot, sim, joints, setter = setup
    before = _diag(robot, lambda d: "action_tolerance_violations" in d, "action counters in /diagnostics")
    mark = len(node.lines)
    set_path_tolerance(robot, setter, 1e-6)  # the arm lags its command: every goal violates this
    after = _diag(robot, lambda d: int(d["action_tolerance_violations"]) > int(before["action_tolerance_violations"])
                  and d["_level"] == 1, "a tolerance violation in /diagnostics")
    assert after["_message"].startswith("trajectory action: goal aborted: path tolerance violated")
    assert "PATH_TOLERANCE_VIOLATED" in after["action_last_problem"] and "path tolerance 1e-06" in after[
        "action_last_problem"]
    line = node.wait_for_log("goal aborted: path tolerance violated", timeout_s=30, start=mark)
    assert line is not None and "/follow_joint_trajectory" in line
    assert int(after["action_goals_aborted"]) == int(before["action_goals_aborted"])  # counted as violations
    set_path_tolerance(robot, setter, 0.0)  # goals succeed or are preempted again: OK once it is in the past
    _diag(robot, lambda d: d["_level"] == 0, "OK again")


def test_goal_outcomes_are_classified_and_reported() -> None:
    """What the node counts for each answer a FollowJointTrajectory server can give."""
    from reflex_ros.ros.action_output import (
        GOAL_TOLERANCE_VIOLATED,
        INVALID_GOAL,
        INVALID_JOINTS,
        STATUS_ABORTED,
        STATUS_CANCELED,
        STATUS_SUCCEEDED,
        GoalOutcomes,
    )

    o = GoalOutcomes()
    assert o.recent_problem() is None
    assert o.on_response(True, "/jtc/follow_joint_trajectory") is None
    assert o.on_response(False, "/jtc/follow_joint_trajectory") == (
        "goal rejected by /jtc/follow_joint_trajectory (its log says why)")
    assert o.on_result(STATUS_SUCCEEDED, 0, "", superseded=False) is None
    assert o.on_result(STATUS_CANCELED, INVALID_GOAL, "Current goal cancelled due to new incoming action.",
                       superseded=True) is None  # our own preemption: expected
    assert o.on_result(STATUS_CANCELED, 0, "by an operator", superseded=False) == (
        "goal canceled by the server: by an operator")
    assert o.on_result(STATUS_ABORTED, GOAL_TOLERANCE_VIOLATED, "wrist_flex 0.2 rad off", superseded=True) == (
        "goal aborted: goal tolerance violated (GOAL_TOLERANCE_VIOLATED): wrist_flex 0.2 rad off")
    assert o.on_result(STATUS_ABORTED, INVALID_JOINTS, "joint x unknown", superseded=False) == (
        "goal aborted (INVALID_JOINTS, status 6): joint x unknown")
    assert o.on_not_sent("/jtc/follow_joint_trajectory").startswith("no action server")
    v = o.values()
    assert (v["action_goals_accepted"], v["action_goals_rejected"], v["action_goals_succeeded"],
            v["action_goals_preempted"], v["action_goals_canceled"], v["action_tolerance_violations"],
            v["action_goals_aborted"], v["action_goals_not_sent"]) == ("1", "1", "1", "1", "1", "1", "1", "1")
    assert o.recent_problem().startswith("no action server")
