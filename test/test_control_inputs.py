"""Input decoders (control/inputs): real rclpy messages and rosbags-deserialized ones through
the same code; the registry by message type; stamps."""

from __future__ import annotations

import numpy as np
import pytest
from sensor_msgs.msg import Image, JointState

from reflex_ros.control.inputs import (
    CAMERA_DECODERS,
    DEFAULT_CAMERA_TYPE,
    camera_decoder,
    joint_state_to_vector,
)
from reflex_ros.control.stamps import ns_to_sec_nanosec, stamp_to_ns
from reflex_ros.engine.types import ObservationError

IMAGE = camera_decoder("sensor_msgs/msg/Image")

RNG = np.random.default_rng(0)


def _image(pixels: np.ndarray, encoding: str, pad: int = 0) -> Image:
    """An rclpy Image with ``pad`` bytes of row padding after each row."""
    h, w = pixels.shape[:2]
    c = 1 if pixels.ndim == 2 else pixels.shape[2]
    rows = pixels.reshape(h, w * c)
    padded = np.concatenate([rows, np.full((h, pad), 77, np.uint8)], axis=1)
    msg = Image(height=h, width=w, encoding=encoding, step=w * c + pad)
    msg.data = padded.tobytes()
    return msg


@pytest.mark.parametrize("pad", [0, 5])
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"])
def test_every_encoding_decodes_to_rgb(encoding: str, pad: int) -> None:
    rgb = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    alpha = np.full((5, 7, 1), 9, np.uint8)
    src = {
        "rgb8": rgb,
        "bgr8": rgb[:, :, ::-1],
        "rgba8": np.concatenate([rgb, alpha], axis=2),
        "bgra8": np.concatenate([rgb[:, :, ::-1], alpha], axis=2),
        "mono8": rgb[:, :, 0],
    }[encoding]
    expect = rgb if encoding != "mono8" else np.repeat(rgb[:, :, :1], 3, axis=2)
    msg = _image(np.ascontiguousarray(src), encoding, pad)
    IMAGE.check(msg, "/cam")
    decoded = IMAGE.decode(msg, "/cam")  # the camera's own 5x7: resizing is not the decoder's job
    assert decoded.shape == (5, 7, 3) and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, expect)


def test_unsupported_encoding_names_topic_and_encoding() -> None:
    msg = _image(np.zeros((4, 4), np.uint16).view(np.uint8).reshape(4, 8), "mono8")
    msg.encoding = "mono16"
    with pytest.raises(ObservationError, match=r"/wrist/image_raw.*mono16"):
        IMAGE.check(msg, "/wrist/image_raw")


def test_data_length_mismatch_names_expected_length() -> None:
    msg = _image(np.zeros((4, 4, 3), np.uint8), "rgb8")
    msg.data = bytes(47)
    with pytest.raises(ObservationError, match=r"/cam.*rgb8.*47 bytes, expected 48"):
        IMAGE.check(msg, "/cam")
    with pytest.raises(ObservationError, match=r"47 bytes, expected 48"):
        IMAGE.decode(msg, "/cam")  # decode never trusts a payload it did not check
    msg = _image(np.zeros((4, 4, 3), np.uint8), "rgb8")
    msg.step = 10
    with pytest.raises(ObservationError, match="step 10"):
        IMAGE.check(msg, "/cam")


def test_camera_decoders_are_registered_by_message_type() -> None:
    from reflex_ros.control.params import SPECS

    assert DEFAULT_CAMERA_TYPE == "sensor_msgs/msg/Image" and CAMERA_DECODERS[DEFAULT_CAMERA_TYPE] is IMAGE
    assert all(decoder.msg_type == name for name, decoder in CAMERA_DECODERS.items())
    assert SPECS["camera_message_type"].choices == ("auto", *CAMERA_DECODERS)  # the parameter offers every entry
    assert SPECS["camera_message_type"].default == "auto"
    with pytest.raises(KeyError, match="sensor_msgs/msg/Image"):
        camera_decoder("sensor_msgs/msg/Foo")


def test_rosbags_messages_decode_like_rclpy() -> None:
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    ImageT = store.types["sensor_msgs/msg/Image"]
    HeaderT = store.types["std_msgs/msg/Header"]
    TimeT = store.types["builtin_interfaces/msg/Time"]
    JointStateT = store.types["sensor_msgs/msg/JointState"]
    rgb = RNG.integers(0, 256, (3, 3, 3), dtype=np.uint8)
    header = HeaderT(stamp=TimeT(sec=12, nanosec=345), frame_id="cam")
    img = ImageT(header=header, height=3, width=3, encoding="bgr8", is_bigendian=0, step=9,
                 data=rgb[:, :, ::-1].reshape(-1).copy())
    np.testing.assert_array_equal(IMAGE.decode(img, "/bag/cam"), rgb)
    assert stamp_to_ns(img.header.stamp) == 12_000_000_345
    js = JointStateT(header=header, name=["b", "a"], position=np.array([2.0, 1.0]),
                     velocity=np.array([]), effort=np.array([]))
    np.testing.assert_array_equal(joint_state_to_vector(js, ["a", "b"]), [1.0, 2.0])


def test_joint_state_by_name_not_index() -> None:
    msg = JointState(name=["wrist", "extra", "shoulder", "elbow"], position=[3.0, 9.0, 1.0, 2.0])
    vec = joint_state_to_vector(msg, ["shoulder", "elbow", "wrist"])
    assert vec.dtype == np.float32
    np.testing.assert_array_equal(vec, [1.0, 2.0, 3.0])


def test_joint_state_missing_joint_names_it_and_lists_available() -> None:
    msg = JointState(name=["a", "b"], position=[0.0, 0.0])
    with pytest.raises(ObservationError, match=r"/joint_states.*'gripper'.*\['a', 'b'\]"):
        joint_state_to_vector(msg, ["a", "gripper"], "/joint_states")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_joint_state_non_finite_names_the_joint(bad: float) -> None:
    msg = JointState(name=["a", "elbow"], position=[0.0, bad])
    with pytest.raises(ObservationError, match="'elbow'"):
        joint_state_to_vector(msg, ["a", "elbow"])


def test_joint_state_name_position_length_mismatch() -> None:
    msg = JointState(name=["a", "b"], position=[0.0])
    with pytest.raises(ObservationError, match="2 names but 1 positions"):
        joint_state_to_vector(msg, ["a"])


@pytest.mark.parametrize("ns", [0, 1, 999_999_999, 1_000_000_000, 1_700_000_000_123_456_789, -1])
def test_stamp_round_trip(ns: int) -> None:
    from builtin_interfaces.msg import Time

    sec, nanosec = ns_to_sec_nanosec(ns)
    assert 0 <= nanosec < 1_000_000_000
    if ns >= 0:
        assert stamp_to_ns(Time(sec=sec, nanosec=nanosec)) == ns
    else:
        assert sec * 1_000_000_000 + nanosec == ns


def test_ros_free_modules_do_not_import_rclpy() -> None:
    """Bag replay and the calibrator use these without a ROS installation."""
    import subprocess
    import sys

    code = ("import sys; import reflex_ros.control.inputs, reflex_ros.control.observation, reflex_ros.control.loop, "
            "reflex_ros.control.stats, reflex_ros.control.params, reflex_ros.control.jtc, reflex_ros.control.strategies, "
            "reflex_ros.control.embodiment, reflex_ros.calibration.live, reflex_ros.replay.bag_reader, "
            "reflex_ros.apps.calibrate, reflex_ros.apps.loop_report, reflex_ros.ros.runner, reflex_ros.ros.process; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('rclpy', 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_joint_state_cached_index_follows_a_changed_name_order() -> None:
    joints = ["shoulder", "elbow"]
    first = JointState(name=["shoulder", "elbow"], position=[1.0, 2.0])
    np.testing.assert_array_equal(joint_state_to_vector(first, joints), [1.0, 2.0])
    reordered = JointState(name=["elbow", "x", "shoulder"], position=[5.0, 0.0, 4.0])
    np.testing.assert_array_equal(joint_state_to_vector(reordered, joints), [4.0, 5.0])
    np.testing.assert_array_equal(joint_state_to_vector(first, joints), [1.0, 2.0])
    with pytest.raises(ObservationError, match="'elbow' position is nan"):
        joint_state_to_vector(JointState(name=["elbow", "shoulder"], position=[float("nan"), 0.0]), joints)


@pytest.mark.parametrize("names", [["a", "elbow", "a"], ["a", "elbow", "extra", "extra"]])
def test_joint_state_with_a_duplicated_name_is_refused_naming_it(names: list[str]) -> None:
    """Issue 13 item 2: the last value used to win silently (also for joints the policy
    does not drive: which value is the joint's is unknowable)."""
    duplicated = [n for n in names if names.count(n) > 1][0]
    msg = JointState(name=names, position=[0.1 * i for i in range(len(names))])
    with pytest.raises(ObservationError, match=rf"/joint_states: JointState lists joint\(s\) \['{duplicated}'\] "
                                               "more than once; message refused"):
        joint_state_to_vector(msg, ["a", "elbow"], "/joint_states")


@pytest.mark.parametrize("value", [1e300, -1e300, 1e30, 3.5e38, 1e7])
def test_joint_state_value_beyond_any_range_names_the_joint_and_the_value(value: float) -> None:
    """Issue 13 items 1 and 12: a finite glitch (1e300 overflows float32 to inf) never reaches
    the model, and the message names the joint and the value it was given."""
    msg = JointState(name=["a", "elbow"], position=[0.0, value])
    with pytest.raises(ObservationError) as info:
        joint_state_to_vector(msg, ["a", "elbow"], "/joint_states")
    text = str(info.value)
    assert "'elbow'" in text and f"{value:g}" in text and "inf" not in text and "sensor glitch" in text
