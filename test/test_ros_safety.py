"""Issue 13 over real DDS: hostile joint states, bad stamps and the ~/hold service against the
policy node (its own process, real tiny export, real onnxruntime).

The invariant under test: **nothing outside the position limits is ever published**, chunks
and holds alike, whatever the robot reports. The node is shared by the module (conftest's
``policy``); the autouse ``baseline`` releases the hold, restores the parameters and feeds a
still arm before every test, so the order of the tests does not matter.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from _ros_harness import SO100_JOINTS, RosHarness, joint_state, stamp_ns, wait_for

POLICY = {"node": {"parameters": {"execute_steps": 3}}}
LOWER = np.array([-1.87, -1.69, -1.64, -1.60, -2.69, -0.12])
UPPER = np.array([1.87, 1.69, 1.64, 1.60, 2.79, 1.69])
BASELINE = {"max_delta_per_step": [0.1] * 6, "latency_compensation_ms": 60.0, "anchor_to_command": True}
HOUR_NS = 3_600_000_000_000


@pytest.fixture(autouse=True)
def baseline(robot: RosHarness) -> None:
    assert robot.hold(False)[0]
    robot.feed(True, rate_hz=30.0, state=lambda: (SO100_JOINTS, [0.0] * 6))
    assert robot.set_params(**BASELINE) == [(True, "")] * len(BASELINE)
    robot.wait_chunks(2, timeout_s=90)


def _hold_after(robot: RosHarness, index: int):
    def find():
        with robot.lock:
            for r in robot.trajectories[index:]:
                if len(r.msg.points) == 1 and stamp_ns(r.msg.header.stamp) == 0:
                    return r.msg
        return None
    return wait_for(find, 30, "a hold-position trajectory")


def _diag(robot: RosHarness, predicate, what: str) -> dict:
    return wait_for(lambda: (d := robot.latest_diagnostics(after_ns=robot.now_ns())) and predicate(d) and d, 60, what)


def test_hostile_joint_states_never_become_commands_outside_the_limits(node, robot) -> None:
    """Item 1: a finite 1e30 reading used to be published as 22 trajectories starting at 1e30
    rad, and 10 rad as chunks starting at 9.8; nothing was logged. Here the robot reports
    faults (10, -10, 1e30, -1e300, NaN) between drifted readings (every joint a few
    hundredths outside its limits), the hold service and a deactivate hold in between."""
    with robot.lock:
        mark_traj, mark_chunk = len(robot.trajectories), len(robot.chunks)
    mark_log = len(node.lines)
    readings = itertools.cycle([10.0, 1.91, 1e30, -1.91, -1e300, 1.5, float("nan"), -10.0, 1.9])
    drift = [1.72, -1.67, 1.63, 2.82, -0.15]  # 0.03 beyond each remaining joint's limit
    robot.feed(True, state=lambda: (SO100_JOINTS, [next(readings), *drift]))
    robot.wait_chunks(4, timeout_s=120)
    fault = _diag(robot, lambda d: d["_level"] == 2 and d["_message"].startswith("joint state refused: "),
                  "an ERROR naming the refused joint state")
    assert "joint 'shoulder_pan'" in fault["_message"] and int(fault["state_faults"]) > 0
    line = node.wait_for_log("dropped message: /joint_states: joint 'shoulder_pan' ", timeout_s=30, start=mark_log)
    assert line is not None and any(v in line for v in ("reads 10,", "reads -10,", "1e+30", "-1e+300", "is nan"))
    assert robot.hold(True)[0]
    _hold_after(robot, mark_traj)
    assert robot.hold(False)[0]
    robot.wait_chunks(3, timeout_s=120)
    node.deactivate()
    node.activate()
    robot.wait_chunks(2, timeout_s=120)

    with robot.lock:
        trajectories = [r.msg for r in robot.trajectories[mark_traj:]]
        chunks = [r.msg for r in robot.chunks[mark_chunk:]]
    holds = [t for t in trajectories if len(t.points) == 1 and stamp_ns(t.header.stamp) == 0]
    assert len(holds) >= 2 and len(trajectories) > len(holds) and chunks  # ~/hold, deactivate, chunks
    for traj in trajectories:
        positions = np.array([p.positions for p in traj.points])
        assert positions.shape[1] == 6 and np.isfinite(positions).all()
        assert (positions >= LOWER).all() and (positions <= UPPER).all(), positions
    for chunk in chunks:  # float32 data: 1.87 is 1.8700000048
        data = np.asarray(chunk.data, dtype=np.float64).reshape(chunk.chunk_size, chunk.action_dim)
        assert np.isfinite(data).all() and (data >= LOWER - 1e-6).all() and (data <= UPPER + 1e-6).all()
    # sane readings again: OK at once
    robot.feed(True, state=lambda: (SO100_JOINTS, [0.0] * 6))
    _diag(robot, lambda d: d["_level"] == 0 and d["_message"] == "publishing chunks", "diagnostics back to OK")


def test_a_joint_state_listing_a_joint_twice_is_refused_naming_it(node, robot) -> None:
    """Item 2: the last value used to win silently."""
    mark = len(node.lines)
    names = [*SO100_JOINTS, "gripper"]
    for _ in range(3):
        robot.joint_pub.publish(joint_state(robot.now_ns(), names, [0.0] * 6 + [1.0]))
    line = node.wait_for_log("JointState lists joint(s) ['gripper'] more than once; message refused",
                             timeout_s=30, start=mark)
    assert line is not None and "dropped message: /joint_states:" in line


def test_a_burst_stamped_an_hour_ahead_is_refused_and_the_node_recovers_at_once(node, robot) -> None:
    """Item 4: such a burst used to freeze the node on that observation: chunks stamped 1 h
    ahead for as long as it ran, obs_to_publish_p50_ms -3597090 and diagnostics OK."""
    robot.feed(False)
    mark = len(node.lines)
    for _ in range(5):
        robot.publish_observation(robot.now_ns() + HOUR_NS)
    line = node.wait_for_log("s ahead of the node clock", timeout_s=30, start=mark)
    assert line is not None and "(max_future_stamp_ms 100); message refused" in line
    assert "/joint_states: header.stamp" in line or "/camera/front/image_raw: header.stamp" in line
    refused = _diag(robot, lambda d: d["_message"].startswith("inputs refused: "), "a WARN naming the refused stamps")
    assert refused["_level"] == 1 and int(refused["refused_stamps"]) >= 10
    start = robot.chunk_count()
    robot.feed(True)
    published = set(robot.feeder.published_stamps)
    for r in robot.wait_chunks(3, after=start, timeout_s=90):
        published = set(robot.feeder.published_stamps)
        assert stamp_ns(r.msg.header.stamp) - r.msg.skipped_steps * stamp_ns(r.msg.dt) in published
    fresh = _diag(robot, lambda d: d["_message"] == "publishing chunks", "diagnostics back to OK")
    assert float(fresh["obs_to_publish_p50_ms"]) >= 0


def test_hold_service_holds_the_commanded_position_until_released(node, robot) -> None:
    """Item 3: the only way to stop used to be a lifecycle transition. A step limit of 1e-6
    from the measured state (anchoring off) pins every commanded point to the observed state,
    so the commanded position is known."""
    state = [0.3, -0.4, 0.5, -0.6, 0.7, 0.2]
    robot.feed(True, state=lambda: (SO100_JOINTS, state))
    assert robot.set_params(max_delta_per_step=[1e-6] * 6, latency_compensation_ms=0.0,
                            anchor_to_command=False) == [(True, "")] * 3
    start = robot.chunk_count()
    wait_for(lambda: any(np.allclose(np.asarray(r.msg.data[:6]), state, atol=1e-4)
                         for r in list(robot.chunks)[start:]), 90, "chunks pinned at the observed state")
    with robot.lock:
        mark = len(robot.trajectories)
    ok, message = robot.hold(True)
    assert ok and message == ("held at [0.3000, -0.4000, 0.5000, -0.6000, 0.7000, 0.2000] (the commanded position); "
                              "no chunks until released"), message
    hold = _hold_after(robot, mark)
    np.testing.assert_allclose(hold.points[0].positions, state, atol=1e-4)
    assert list(hold.points[0].velocities) == [0.0] * 6 and list(hold.joint_names) == SO100_JOINTS
    first = _diag(robot, lambda d: d["held"] == "true", "held in /diagnostics")
    second = robot.latest_diagnostics(after_ns=robot.now_ns())
    assert (first["_level"], first["_message"]) == (1, "held by ~/hold: no chunks until released")
    assert first["chunks_published"] == second["chunks_published"]  # nothing while held
    with robot.lock:
        assert robot.trajectories[-1].msg is hold
    assert robot.hold(True) == (True, message)  # idempotent: the same place
    assert robot.hold(False) == (True, "released: chunks resume with the next observation")
    robot.wait_chunks(2, timeout_s=90)
    assert robot.latest_diagnostics(after_ns=robot.now_ns())["held"] == "false"
