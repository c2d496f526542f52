"""An engine that fails mid-run (a GPU falling off the bus) sends the node through error
processing to unconfigured; the process lives on and a new configure brings it back.

A real accelerator fault cannot be provoked on this CPU machine, so the real ONNX engine is
wrapped by a device simulator that, once tripped, raises what a lost CUDA device raises. The
node runs in this process (the fault has to be injected into it), spun by its own executor.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import rclpy
from _ros_harness import SO100_JOINTS, joint_state, rgb_image, wait_for
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory

from reflex_ros.ros.policy_node import PolicyNode


class FlakyDevice:
    """The real engine until ``trip()``; then every call fails like a lost CUDA device."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.info = engine.info
        self.tripped = threading.Event()
        self.calls_after_trip = 0
        self.closed = False

    def trip(self) -> None:
        self.tripped.set()

    def infer(self, obs, **kwargs):
        if self.tripped.is_set():
            self.calls_after_trip += 1
            raise RuntimeError("CUDA error: an illegal memory access was encountered (device lost)")
        return self.engine.infer(obs, **kwargs)

    def close(self) -> None:
        self.closed = True
        self.engine.close()


@pytest.fixture()
def ros(tiny_export: Path):
    ctx = Context()
    rclpy.init(context=ctx, signal_handler_options=SignalHandlerOptions.NO)
    node = PolicyNode("reflex_policy_fault", context=ctx, parameter_overrides=[
        Parameter("export_dir", value=str(tiny_export)), Parameter("embodiment", value="so100"),
        Parameter("execute_steps", value=2)])
    robot = rclpy.create_node("reflex_fault_robot", context=ctx)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    executor.add_node(robot)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    try:
        yield node, robot
    finally:
        executor.shutdown()
        node.destroy_node()
        robot.destroy_node()
        rclpy.try_shutdown(context=ctx)
        spin.join(timeout=10)


def _state(robot, node: PolicyNode) -> str:
    """The node's lifecycle state from its get_state service, as any other process sees it."""
    from lifecycle_msgs.srv import GetState

    client = robot.create_client(GetState, f"{node.get_fully_qualified_name()}/get_state")
    try:
        wait_for(lambda: client.wait_for_service(timeout_sec=0.1), 30, "the get_state service")
        future = client.call_async(GetState.Request())
        wait_for(future.done, 30, "get_state to answer")
        return future.result().current_state.label
    finally:
        robot.destroy_client(client)


def test_engine_failure_goes_through_error_processing_and_recovers(ros) -> None:
    node, robot = ros
    cam = robot.create_publisher(Image, "/camera/front/image_raw", qos_profile_sensor_data)
    joints = robot.create_publisher(JointState, "/joint_states", QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    trajectories: list[JointTrajectory] = []
    robot.create_subscription(JointTrajectory, "/reflex_policy_fault/joint_trajectory", trajectories.append, 50)
    stop = threading.Event()

    def feed() -> None:
        while not stop.wait(1 / 30):
            now = robot.get_clock().now().nanoseconds
            joints.publish(joint_state(now, SO100_JOINTS, [0.05] * 6))
            cam.publish(rgb_image(now))

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        wait_for(lambda: node.stats.chunks_published >= 3, 60, "chunks before the fault")
        loop = node._loop
        device = FlakyDevice(loop.engine)
        loop.engine = device  # fault injection: the device the engine runs on fails
        device.trip()
        wait_for(lambda: _state(robot, node) == "unconfigured", 60, "error processing to end in unconfigured")
        assert device.calls_after_trip == 1  # the loop stopped at the first failure
        assert node.stats.engine_errors == 1
        assert "engine failed: RuntimeError: CUDA error" in node.stats.last_error
        assert node._loop is None and device.closed  # released by error processing
        hold = [t for t in trajectories if len(t.points) == 1 and t.header.stamp.sec == 0]
        assert hold and list(hold[-1].points[0].positions) == pytest.approx([0.05] * 6)

        # recoverable: configure again loads a fresh engine and chunks flow
        published = node.stats.chunks_published
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert _state(robot, node) == "inactive"
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        wait_for(lambda: node.stats.chunks_published >= published + 3, 60, "chunks after recovery")
        assert _state(robot, node) == "active"
    finally:
        stop.set()
        feeder.join(timeout=10)
