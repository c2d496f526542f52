"""PlannedChunk -> ROS messages: the reusing builder gives exactly the fresh messages."""

from __future__ import annotations

import numpy as np

from reflex_ros.control.chunking import PlannedChunk
from reflex_ros.ros.messages import TrajectoryBuilder, action_chunk_msg, hold_trajectory_msg, trajectory_msg

NAMES = ["a", "b", "c"]


def _plan(n: int, dt_ns: int, seed: int) -> PlannedChunk:
    rng = np.random.default_rng(seed)
    return PlannedChunk(positions=rng.normal(size=(n, 3)), velocities=rng.normal(size=(n, 3)),
                        stamp_ns=1_700_000_000_123_456_789 + seed, skipped_steps=2, dt_ns=dt_ns)


def _as_tuple(msg):
    return (msg.header.stamp.sec, msg.header.stamp.nanosec, list(msg.joint_names),
            [(list(p.positions), list(p.velocities), p.time_from_start.sec, p.time_from_start.nanosec)
             for p in msg.points])


def test_builder_reuse_matches_fresh_messages_across_shapes_and_rates() -> None:
    builder = TrajectoryBuilder()
    for seed, (n, dt_ns) in enumerate([(48, 20_000_000), (10, 20_000_000), (50, 33_333_333), (3, 1_500_000_000)]):
        plan = _plan(n, dt_ns, seed)
        built = builder.build(plan, NAMES)
        assert _as_tuple(built) == _as_tuple(trajectory_msg(plan, NAMES))
        assert len(built.points) == n
    last = built.points[-1].time_from_start
    assert (last.sec, last.nanosec) == (3, 0)  # 2 * 1.5 s, carried into seconds


def test_action_chunk_and_hold_messages() -> None:
    plan = _plan(4, 20_000_000, 0)
    msg = action_chunk_msg(plan, NAMES, latency_compensation_ms=45.0, inference_ms=3.5, nfe=4, model_hash="abc")
    assert (msg.chunk_size, msg.action_dim, msg.skipped_steps, msg.nfe, msg.model_hash) == (4, 3, 2, 4, "abc")
    np.testing.assert_allclose(np.asarray(msg.data).reshape(4, 3), plan.positions, rtol=1e-6)
    assert (msg.dt.sec, msg.dt.nanosec) == (0, 20_000_000)
    assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == plan.stamp_ns
    hold = hold_trajectory_msg(np.array([0.1, 0.2, 0.3]), NAMES, 20_000_000)
    assert (hold.header.stamp.sec, hold.header.stamp.nanosec) == (0, 0) and len(hold.points) == 1
    assert list(hold.points[0].velocities) == [0.0] * 3


def test_serialized_trajectory_reads_back_as_the_fresh_message() -> None:
    """The control loop publishes patched CDR bytes; a subscriber must get exactly the
    message trajectory_msg builds, for every shape and rate, with the layout reused."""
    from rclpy.serialization import deserialize_message
    from trajectory_msgs.msg import JointTrajectory

    builder = TrajectoryBuilder()
    cases = [(48, 20_000_000), (48, 20_000_000), (10, 20_000_000), (50, 33_333_333), (3, 1_500_000_000), (1, 20_000_000)]
    for seed, (n, dt_ns) in enumerate(cases):
        plan = _plan(n, dt_ns, seed)
        raw = builder.serialized(plan, NAMES)
        assert isinstance(raw, bytes)
        assert _as_tuple(deserialize_message(raw, JointTrajectory)) == _as_tuple(trajectory_msg(plan, NAMES))
    negative = PlannedChunk(positions=-np.ones((2, 3)), velocities=np.zeros((2, 3)), stamp_ns=-1_500_000_000,
                            skipped_steps=0, dt_ns=20_000_000)
    got = deserialize_message(builder.serialized(negative, NAMES, "base"), JointTrajectory)
    assert (got.header.stamp.sec, got.header.stamp.nanosec, got.header.frame_id) == (-2, 500_000_000, "base")
    assert _as_tuple(got) == _as_tuple(trajectory_msg(negative, NAMES))
