"""Bag replay calibration on real bag files written with rosbags (sqlite3 and MCAP).

The synthetic recording is a 50 Hz arm (the franka preset) whose joint states follow the
commanded trajectories with an injected 80 ms actuation lag, a constant 0.02 rad offset and
encoder noise; the recorded action chunks carry a 30 ms observation-to-publish latency.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from reflex_ros.apps import calibrate as calibrate_cli
from reflex_ros.calibration.actuation_lag import estimate_actuation_lag_ms
from reflex_ros.control.embodiment import load_embodiment
from reflex_ros.control.inputs.compressed import encode_image, image_transport_format
from reflex_ros.control.jtc import commanded_series
from reflex_ros.control.stamps import ns_to_sec_nanosec
from reflex_ros.replay.bag_reader import BagError, default_typestore, read_bag

REPO = Path(__file__).resolve().parent.parent
CONTROL_HZ = 50.0
DT_NS = int(1e9 / CONTROL_HZ)
INJECTED_LAG_MS = 80.0
OBS_TO_PUBLISH_MS = 30.0
OFFSET_RAD = 0.02
T0_NS = 1_700_000_000_000_000_000
CAMERA = "/camera/front/image_raw"
TRAJ = "/reflex_policy/joint_trajectory"
CHUNKS = "/reflex_policy/action_chunk"


def policy_motion(t_ns: np.ndarray, joints: int) -> np.ndarray:
    """Smooth, non-periodic-looking motion per joint (two incommensurate sines)."""
    t = (np.asarray(t_ns, dtype=np.float64) - T0_NS) / 1e9
    j = np.arange(joints)[None, :]
    return 0.4 * np.sin(2 * np.pi * 0.37 * t[:, None] + j) + 0.15 * np.sin(2 * np.pi * 1.1 * t[:, None] + 2.0 * j)


def write_bag(path: Path, storage: str, *, duration_s: float = 6.0, joint_names: tuple[str, ...],
              with_trajectory: bool = True, with_joint_states: bool = True, lag_ms: float = INJECTED_LAG_MS,
              camera: str = "raw") -> Path:
    """A recording as the node + robot would produce it (see the module docstring); ``camera``
    raw (sensor_msgs/Image on CAMERA) or jpeg / png (sensor_msgs/CompressedImage on CAMERA/compressed,
    format as image_transport writes it)."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    ts = default_typestore()
    T = ts.types
    Time, Duration = T["builtin_interfaces/msg/Time"], T["builtin_interfaces/msg/Duration"]
    Header = T["std_msgs/msg/Header"]

    def stamp(ns: int):
        return Time(*ns_to_sec_nanosec(ns))

    rng = np.random.default_rng(7)
    J = len(joint_names)
    chunk_rows, execute_steps = 50, 10
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    messages: list[tuple[int, str, str, object]] = []  # (log time, topic, type, msg)
    end_ns = T0_NS + int(duration_s * 1e9)
    # Commanded trajectories: a chunk every execute_steps control periods.
    segments = []
    for start in range(T0_NS, end_ns, execute_steps * DT_NS):
        offsets = np.arange(chunk_rows, dtype=np.int64) * DT_NS
        positions = policy_motion(start + offsets, J) + rng.normal(0, 0.003, (1, J))  # chunk-to-chunk jitter
        segments.append((start, offsets, positions))
        if with_trajectory:
            points = [T["trajectory_msgs/msg/JointTrajectoryPoint"](
                positions=positions[k].astype(np.float64), velocities=np.zeros(0), accelerations=np.zeros(0),
                effort=np.zeros(0), time_from_start=Duration(*ns_to_sec_nanosec(offsets[k])))
                for k in range(chunk_rows)]
            traj = T["trajectory_msgs/msg/JointTrajectory"](header=Header(stamp=stamp(start), frame_id=""),
                                                            joint_names=list(joint_names), points=points)
            publish = start - int(10e6)  # published shortly before it starts
            messages.append((publish, TRAJ, "trajectory_msgs/msg/JointTrajectory", traj))
            skipped = 2
            obs = start - skipped * DT_NS
            chunk = T[("reflex_ros/msg/ActionChunk")](
                header=Header(stamp=stamp(start), frame_id=""), joint_names=list(joint_names),
                chunk_size=chunk_rows, action_dim=J, data=positions.astype(np.float32).ravel(),
                dt=Duration(sec=0, nanosec=DT_NS), skipped_steps=skipped, latency_compensation_ms=40.0,
                inference_ms=5.0, nfe=10, model_hash="x")
            messages.append((obs + int(OBS_TO_PUBLISH_MS * 1e6), CHUNKS, "reflex_ros/msg/ActionChunk", chunk))
    cmd_t, cmd_p = commanded_series(segments)
    if with_joint_states:
        # Joint states at 100 Hz: the command delayed by the actuation lag, offset, noisy; the
        # driver publishes an extra joint and a different order (state is taken by name).
        names = [*reversed(joint_names), "gripper_extra"]
        for t in range(T0_NS, end_ns, 10_000_000):
            pos = np.array([np.interp(t - lag_ms * 1e6, cmd_t, cmd_p[:, j]) for j in range(J)])
            pos = pos + OFFSET_RAD + rng.normal(0, 0.001, J)
            msg = T["sensor_msgs/msg/JointState"](header=Header(stamp=stamp(t), frame_id=""), name=names,
                                                  position=np.array([*pos[::-1], 0.5]), velocity=np.zeros(0),
                                                  effort=np.zeros(0))
            messages.append((t + 1_000_000, "/joint_states", "sensor_msgs/msg/JointState", msg))
    side = 32
    for k, t in enumerate(range(T0_NS, end_ns, int(1e9 / 15))):
        pixels = np.full((side, side, 3), k % 255, dtype=np.uint8)
        if camera == "raw":
            img = T["sensor_msgs/msg/Image"](header=Header(stamp=stamp(t), frame_id="cam"), height=side, width=side,
                                             encoding="rgb8", is_bigendian=0, step=side * 3, data=pixels.ravel())
            messages.append((t + 5_000_000, CAMERA, "sensor_msgs/msg/Image", img))
        else:
            payload = np.frombuffer(encode_image(pixels, camera), np.uint8).copy()
            img = T["sensor_msgs/msg/CompressedImage"](header=Header(stamp=stamp(t), frame_id="cam"),
                                                       format=image_transport_format(camera), data=payload)
            messages.append((t + 5_000_000, f"{CAMERA}/compressed", "sensor_msgs/msg/CompressedImage", img))
    messages.sort(key=lambda m: m[0])
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        connections = {}
        for _, topic, msgtype, _ in messages:
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype, typestore=ts)
        for log_ns, topic, msgtype, msg in messages:
            writer.write(connections[topic], log_ns, ts.serialize_cdr(msg, msgtype))
    return path


@pytest.fixture(scope="module")
def franka():
    return load_embodiment("franka")


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_bag_actuation_lag_within_one_control_period(tmp_path, storage, franka):
    bag = write_bag(tmp_path / f"rec_{storage}", storage, joint_names=franka.joint_names)
    data = read_bag(bag, joint_names=franka.joint_names, num_cameras=1, instruction="pick")
    assert data.topics.trajectory_topic == TRAJ and data.topics.joint_states_topic == "/joint_states"
    assert data.joint_pos.shape == (600, len(franka.joint_names))
    assert len(data.trajectories) == 30
    cmd_t, cmd_p = commanded_series(data.trajectories)
    lag = estimate_actuation_lag_ms(cmd_t, cmd_p, data.joint_t_ns, data.joint_pos)
    assert lag is not None
    assert abs(lag - INJECTED_LAG_MS) <= 1000.0 / CONTROL_HZ, lag
    # The recorded action chunks give the observation-to-publish latency.
    assert np.allclose(data.obs_to_publish_ms, OBS_TO_PUBLISH_MS, atol=1e-3)
    # Observations were rebuilt by the node's own assembler: native size (the engine resizes), state by name.
    obs = data.observations[0]
    assert obs.images[0].shape == (32, 32, 3) and obs.images[0].dtype == np.uint8
    assert obs.state.shape == (len(franka.joint_names),)
    assert len(data.observations) == data.n_synced and data.n_synced >= 80


@pytest.mark.parametrize(("storage", "codec"), [("sqlite3", "jpeg"), ("mcap", "png")])
def test_bag_with_compressed_camera_topics(tmp_path, storage, codec, franka, tiny_export, capsys):
    """A bag whose camera is sensor_msgs/CompressedImage (what robots usually record) replays the
    same way: the topic is found by type, frames decoded to RGB at their own size, and the
    calibrate command writes the entry with the lag."""
    bag = write_bag(tmp_path / f"rec_{storage}", storage, duration_s=3.0, joint_names=franka.joint_names,
                    camera=codec)
    data = read_bag(bag, joint_names=franka.joint_names, num_cameras=1, instruction="pick")
    assert data.topics.camera_topics == (f"{CAMERA}/compressed",)
    assert data.topics.camera_types == {f"{CAMERA}/compressed": "sensor_msgs/msg/CompressedImage"}
    assert data.n_rejected == 0 and data.n_synced >= 30
    for obs in data.observations[:5]:
        image = obs.images[0]
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        # the frame's fill value comes back (exact for PNG, within JPEG's rounding)
        assert np.ptp(image) <= (0 if codec == "png" else 2)
    cache = tmp_path / "calibration.json"
    args = _parse(["calibrate", "--bag", str(bag), "--export", str(tiny_export), "--embodiment", "franka",
                   "--calibration-cache", str(cache), "--iters", "4", "--warmup-iters", "1"])
    assert args.func(args) == 0
    assert f"cameras: {CAMERA}/compressed" in capsys.readouterr().out
    entry = next(iter(json.loads(cache.read_text())["entries"].values()))
    assert entry["source"] == f"bag:{bag.name}" and entry["actuation_lag_ms"] is not None


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="reflex-ros")
    calibrate_cli.register(parser.add_subparsers())
    return parser.parse_args(argv)


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_calibrate_cli_writes_bag_entry(tmp_path, storage, tiny_export, franka, capsys):
    from reflex_ros.engine.bundle import model_hash

    bag = write_bag(tmp_path / f"rec_{storage}", storage, joint_names=franka.joint_names)
    cache = tmp_path / "calibration.json"
    args = _parse(["calibrate", "--bag", str(bag), "--export", str(tiny_export), "--embodiment", "franka",
                   "--calibration-cache", str(cache), "--iters", "12", "--warmup-iters", "2"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    document = json.loads(cache.read_text())
    entry = document["entries"][f"franka::{model_hash(tiny_export)}"]
    assert entry["source"] == f"bag:{bag.name}"
    assert entry["latency_source"] == "learned"
    # p95 observation-to-publish (30 ms, from the chunks) + the 80 ms lag, within a control period.
    assert abs(entry["latency_compensation_ms"] - (OBS_TO_PUBLISH_MS + INJECTED_LAG_MS)) <= 1000.0 / CONTROL_HZ
    # the two parts on record: the recorded chunks' p95 and the lag the bag shows
    assert entry["obs_to_publish_p95_ms"] == pytest.approx(OBS_TO_PUBLISH_MS, abs=0.1)
    assert abs(entry["actuation_lag_ms"] - INJECTED_LAG_MS) <= 1000.0 / CONTROL_HZ
    assert entry["latency_compensation_ms"] == pytest.approx(entry["obs_to_publish_p95_ms"] + entry["actuation_lag_ms"],
                                                             abs=0.11)
    assert entry["measurement_quality"]["measurement_iters"] == 12
    assert entry["expert_step_ms"] > 0 and entry["nfe"] in (1, 2, 4, 8, 10)
    assert "actuation lag:" in out and f"wrote franka::{model_hash(tiny_export)}" in out


def test_calibrate_without_trajectory_keeps_cold_start(tmp_path, tiny_export, franka, capsys):
    bag = write_bag(tmp_path / "rec", "mcap", duration_s=2.0, joint_names=franka.joint_names, with_trajectory=False)
    cache = tmp_path / "calibration.json"
    args = _parse(["calibrate", "--bag", str(bag), "--export", str(tiny_export), "--embodiment", "franka",
                   "--calibration-cache", str(cache), "--iters", "4", "--warmup-iters", "1"])
    assert args.func(args) == 0
    entry = next(iter(json.loads(cache.read_text())["entries"].values()))
    assert entry["latency_compensation_ms"] == franka.latency_compensation_ms
    assert entry["latency_source"] == "cold_start"
    assert "no JointTrajectory topic" in capsys.readouterr().out


def test_calibrate_missing_topics_lists_what_the_bag_has(tmp_path, tiny_export, franka, capsys):
    bag = write_bag(tmp_path / "rec", "sqlite3", duration_s=1.0, joint_names=franka.joint_names,
                    with_joint_states=False)
    cache = tmp_path / "calibration.json"
    args = _parse(["calibrate", "--bag", str(bag), "--export", str(tiny_export), "--embodiment", "franka",
                   "--calibration-cache", str(cache), "--iters", "2"])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert "sensor_msgs/msg/JointState" in err
    assert f"{CAMERA} (sensor_msgs/msg/Image" in err and TRAJ in err
    assert not cache.exists()
    # A named topic that is not there is reported the same way.
    args = _parse(["calibrate", "--bag", str(bag), "--export", str(tiny_export), "--embodiment", "franka",
                   "--calibration-cache", str(cache), "--joint-states-topic", "/robot/joint_states"])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert "--joint-states-topic /robot/joint_states: no such topic" in err and CAMERA in err


def test_read_bag_rejects_a_non_bag(tmp_path, franka):
    junk = tmp_path / "not_a_bag"
    junk.mkdir()
    with pytest.raises(BagError, match="cannot read .*not_a_bag as a ROS 2 bag"):
        read_bag(junk, joint_names=franka.joint_names, num_cameras=1, instruction="x")
    with pytest.raises(BagError, match="does not exist"):
        read_bag(tmp_path / "missing", joint_names=franka.joint_names, num_cameras=1, instruction="x")


def test_cli_registers_my_subcommands():
    from reflex_ros.cli import SUBCOMMANDS

    assert SUBCOMMANDS["calibrate"] == "reflex_ros.apps.calibrate"
    assert SUBCOMMANDS["doctor"] == "reflex_ros.calibration.doctor"


def test_replay_does_not_import_the_ros_layer():
    """Bag replay runs on the control layer alone: no rclpy, no reflex_ros.ros."""
    import subprocess
    import sys

    code = ("import sys; import reflex_ros.replay.bag_reader, reflex_ros.apps.calibrate; "
            "print(sorted(m for m in sys.modules if m.startswith(('reflex_ros.ros', 'rclpy'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
