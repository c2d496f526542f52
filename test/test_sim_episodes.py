"""The sim node's pick task over DDS: ~/reset_episode puts the arm home and the cube at the
seed's pose, drops what was being executed, and ~/episode reports the task's ground truth.

Assertions use the sim's own stamps and poses, never the test's wall clock."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from reflex_ros.msg import EpisodeStatus  # noqa: E402
from reflex_ros.srv import ResetEpisode  # noqa: E402
from test_sim_node import (  # noqa: E402
    STARTUP_TIMEOUT_S,
    Listener,
    make_trajectory,
    positions_of,
    sim_process,
    stamp_ns,
)

from reflex_ros.sim.task import SAMPLING_BOUNDS, sample_cube_xy  # noqa: E402


@pytest.fixture
def listener():
    lis = Listener()
    lis.episodes: list[EpisodeStatus] = []
    lis.node.create_subscription(EpisodeStatus, "/so101_sim/episode", lis.episodes.append, 50)
    lis.reset = lis.node.create_client(ResetEpisode, "/so101_sim/reset_episode")
    yield lis
    lis.close()


def _reset(lis: Listener, sim, seed: int) -> ResetEpisode.Response:
    lis.wait_for(lambda: lis.reset.service_is_ready(), STARTUP_TIMEOUT_S, "~/reset_episode", sim)
    future = lis.reset.call_async(ResetEpisode.Request(seed=seed))
    lis.wait_for(future.done, STARTUP_TIMEOUT_S, f"the reset to seed {seed}", sim)
    return future.result()


def test_reset_puts_the_cube_at_the_seeds_pose_and_drops_the_running_trajectory(listener, tmp_path: Path):
    with sim_process(tmp_path, "camera_rate_hz:=0.0") as sim:
        listener.wait_for(lambda: len(listener.joint_states) >= 20 and listener.episodes, STARTUP_TIMEOUT_S,
                          "joint states and episode status", sim)
        assert listener.episodes[-1].seed == -1  # no reset yet: the scene's own cube pose

        # a slow trajectory far from home, still running when the reset comes
        target = np.array([0.8, -0.6, 0.6, 0.5, -0.8, 0.6])
        listener.traj_pub.publish(make_trajectory(0, [4.0], [target.tolist()]))
        moving_after = stamp_ns(listener.joint_states[-1])
        listener.wait_for(lambda: stamp_ns(listener.joint_states[-1]) > moving_after + 1_000_000_000,
                          STARTUP_TIMEOUT_S, "1 s of motion", sim)
        assert np.abs(positions_of(listener.joint_states[-1])).max() > 0.1  # it did move away from home

        response = _reset(listener, sim, seed=7)
        assert response.success, response.message
        np.testing.assert_allclose(response.cube_xy, sample_cube_xy(7), atol=1e-12)
        assert np.all(SAMPLING_BOUNDS[0] <= response.cube_xy) and np.all(response.cube_xy <= SAMPLING_BOUNDS[1])

        listener.wait_for(lambda: any(e.seed == 7 for e in listener.episodes), STARTUP_TIMEOUT_S,
                          "an episode status of seed 7", sim)
        reset_at = stamp_ns(next(e for e in listener.episodes if e.seed == 7))
        # 2 s after the reset: had the old trajectory survived, the arm would be far from home
        listener.wait_for(lambda: stamp_ns(listener.joint_states[-1]) > reset_at + 2_000_000_000,
                          STARTUP_TIMEOUT_S, "2 s after the reset", sim)
        home = positions_of(listener.joint_states[-1])
        assert np.abs(home).max() < 0.08, f"arm not held at home after the reset: {home}"
        status = listener.episodes[-1]
        assert status.seed == 7 and not status.success and not status.lifted
        assert 1.5 < status.time_s < 30.0  # counted from the reset, not from the sim's start
        np.testing.assert_allclose(status.cube_position[:2], sample_cube_xy(7), atol=0.01)  # resting where put

        bad = _reset(listener, sim, seed=-3)
        assert not bad.success and "seed must be >= 0" in bad.message
        assert sim.alive


def test_a_driver_that_ignores_stamps_starts_a_future_trajectory_on_arrival(listener, tmp_path: Path):
    """ignore_trajectory_stamps: points run at arrival + time_from_start (many arm drivers do
    this); a trajectory stamped 3 s ahead moves the arm at once instead of waiting."""
    with sim_process(tmp_path, "camera_rate_hz:=0.0", "ignore_trajectory_stamps:=true",
                     "defer_future_trajectories:=true") as sim:
        listener.wait_for(lambda: len(listener.joint_states) >= 20, STARTUP_TIMEOUT_S, "joint states", sim)
        now = stamp_ns(listener.joint_states[-1])
        target = np.array([0.5, 0.0, 0.0, 0.0, 0.0, 0.0])
        listener.traj_pub.publish(make_trajectory(now + 3_000_000_000, [0.3], [target.tolist()]))
        listener.wait_for(lambda: stamp_ns(listener.joint_states[-1]) > now + 1_500_000_000, STARTUP_TIMEOUT_S,
                          "1.5 s of sim time", sim)
        assert positions_of(listener.joint_states[-1])[0] > 0.4  # moving long before the stamp
