"""Two cameras + joint state through the approximate-time sync, on a real 2-camera export.

The node is shared by the module (conftest's ``policy``); ``quiet_robot`` resets the feed
before every test, so the order of the tests does not matter.
"""

from __future__ import annotations

import pytest
from _ros_harness import RosHarness, stamp_ns, wait_for

CAMERAS = ["/cam/front/image_raw", "/cam/wrist/image_raw"]
MS = 1_000_000
DT_NS = 33_333_333
POLICY = {"export": "tiny_export_2cam", "robot": {"camera_topics": CAMERAS},
          "node": {"node_name": "reflex_policy_2cam",
                   "parameters": {"execute_steps": 3, "camera_topics": CAMERAS, "sync_slop_ms": 25.0}}}


@pytest.fixture(autouse=True)
def quiet_robot(robot: RosHarness) -> None:
    robot.feed(False, rate_hz=30.0)
    robot.feeder.camera_offsets_ns = [0, 0]


def test_offset_cameras_within_slop_sync_and_stamp_from_the_newest(node, robot) -> None:
    robot.feeder.camera_offsets_ns = [-4 * MS, 3 * MS]
    robot.feed(True, rate_hz=30.0)
    for r in robot.wait_chunks(4, timeout_s=90):
        obs_stamp = stamp_ns(r.msg.header.stamp) - r.msg.skipped_steps * DT_NS
        # the set's stamp is its newest member: the wrist camera, 3 ms after the joint state
        assert obs_stamp - 3 * MS in set(robot.feeder.published_stamps)
    robot.feed(False)


def test_cameras_beyond_slop_never_form_an_observation(node, robot) -> None:
    robot.feed(True)  # in sync first: the node has a set, which then ages out (the watchdog says so)
    robot.wait_chunks(1, timeout_s=90)
    robot.feed(False)
    robot.feeder.camera_offsets_ns = [0, 60 * MS]  # wrist frames 60 ms off: outside the 25 ms slop
    robot.feeder.rate_hz = 5.0  # sparse, so a wrist frame never lands near another tick's frame
    before = wait_for(lambda: (d := robot.latest_diagnostics(after_ns=robot.now_ns())) and
                      d["_message"].startswith("stale") and d, 60, "the watchdog to flag stale data")
    robot.feed(True)
    later = wait_for(lambda: (d := robot.latest_diagnostics(after_ns=robot.now_ns())) and
                     int(d["no_observation_cycles"]) + int(d["stale_observations"]) >
                     int(before["no_observation_cycles"]) + int(before["stale_observations"]) + 5 and d,
                     60, "cycles without a synchronized observation")
    assert int(later["chunks_published"]) == int(before["chunks_published"])
    robot.feed(False)
    robot.feeder.camera_offsets_ns = [0, 0]
    robot.feeder.rate_hz = 30.0
    robot.feed(True)  # back in sync: chunks again
    robot.wait_chunks(2, timeout_s=90)
