"""The node serves a real LeRobot policy (SmolVLA, tiny fixture checkpoint) over DDS.

Cameras map to the checkpoint's image features by name (``camera_names``, parallel to
``camera_topics``); a feature with no topic, an unknown name or a joint count that is not
the policy's state size fails configure with the name in the one log line; with the right
mapping the node publishes chunks for the embodiment's joints. The node is shared by the
module; each test first drives it to the state it needs, so order does not matter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _ros_harness import SO100_JOINTS, unconfigured

from reflex_ros.control.embodiment import load_embodiment
from reflex_ros.engine.bundle import load_bundle
from reflex_ros.ros.runner import NodeProcessError

CAMS = ["/cam/one", "/cam/two"]
KEYS = ["observation.images.camera1", "observation.images.camera2"]
POLICY = {
    "export": "smolvla_export",
    "node": {"autostart": False, "parameters": {"camera_topics": CAMS, "execute_steps": 5,
                                                "instruction": "pick up the cube"}},
    "robot": {"camera_topics": CAMS, "image_size": 48},
}


def limits(n: int) -> dict:
    """The first ``n`` so100 joints with their limits (set together: they must agree in length)."""
    so100 = load_embodiment("so100")
    return {"joint_names": list(SO100_JOINTS[:n]), "position_lower": list(so100.position_lower[:n]),
            "position_upper": list(so100.position_upper[:n]), "max_delta_per_step": list(so100.max_delta_per_step[:n])}


def test_named_cameras_are_required_and_checked(node, robot) -> None:
    unconfigured(node)
    assert robot.set_params(camera_names=[KEYS[0], "observation.images.side"]) == [(True, "")]
    with pytest.raises(NodeProcessError, match=r"camera_names \['observation.images.side'\] are not cameras"):
        node.configure()
    assert robot.set_params(camera_topics=CAMS[:1], camera_names=[KEYS[1]]) == [(True, "")] * 2
    with pytest.raises(NodeProcessError, match=r"\['observation.images.camera1'\] have no topic"):
        node.configure()
    assert robot.set_params(camera_topics=CAMS, camera_names=KEYS) == [(True, "")] * 2
    assert robot.set_params_atomically(**limits(4)) == (True, "")
    with pytest.raises(NodeProcessError, match=r"state has 6 values .*joint_names lists 4"):
        node.configure()
    assert node.state() == "unconfigured"


def test_serves_the_lerobot_export_by_camera_name(node, robot, smolvla_export: Path) -> None:
    unconfigured(node)
    assert robot.set_params(camera_topics=CAMS, camera_names=list(reversed(KEYS))) == [(True, "")] * 2
    assert robot.set_params_atomically(**limits(6)) == (True, "")
    node.configure()
    node.activate()
    try:
        robot.feed(True, rate_hz=30.0)
        chunks = robot.wait_chunks(3, timeout_s=120)
    finally:
        robot.feed(False)
    bundle = load_bundle(smolvla_export)
    so100 = load_embodiment("so100")
    lower, upper = np.asarray(so100.position_lower), np.asarray(so100.position_upper)
    for received in chunks:
        msg = received.msg
        assert msg.model_hash == bundle.model_hash
        assert list(msg.joint_names) == list(SO100_JOINTS) and msg.action_dim == 6
        data = np.asarray(msg.data, dtype=np.float64).reshape(msg.chunk_size, msg.action_dim)
        assert np.isfinite(data).all()
        # the random policy's actions are clamped to the limits (ActionChunk carries float32)
        assert (data >= lower - 1e-6).all() and (data <= upper + 1e-6).all()
