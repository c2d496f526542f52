"""`reflex-ros demo --record`: rclpy messages become rosbags messages field for field, so the
bytes written are exactly what rclpy itself reads back (and rosbags, which refuses the trailing
bytes rclpy's own raw buffers carry)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rclpy")
from builtin_interfaces.msg import Duration  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue  # noqa: E402
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from reflex_ros.msg import ActionChunk, EpisodeStatus  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402

from reflex_ros.apps.demo_record import to_rosbags, typestore  # noqa: E402


def _messages():
    traj = JointTrajectory(joint_names=["a", "b"])
    traj.header.stamp.sec, traj.header.stamp.nanosec = 1796000000, 123
    traj.points = [JointTrajectoryPoint(positions=[0.1 * i, -0.2], velocities=[0.5, 0.25],
                                        time_from_start=Duration(sec=0, nanosec=33_333_333 * i)) for i in range(48)]
    image = Image(height=2, width=3, encoding="rgb8", step=9, data=bytes(range(18)))
    joints = JointState(name=["a", "b"], position=[0.1, 0.2], velocity=[0.0, 1.0], effort=[])
    diag = DiagnosticArray(status=[DiagnosticStatus(level=DiagnosticStatus.WARN, name="reflex_policy: loop",
                                                    message="held", values=[KeyValue(key="held", value="true")])])
    chunk = ActionChunk(joint_names=["a", "b"], chunk_size=2, action_dim=2, data=[0.5, -0.5, 0.25, 1.0],
                        skipped_steps=3, latency_compensation_ms=95.5, inference_ms=8.25, nfe=10, model_hash="abc")
    episode = EpisodeStatus(seed=7, time_s=4.5, lifted=True, success=False, cube_position=[0.3, -0.05, 0.06])
    return [("trajectory_msgs/msg/JointTrajectory", traj), ("sensor_msgs/msg/Image", image),
            ("sensor_msgs/msg/JointState", joints), ("diagnostic_msgs/msg/DiagnosticArray", diag),
            ("reflex_ros/msg/ActionChunk", chunk), ("reflex_ros/msg/EpisodeStatus", episode)]


@pytest.mark.parametrize("ros_type,msg", _messages(), ids=[t for t, _ in _messages()])
def test_a_recorded_message_reads_back_equal_with_rclpy_and_rosbags(ros_type, msg):
    store = typestore()
    data = bytes(store.serialize_cdr(to_rosbags(msg, store), ros_type))
    assert deserialize_message(data, type(msg)) == msg
    back = store.deserialize_cdr(data, ros_type)  # strict: raises on any size mismatch
    assert back.__msgtype__ == ros_type


def test_rclpy_buffers_carry_trailing_bytes_that_rosbags_refuses():
    """Why the recorder re-serializes: if this starts passing, raw subscriptions could be
    stored as they come."""
    _, traj = _messages()[0]
    store = typestore()
    raw = serialize_message(traj)
    exact = bytes(store.serialize_cdr(to_rosbags(traj, store), "trajectory_msgs/msg/JointTrajectory"))
    assert len(raw) > len(exact)
    with pytest.raises(Exception, match="size mismatch"):
        store.deserialize_cdr(raw, "trajectory_msgs/msg/JointTrajectory")


def test_fixed_and_byte_arrays_keep_their_values():
    store = typestore()
    _, episode = _messages()[5]
    converted = to_rosbags(episode, store)
    np.testing.assert_array_equal(converted.cube_position, [0.3, -0.05, 0.06])
    _, image = _messages()[1]
    assert to_rosbags(image, store).data.tobytes() == bytes(range(18))
