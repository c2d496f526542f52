"""sensor_msgs/CompressedImage input (control/inputs/compressed.py): JPEG and PNG by image_transport's
format field, rclpy and rosbags messages alike, corrupt payloads refused naming the topic; the
per-topic type choice; the observation assembler with compressed cameras; per-input rates."""

from __future__ import annotations

import io

import numpy as np
import pytest
from _ros_harness import joint_state
from sensor_msgs.msg import CompressedImage

from reflex_ros.control.input_rates import InputRates, input_report
from reflex_ros.control.inputs import (
    AUTO_CAMERA_TYPE,
    CAMERA_DECODERS,
    CAMERA_TYPE_CHOICES,
    camera_decoder,
    camera_type_for,
)
from reflex_ros.control.inputs.compressed import codec_of, encode_image, image_transport_format
from reflex_ros.control.observation import ObservationAssembler
from reflex_ros.control.stamps import ns_to_sec_nanosec
from reflex_ros.engine.types import ObservationError

COMPRESSED = camera_decoder("sensor_msgs/msg/CompressedImage")
MS = 1_000_000
T0 = 1_000_000 * MS


def _scene(h: int = 48, w: int = 64) -> np.ndarray:
    """Smooth colour gradients (JPEG keeps them within a few levels)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x * 4) % 256, (y * 5) % 256, (x + y) % 256], axis=-1).astype(np.uint8)


def _msg(payload: bytes, fmt: str, stamp: int = T0) -> CompressedImage:
    msg = CompressedImage(format=fmt)
    msg.data = payload
    msg.header.stamp.sec, msg.header.stamp.nanosec = ns_to_sec_nanosec(stamp)
    return msg


@pytest.mark.parametrize("fmt", ["rgb8; jpeg compressed bgr8", "bgr8; jpeg compressed bgr8", "jpeg", "JPG", ""])
def test_jpeg_decodes_to_rgb_at_its_own_size(fmt: str) -> None:
    rgb = _scene(48, 64)
    msg = _msg(encode_image(rgb, "jpeg", quality=95), fmt)
    COMPRESSED.check(msg, "/cam/compressed")
    out = COMPRESSED.decode(msg, "/cam/compressed")
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb).mean() < 3  # lossy, but the same picture in RGB order
    assert np.abs(out.astype(int) - rgb[:, :, ::-1]).mean() > 20  # and not BGR


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_png_decodes_losslessly_to_rgb(mode: str) -> None:
    from PIL import Image

    rgb = _scene(30, 20)
    im = Image.fromarray(rgb).convert(mode)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    msg = _msg(buf.getvalue(), image_transport_format("png", "bgr8"))
    COMPRESSED.check(msg, "/cam")
    out = COMPRESSED.decode(msg, "/cam")
    np.testing.assert_array_equal(out, np.asarray(im.convert("RGB")))
    if mode in ("RGB", "RGBA"):
        np.testing.assert_array_equal(out, rgb)


def test_rosbags_compressed_messages_decode_like_rclpy() -> None:
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    CompressedT = store.types["sensor_msgs/msg/CompressedImage"]
    HeaderT, TimeT = store.types["std_msgs/msg/Header"], store.types["builtin_interfaces/msg/Time"]
    rgb = _scene()
    for codec in ("jpeg", "png"):
        payload = encode_image(rgb, codec)
        bag_msg = CompressedT(header=HeaderT(stamp=TimeT(sec=1, nanosec=2), frame_id="cam"),
                              format=image_transport_format(codec), data=np.frombuffer(payload, np.uint8).copy())
        np.testing.assert_array_equal(COMPRESSED.decode(bag_msg, "/bag/cam/compressed"),
                                      COMPRESSED.decode(_msg(payload, image_transport_format(codec)), "/cam"))


def test_corrupt_payloads_name_the_topic() -> None:
    jpeg = encode_image(_scene(240, 320), "jpeg")
    truncated = _msg(jpeg[: int(len(jpeg) * 0.8)], "jpeg")
    COMPRESSED.check(truncated, "/cam/front/compressed")  # the header is intact: found at decode
    with pytest.raises(ObservationError, match=r"^/cam/front/compressed: corrupt JPEG payload \(\d+ bytes\)"):
        COMPRESSED.decode(truncated, "/cam/front/compressed")
    with pytest.raises(ObservationError, match=r"/cam: corrupt JPEG payload .*JPEG signature"):
        COMPRESSED.check(_msg(bytes(64), "rgb8; jpeg compressed bgr8"), "/cam")
    with pytest.raises(ObservationError, match=r"/cam: corrupt PNG payload"):
        COMPRESSED.check(_msg(jpeg, "png"), "/cam")
    with pytest.raises(ObservationError, match=r"/cam: empty CompressedImage payload"):
        COMPRESSED.check(_msg(b"", "jpeg"), "/cam")
    with pytest.raises(ObservationError, match=r"/cam: unsupported CompressedImage format '16UC1; compressedDepth'"):
        COMPRESSED.check(_msg(jpeg, "16UC1; compressedDepth"), "/cam")
    png = encode_image(_scene(), "png")
    corrupt_png = png[:40] + bytes(len(png) - 40)
    COMPRESSED.check(_msg(corrupt_png, "png"), "/cam")
    with pytest.raises(ObservationError, match=r"/cam: corrupt PNG payload"):
        COMPRESSED.decode(_msg(corrupt_png, "png"), "/cam")


def test_sixteen_bit_png_is_refused_in_the_callback() -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((4, 6), 1000, np.uint16)).save(buf, format="PNG")
    with pytest.raises(ObservationError, match=r"/depth: 16-bit PNG \(6x4\)"):
        COMPRESSED.check(_msg(buf.getvalue(), "16UC1; png compressed mono16"), "/depth")


def test_codec_from_format_or_signature() -> None:
    jpeg, png = encode_image(_scene(), "jpeg"), encode_image(_scene(), "png")
    assert codec_of("rgb8; jpeg compressed bgr8", png) == "jpeg"  # the field decides when it names one
    assert codec_of("bgr8; png compressed bgr8", jpeg) == "png"
    assert (codec_of("", jpeg), codec_of("", png), codec_of("", bytes(8))) == ("jpeg", "png", None)


def test_topic_type_auto_and_explicit() -> None:
    assert AUTO_CAMERA_TYPE in CAMERA_TYPE_CHOICES and set(CAMERA_DECODERS) < set(CAMERA_TYPE_CHOICES)
    assert camera_type_for("/camera/front/image_raw/compressed") == "sensor_msgs/msg/CompressedImage"
    assert camera_type_for("/camera/front/image_raw") == "sensor_msgs/msg/Image"
    assert camera_type_for("/cam/jpeg", "sensor_msgs/msg/CompressedImage") == "sensor_msgs/msg/CompressedImage"
    assert camera_type_for("/x/compressed", "sensor_msgs/msg/Image") == "sensor_msgs/msg/Image"


def test_assembler_mixes_raw_and_compressed_and_drops_a_corrupt_frame() -> None:
    from _ros_harness import rgb_image

    cams = ["/cam/front/image_raw", "/cam/wrist/image_raw/compressed"]
    asm = ObservationAssembler(cams, ["a"], joint_topic="/joints")  # auto: one raw, one compressed
    assert asm.camera_types == {cams[0]: "sensor_msgs/msg/Image", cams[1]: "sensor_msgs/msg/CompressedImage"}
    wrist = _scene(120, 160)
    jpeg = encode_image(wrist, "jpeg", quality=95)
    for k in range(2):
        t = T0 + k * 40 * MS
        asm.offer_joint_state(joint_state(t, ["a"], [0.0]), arrival_ns=t + MS)
        asm.offer_camera(cams[0], rgb_image(t, 8), arrival_ns=t + MS)
        payload = jpeg if k == 0 else jpeg[: int(len(jpeg) * 0.8)]  # the newer frame is truncated
        asm.offer_camera(cams[1], _msg(payload, "rgb8; jpeg compressed bgr8", t), arrival_ns=t + MS)
    assembled, rejected = asm.assemble(slop_ns=5 * MS, instruction="")
    assert [topic for topic, _ in rejected] == [cams[1]]
    assert "corrupt JPEG payload" in str(rejected[0][1]) and str(rejected[0][1]).startswith(cams[1])
    assert assembled is not None and assembled.stamp_ns == T0  # the older, intact set
    front, wrist_out = assembled.observation.images
    assert front.shape == (8, 8, 3) and wrist_out.shape == (120, 160, 3)
    assert np.abs(wrist_out.astype(int) - wrist).mean() < 6


def test_input_rates_and_a_starving_input_before_the_watchdog() -> None:
    rates = InputRates(["/cam", "/joints"])
    now = T0 + 4000 * MS
    for k in reversed(range(121)):  # 30 Hz camera for 4 s, oldest first, newest 5 ms before now
        t = now - 5 * MS - int(k * 1000 / 30) * MS
        rates.received("/cam", t)
        rates.accepted("/cam", t - 2 * MS)
    problems, values = input_report(rates, now, max_observation_age_ms=500.0)
    assert float(values["input /cam rate_hz"]) == pytest.approx(30.0, abs=1.0) and float(values["input /cam age_ms"]) == 7
    assert values["input /cam received"] == "121"
    assert problems == ["/joints: no message yet"] and values["input /joints age_ms"] == "n/a"
    # a 1 Hz joint state: WARN at once, even right after a message arrived (long before a 500 ms watchdog)
    for k in reversed(range(4)):
        rates.received("/joints", now - k * 1000 * MS)
        rates.accepted("/joints", now - k * 1000 * MS)
    problems, values = input_report(rates, now, max_observation_age_ms=500.0)
    assert len(problems) == 1 and problems[0].startswith("/joints: 1.0 Hz, messages ~1000 ms apart")
    # an input that stopped: its newest message ages past half the watchdog
    problems, _ = input_report(rates, now + 300 * MS, max_observation_age_ms=500.0)
    assert any(p.startswith("/cam: newest message 307 ms old") for p in problems)
