"""The sim node in its own process, observed over DDS: joint states, camera, trajectories, delay.

Timing assertions use the sim's own stamps (sim time), never the test's wall clock, so a
loaded machine makes the test slower, not flaky.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from builtin_interfaces.msg import Duration  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402

from reflex_ros.control.stamps import ns_to_sec_nanosec  # noqa: E402
from reflex_ros.control.stamps import stamp_to_ns as _stamp_to_ns  # noqa: E402
from reflex_ros.ros.process import ChildProcess  # noqa: E402

JOINTS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
TRAJ_TOPIC = "/test_sim/joint_trajectory"
STARTUP_TIMEOUT_S = 60.0


@contextmanager
def sim_process(tmp_path: Path, *params: str) -> Iterator[ChildProcess]:
    """The sim node as a child process with the session's ROS environment, logging to a file
    (a pipe nobody drains could fill up and block the child); always stopped and reaped."""
    cmd = [sys.executable, "-m", "reflex_ros.sim.sim_node", "--ros-args", "-p", f"trajectory_topic:={TRAJ_TOPIC}"]
    for p in params:
        cmd += ["-p", p]
    sim = ChildProcess(cmd, env=dict(os.environ), log_path=tmp_path / "sim.log").start()
    try:
        yield sim
    finally:
        sim.stop()


class Listener:
    """A plain rclpy node in the test process collecting what the sim publishes."""

    def __init__(self) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("test_sim_listener", context=self.context)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.joint_states: list[JointState] = []
        self.images: list[Image] = []
        self.node.create_subscription(JointState, "/joint_states", self.joint_states.append, 100)
        self.node.create_subscription(Image, "/camera/front/image_raw", self.images.append, 10)
        self.traj_pub = self.node.create_publisher(JointTrajectory, TRAJ_TOPIC, 10)

    def wait_for(self, condition: Callable[[], bool], timeout_s: float, what: str, sim: ChildProcess) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if not sim.alive:
                pytest.fail(f"sim exited with {sim.returncode} while waiting for {what}:\n{sim.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
            self.executor.spin_once(timeout_sec=0.05)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


@pytest.fixture
def listener() -> Iterator[Listener]:
    lis = Listener()
    yield lis
    lis.close()


def stamp_ns(msg) -> int:
    return _stamp_to_ns(msg.header.stamp)


def positions_of(msg: JointState) -> np.ndarray:
    return np.array([msg.position[list(msg.name).index(j)] for j in JOINTS])


def make_trajectory(start_ns: int, times_s: list[float], points: list[list[float]]) -> JointTrajectory:
    msg = JointTrajectory()
    msg.header.stamp.sec, msg.header.stamp.nanosec = ns_to_sec_nanosec(start_ns)
    msg.joint_names = JOINTS
    for t, p in zip(times_s, points, strict=True):
        ns = int(round(t * 1e9))
        msg.points.append(
            JointTrajectoryPoint(
                positions=[float(v) for v in p], time_from_start=Duration(sec=ns_to_sec_nanosec(ns)[0], nanosec=ns_to_sec_nanosec(ns)[1])
            )
        )
    return msg


def test_publishes_joint_states_and_camera_and_tracks_a_trajectory(listener: Listener, tmp_path: Path):
    with sim_process(tmp_path) as sim:
        listener.wait_for(
            lambda: len(listener.images) >= 5 and len(listener.joint_states) >= 50,
            STARTUP_TIMEOUT_S,
            "joint states and images",
            sim,
        )

        js = listener.joint_states[-1]
        assert list(js.name) == JOINTS
        assert len(js.position) == len(js.velocity) == len(JOINTS)
        js_stamps = [stamp_ns(m) for m in listener.joint_states]
        assert all(b > a for a, b in zip(js_stamps, js_stamps[1:], strict=False))
        # 100 Hz in sim time: consecutive stamps 10 ms apart (20 ms if one was lost)
        assert np.median(np.diff(js_stamps)) == pytest.approx(10e6, abs=1e6)

        img = listener.images[-1]
        assert (img.height, img.width, img.encoding, img.step) == (128, 128, "rgb8", 128 * 3)
        assert len(img.data) == 128 * 128 * 3
        pixels = np.frombuffer(bytes(img.data), dtype=np.uint8)
        assert pixels.std() > 5  # a rendered scene, not a blank buffer
        img_stamps = [stamp_ns(m) for m in listener.images]
        assert all(b > a for a, b in zip(img_stamps, img_stamps[1:], strict=False))
        # stamped with the sim time of the state shown: on the physics step grid (2 ms) of the
        # joint-state timeline (the same epoch), never ahead of the newest state; which stream's
        # subscription matched first decides which one was received first, so no order is assumed
        step_ns = 2_000_000
        assert all((s - js_stamps[0]) % step_ns == 0 for s in img_stamps)
        assert max(img_stamps) <= max(js_stamps) + 70e6

        # Move every joint to a target well inside the limits, starting "now" (zero stamp).
        target = np.array([0.6, -0.4, 0.5, 0.4, -0.8, 0.6])
        listener.traj_pub.publish(make_trajectory(0, [0.5], [target.tolist()]))
        sent_after = stamp_ns(listener.joint_states[-1])
        listener.wait_for(
            lambda: stamp_ns(listener.joint_states[-1]) > sent_after + 2_500_000_000,
            STARTUP_TIMEOUT_S,
            "2.5 s of sim time after the trajectory",
            sim,
        )
        final = positions_of(listener.joint_states[-1])
        start = positions_of(next(m for m in listener.joint_states if stamp_ns(m) >= sent_after))
        # approached the target: error shrank to a small fraction of the distance (position
        # servos under gravity keep a small steady-state error)
        assert np.all(np.abs(final - target) < 0.1), f"final {final} vs target {target}"
        assert np.linalg.norm(final - target) < 0.2 * np.linalg.norm(start - target)


@pytest.mark.parametrize("delay_ms", [0, 200])
def test_actuation_delay_postpones_the_motion_by_the_delay(listener: Listener, delay_ms: int, tmp_path: Path):
    """A future-stamped ramp on shoulder_pan (no gravity load about its axis): the measured
    joint leaves its start no earlier than stamp + delay and soon after it, in sim time."""
    with sim_process(tmp_path, f"actuation_delay_ms:={float(delay_ms)}", "camera_rate_hz:=0.0") as sim:
        listener.wait_for(lambda: len(listener.joint_states) >= 20, STARTUP_TIMEOUT_S, "joint states", sim)
        now_ns = stamp_ns(listener.joint_states[-1])
        hold = positions_of(listener.joint_states[-1])
        goal = hold.copy()
        goal[0] += 0.5
        start_ns = now_ns + 1_000_000_000  # leave room for DDS delivery on a loaded machine
        listener.traj_pub.publish(make_trajectory(start_ns, [0.0, 0.5], [hold.tolist(), goal.tolist()]))
        listener.wait_for(
            lambda: stamp_ns(listener.joint_states[-1]) > start_ns + (delay_ms + 1500) * 1_000_000,
            STARTUP_TIMEOUT_S,
            "the ramp to finish",
            sim,
        )
        moved = [m for m in listener.joint_states if abs(positions_of(m)[0] - hold[0]) > 0.01]
        assert moved, "shoulder_pan never moved"
        onset_ms = (stamp_ns(moved[0]) - start_ns) / 1e6
        # 0.01 rad of a 1 rad/s ramp is 10 ms of command; the servo adds ~60 ms (measured: 70)
        print(f"delay {delay_ms} ms: motion began {onset_ms:.0f} ms after the stamp")
        assert delay_ms <= onset_ms <= delay_ms + 150, f"motion began {onset_ms:.0f} ms after the stamp"
        assert positions_of(listener.joint_states[-1])[0] == pytest.approx(goal[0], abs=0.05)


def test_bad_trajectories_are_rejected_and_the_node_keeps_running(listener: Listener, tmp_path: Path):
    with sim_process(tmp_path, "camera_rate_hz:=0.0") as sim:
        listener.wait_for(lambda: len(listener.joint_states) >= 20, STARTUP_TIMEOUT_S, "joint states", sim)
        now_ns = stamp_ns(listener.joint_states[-1])
        bad = make_trajectory(0, [0.1], [[0.0] * 6])
        bad.points[0].positions = [0.0, 0.0]  # wrong length
        listener.traj_pub.publish(bad)
        stale = make_trajectory(now_ns - 5_000_000_000, [0.0, 0.1], [[0.3] * 6, [0.3] * 6])  # wholly past
        listener.traj_pub.publish(stale)
        target = np.array([-0.5, 0.0, 0.0, 0.0, 0.0, 0.0])
        good = make_trajectory(0, [0.3], [target.tolist()])
        good.joint_names = ["shoulder_pan", "not_a_joint"]
        good.points[0].positions = [-0.5, 1.0]  # unknown joint ignored, the rest holds
        listener.traj_pub.publish(good)
        listener.wait_for(
            lambda: stamp_ns(listener.joint_states[-1]) > now_ns + 2_000_000_000,
            STARTUP_TIMEOUT_S,
            "2 s more",
            sim,
        )
        final = positions_of(listener.joint_states[-1])
        assert final[0] == pytest.approx(-0.5, abs=0.05)
        assert sim.alive
        assert sim.stop() == 0
    out = sim.log()
    assert "trajectory rejected: point 0 has 2 positions for 6 joints" in out
    assert "wholly in the past" in out
    assert "ignoring unknown joints ['not_a_joint']" in out
    assert "1 accepted / 2 rejected" in out


def test_sim_time_mode_publishes_clock_and_stamps_from_it(listener: Listener, tmp_path: Path):
    from rosgraph_msgs.msg import Clock

    clocks: list[int] = []
    listener.node.create_subscription(
        Clock, "/clock", lambda m: clocks.append(_stamp_to_ns(m.clock)), 100
    )
    with sim_process(tmp_path, "publish_clock:=true", "real_time_factor:=2.0", "camera_rate_hz:=0.0") as sim:
        listener.wait_for(
            lambda: len(clocks) >= 100 and len(listener.joint_states) >= 50, STARTUP_TIMEOUT_S, "/clock", sim
        )
    assert all(b > a for a, b in zip(clocks, clocks[1:], strict=False))
    assert clocks[0] < 60_000_000_000  # sim time starts at 0, not at the wall-clock epoch
    js = [stamp_ns(m) for m in listener.joint_states]
    assert min(clocks) - 100_000_000 <= js[0] and js[-1] <= max(clocks) + 100_000_000


def test_sim_cli_flags_become_node_parameters():
    import argparse

    from reflex_ros.sim import cli

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    cli.register(sub)
    args = parser.parse_args(
        [
            "sim",
            "--actuation-delay-ms",
            "80",
            "--image-size",
            "96",
            "--real-time-factor",
            "2",
            "--ros-args",
            "-p",
            "camera_rate_hz:=5.0",
        ]
    )
    params = cli.sim_parameter_args(args)
    assert params == [
        "-p",
        "actuation_delay_ms:=80.0",
        "-p",
        "image_size:=96",
        "-p",
        "real_time_factor:=2.0",
        "-p",
        "publish_clock:=true",
    ]
    assert args.ros_args == ["-p", "camera_rate_hz:=5.0"]
    assert args.func is cli.handle


def test_initial_positions_set_the_start_pose(listener: Listener, tmp_path: Path):
    start = [0.3, -0.2, 0.4, 0.1, -0.5, 0.2]
    with sim_process(tmp_path, f"initial_positions:={start}", "camera_rate_hz:=0.0") as sim:
        listener.wait_for(lambda: len(listener.joint_states) >= 30, STARTUP_TIMEOUT_S, "joint states", sim)
    first = positions_of(listener.joint_states[0])
    held = positions_of(listener.joint_states[-1])
    # placed there, and the servos hold the pose (gravity sag of a position servo is small)
    assert np.abs(first - start).max() < 0.05
    assert np.abs(held - start).max() < 0.1


def test_sim_parameters_come_from_their_table():
    """Declared from SIM_PARAMS like the policy node's (ros/params.py): descriptors with the
    table's ranges and read-only flags, command-line integers accepted for doubles."""
    from rclpy.parameter import Parameter

    from reflex_ros.sim.sim_node import SIM_PARAMS, SimNode

    context = rclpy.Context()
    rclpy.init(context=context)
    node = SimNode(context=context, parameter_overrides=[Parameter("actuation_delay_ms", value=80),
                                                         Parameter("image_size", value=96)])
    try:
        assert node.get_parameter("actuation_delay_ms").value == 80.0  # an integer, coerced
        for spec in SIM_PARAMS:
            desc = node.describe_parameter(spec.name)
            assert desc.read_only == (spec.name not in ("actuation_delay_ms", "path_tolerance_rad")), spec.name
            if spec.bounds is not None and spec.kind is float:
                rng = desc.floating_point_range[0]
                assert (rng.from_value, rng.to_value) == spec.bounds
        assert node.set_parameters([Parameter("image_size", value=64)])[0].successful is False  # read-only
        assert node.set_parameters([Parameter("actuation_delay_ms", value=40.0)])[0].successful
        assert node.set_parameters([Parameter("path_tolerance_rad", value=0.2)])[0].successful  # live too
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)
