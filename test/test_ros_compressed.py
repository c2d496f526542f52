"""CompressedImage cameras end to end over DDS: a 640x480 JPEG or PNG stream on a ``.../compressed``
topic (``camera_message_type`` auto), joint states, the policy node in its own process.

Covers: JPEG and PNG frames become observations (chunks stamped from those frames' stamps);
a corrupt JPEG is a dropped message whose error names the topic (node log and /diagnostics),
and the node publishes again once good frames return; /diagnostics reports each input's
rate and newest age, and a starving camera is WARN.

The node is shared by the module (conftest's ``policy``); ``quiet`` stops every feed before
each test, so the order of the tests does not matter.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from _ros_harness import SO100_JOINTS, RosHarness, joint_state, stamp_ns, wait_for
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage

from reflex_ros.control.inputs.compressed import encode_image, image_transport_format
from reflex_ros.ros.messages import time_msg

TOPIC = "/camera/front/image_raw/compressed"
DT_NS = 33_333_333
POLICY = {"robot": {"camera_topics": []},
          "node": {"node_name": "reflex_policy_jpeg", "parameters": {"execute_steps": 3, "camera_topics": [TOPIC]}}}


def _frame(seed: int) -> np.ndarray:
    """A 640x480 camera-like picture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:480, 0:640]
    base = np.stack([(x + seed) % 256, y % 256, ((x + y) // 2) % 256], axis=-1)
    return np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)


class CompressedFeed:
    """Joint states + CompressedImage frames with one stamp each, like a driver, at ``rate_hz``."""

    def __init__(self, robot: RosHarness) -> None:
        self.robot = robot
        self.pub = robot.node.create_publisher(CompressedImage, TOPIC, qos_profile_sensor_data)
        self.payloads: list[bytes] = []
        self.fmt = ""
        self.rate_hz = 15.0
        self.camera_every = 1  # publish a frame with every n-th joint state
        self.stamps: list[int] = []  # stamps of the frames sent
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, codec: str, payloads: list[bytes], rate_hz: float = 15.0, camera_every: int = 1) -> None:
        self.stop()
        self.stamps = []
        self.fmt, self.payloads, self.rate_hz, self.camera_every = image_transport_format(codec), payloads, rate_hz, camera_every
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        k = 0
        while not self._stop.is_set():
            stamp = self.robot.now_ns()
            self.robot.joint_pub.publish(joint_state(stamp, SO100_JOINTS, [0.0] * 6))
            if k % self.camera_every == 0:
                msg = CompressedImage(format=self.fmt)
                msg.header.stamp = time_msg(stamp)
                msg.data = self.payloads[(k // self.camera_every) % len(self.payloads)]
                self.stamps.append(stamp)
                self.pub.publish(msg)
            k += 1
            self._stop.wait(1.0 / self.rate_hz)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


@pytest.fixture(scope="module")
def feed(robot: RosHarness):
    f = CompressedFeed(robot)
    yield f
    f.stop()


@pytest.fixture(autouse=True)
def quiet(robot: RosHarness, feed: CompressedFeed) -> None:
    robot.feed(False)
    feed.stop()


def _wait_stamped(robot: RosHarness, feed: CompressedFeed, n: int) -> list:
    """``n`` chunks (from now on) whose observation stamp is a frame the feed sent."""
    start = robot.chunk_count()

    def found():
        sent = set(feed.stamps)
        with robot.lock:
            hits = [r.msg for r in robot.chunks[start:]
                    if stamp_ns(r.msg.header.stamp) - r.msg.skipped_steps * DT_NS in sent]
        return hits if len(hits) >= n else None
    return wait_for(found, 90, f"{n} chunks from the compressed frames")


@pytest.mark.parametrize("codec", ["jpeg", "png"])
def test_compressed_frames_become_observations(node, robot, feed: CompressedFeed, codec: str) -> None:
    feed.start(codec, [encode_image(_frame(seed), codec) for seed in range(3)], rate_hz=15.0)
    for chunk in _wait_stamped(robot, feed, 3):
        assert list(chunk.joint_names) == SO100_JOINTS and chunk.chunk_size > 0
    diag = robot.latest_diagnostics(after_ns=robot.now_ns())
    assert int(diag[f"input {TOPIC} received"]) >= 3 and float(diag[f"input {TOPIC} rate_hz"]) > 0
    assert diag[f"input {TOPIC} age_ms"] != "n/a" and float(diag["input /joint_states rate_hz"]) > 0
    assert "corrupt" not in diag["last_error"]


def test_a_corrupt_jpeg_is_a_dropped_message_naming_the_topic(node, robot, feed: CompressedFeed) -> None:
    good = encode_image(_frame(7), "jpeg")
    truncated = good[: int(len(good) * 0.8)]  # header intact: only decoding finds it
    before = robot.latest_diagnostics(after_ns=robot.now_ns())
    mark = len(node.lines)
    feed.start("jpeg", [truncated], rate_hz=15.0)
    line = node.wait_for_log("dropped message", timeout_s=90, start=mark)
    assert line is not None and f"dropped message: {TOPIC}: corrupt JPEG payload ({len(truncated)} bytes)" in line
    diag = wait_for(lambda: (d := robot.latest_diagnostics(after_ns=robot.now_ns())) and
                    int(d["dropped_messages"]) > int(before["dropped_messages"]) and d, 60, "dropped_messages to count")
    assert diag["last_error"].startswith(f"{TOPIC}: corrupt JPEG payload")
    sent = set(feed.stamps)
    with robot.lock:
        assert not [r for r in robot.chunks if stamp_ns(r.msg.header.stamp) - r.msg.skipped_steps * DT_NS in sent]
    feed.start("jpeg", [good], rate_hz=15.0)  # good frames again: chunks again
    _wait_stamped(robot, feed, 2)


def test_a_starving_camera_is_warn_in_diagnostics(node, robot, feed: CompressedFeed) -> None:
    """Joint states at 15 Hz, a frame with every 15th: a 1 Hz camera against the 500 ms watchdog."""
    feed.start("jpeg", [encode_image(_frame(3), "jpeg")], rate_hz=15.0, camera_every=15)
    diag = wait_for(lambda: (d := robot.latest_diagnostics(after_ns=robot.now_ns())) and
                    d["_message"].startswith("input starving") and d, 60, "an input-starving WARN")
    assert diag["_level"] == 1 and TOPIC in diag["_message"] and "/joint_states" not in diag["_message"]
    assert float(diag[f"input {TOPIC} rate_hz"]) < float(diag["input /joint_states rate_hz"])
