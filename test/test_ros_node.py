"""The policy node end to end: one node process (real tiny export, real onnxruntime), the
robot side in this process, real DDS between them.

Covers: trajectory joint names and order, stamps from the observation, exact dt spacing,
skipped_steps = ceil(L/dt) for several L, the state taken by joint name, rqt-style
SetParameters (refusals with reasons, accepted values used by the next chunk), bad inputs
(node alive and publishing again afterwards), the staleness watchdog and /diagnostics.

The node is shared by the module (conftest's ``policy``); the autouse ``baseline`` puts its
parameters and the feed back to the same state before every test, so the order of the
tests does not matter.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from _ros_harness import SO100_JOINTS, RosHarness, rgb_image, stamp_ns, to_time, wait_for
from sensor_msgs.msg import JointState
from std_msgs.msg import String

from reflex_ros.engine.bundle import load_bundle

HZ = 30.0
DT_NS = 33_333_333
CHUNK_ROWS = 50  # tiny export
SO100_DELTA = [0.1] * 6
POLICY = {"node": {"parameters": {"execute_steps": 3}}}
BASELINE = {"latency_compensation_ms": 60.0, "nfe": 0, "control_frequency_hz": HZ, "execute_steps": 3,
            "cfg_beta": 0.0, "max_delta_per_step": SO100_DELTA}


def expected_skip(latency_ms: float, hz: float) -> int:
    """ceil(L/dt), computed independently of the node (exact rational arithmetic)."""
    from fractions import Fraction

    return math.ceil(Fraction(str(latency_ms)) * Fraction(str(hz)) / 1000)


def _latest_chunk_matching(robot: RosHarness, predicate, timeout_s: float = 60.0):
    start = robot.chunk_count()

    def find():
        with robot.lock:
            for r in robot.chunks[start:]:
                if predicate(r.msg):
                    return r.msg
        return None
    return wait_for(find, timeout_s, "a chunk matching the new parameters")


@pytest.fixture(autouse=True)
def baseline(robot: RosHarness) -> None:
    """Every test starts from the same node: the baseline parameters in effect (a chunk made
    with them seen) and the robot publishing a still arm at 30 Hz."""
    robot.feed(True, rate_hz=30.0, state=lambda: (SO100_JOINTS, [0.0] * 6))
    robot.feeder.camera_offsets_ns = None
    assert robot.set_params(**BASELINE) == [(True, "")] * len(BASELINE)
    _latest_chunk_matching(robot, lambda c: c.nfe == 10 and stamp_ns(c.dt) == DT_NS and
                           abs(c.latency_compensation_ms - 60.0) < 1e-9, timeout_s=90)


def test_chunks_carry_joint_names_stamps_and_exact_dt(node, robot, tiny_export) -> None:
    model_hash = load_bundle(tiny_export).model_hash
    received = robot.wait_chunks(5, timeout_s=90)
    published = set(robot.feeder.published_stamps)
    for r in received:
        chunk = r.msg
        k = chunk.skipped_steps
        assert k == expected_skip(60.0, HZ) == 2  # so100 cold start: 60 ms at 30 Hz
        assert list(chunk.joint_names) == SO100_JOINTS
        assert stamp_ns(chunk.dt) == DT_NS
        obs_stamp = stamp_ns(chunk.header.stamp) - k * DT_NS
        assert obs_stamp in published, "chunk stamp is not observation stamp + k*dt"
        assert stamp_ns(chunk.header.stamp) >= obs_stamp
        assert chunk.chunk_size == CHUNK_ROWS - k and chunk.action_dim == 6
        assert len(chunk.data) == chunk.chunk_size * chunk.action_dim
        assert chunk.nfe == 10 and chunk.model_hash == model_hash
        assert chunk.inference_ms > 0 and chunk.latency_compensation_ms == pytest.approx(60.0)

        traj = robot.matching_trajectory(chunk)
        assert list(traj.joint_names) == SO100_JOINTS
        assert stamp_ns(traj.header.stamp) == stamp_ns(chunk.header.stamp)
        offsets = [stamp_ns(p.time_from_start) for p in traj.points]
        assert offsets == [j * DT_NS for j in range(len(traj.points))]
        positions = np.array([p.positions for p in traj.points])
        velocities = np.array([p.velocities for p in traj.points])
        np.testing.assert_allclose(positions, np.asarray(chunk.data).reshape(-1, 6), atol=1e-6)
        assert velocities.shape == positions.shape and np.isfinite(velocities).all()
        lower = np.array([-1.87, -1.69, -1.64, -1.60, -2.69, -0.12])
        upper = np.array([1.87, 1.69, 1.64, 1.60, 2.79, 1.69])
        assert (positions >= lower - 1e-9).all() and (positions <= upper + 1e-9).all()
        steps = np.abs(np.diff(positions, axis=0))
        assert (steps <= 0.1 + 1e-9).all()


@pytest.mark.parametrize("latency_ms", [0.0, 20.0, 33.4, 100.0, 250.0])
def test_skipped_steps_is_ceil_latency_over_dt(node, robot, latency_ms: float) -> None:
    assert robot.set_params(latency_compensation_ms=latency_ms) == [(True, "")]
    chunk = _latest_chunk_matching(robot, lambda c: abs(c.latency_compensation_ms - latency_ms) < 1e-3)
    k = expected_skip(latency_ms, HZ)
    assert chunk.skipped_steps == k
    assert chunk.chunk_size == CHUNK_ROWS - k
    obs_stamp = stamp_ns(chunk.header.stamp) - k * DT_NS
    assert obs_stamp in set(robot.feeder.published_stamps)
    traj = robot.matching_trajectory(chunk)
    assert len(traj.points) == CHUNK_ROWS - k


def test_state_is_read_by_joint_name(node, robot) -> None:
    """Joints arrive shuffled, with an extra one; a tiny step limit pins every point to the
    observed state, so the published positions reveal how the state was read."""
    state = {"shoulder_pan": 0.3, "shoulder_lift": -0.4, "elbow_flex": 0.5, "wrist_flex": -0.6,
             "wrist_roll": 0.7, "gripper": 0.2, "camera_tilt": 9.0}
    shuffled = ["gripper", "camera_tilt", "wrist_roll", "elbow_flex", "shoulder_pan", "wrist_flex",
                "shoulder_lift"]
    robot.feed(True, state=lambda: (shuffled, [state[n] for n in shuffled]))
    clamped_before = int(robot.latest_diagnostics(after_ns=robot.now_ns())["clamped_step_values"])
    assert robot.set_params(max_delta_per_step=[1e-6] * 6, latency_compensation_ms=0.0, anchor_to_command=False) == [(True, "")] * 3
    expected = np.array([state[n] for n in SO100_JOINTS])

    def pinned(c):
        first = np.asarray(c.data[:6])
        return c.skipped_steps == 0 and np.allclose(first, expected, atol=1e-4)
    chunk = _latest_chunk_matching(robot, pinned)
    positions = np.asarray(chunk.data).reshape(-1, 6)
    np.testing.assert_allclose(positions, np.tile(expected, (len(positions), 1)), atol=1e-4)
    # the step limit did the pinning, and /diagnostics counts what it changed
    wait_for(lambda: int(robot.latest_diagnostics(after_ns=robot.now_ns())["clamped_step_values"]) > clamped_before,
             30, "clamped_step_values to count the clamped chunk values")


def test_parameters_describe_ranges_and_read_only_like_rqt(node, robot) -> None:
    names = ["control_frequency_hz", "nfe", "cfg_beta", "export_dir", "camera_topics", "latency_compensation_ms",
             "max_observation_age_ms", "instruction"]
    desc = {d.name: d for d in robot.describe(*names)}
    assert set(desc) == set(names)
    assert all(d.description for d in desc.values())
    rng = desc["control_frequency_hz"].floating_point_range[0]
    assert (rng.from_value, rng.to_value) == (0.1, 1000.0)
    assert desc["nfe"].integer_range[0].to_value >= 10
    assert desc["latency_compensation_ms"].floating_point_range[0].from_value == 0.0
    assert desc["export_dir"].read_only and desc["camera_topics"].read_only  # configured
    assert not desc["control_frequency_hz"].read_only and not desc["instruction"].read_only


@pytest.mark.parametrize(
    ("values", "reason_part"),
    [({"control_frequency_hz": 5000.0}, "out of range"),
     ({"execute_steps": 0}, "out of range"),
     ({"cfg_beta": 0.5}, "cfg_beta must be 0.0 (off) or >= 1.0"),
     ({"latency_compensation_ms": 1700.0}, "skips 51 steps"),
     ({"position_lower": [-1.0, -1.0]}, "one value per joint (6 joints)"),
     ({"max_delta_per_step": [0.1, 0.1, 0.1, 0.1, 0.1, 0.0]}, "> 0"),
     ({"export_dir": "/elsewhere"}, "read-only"),
     ({"control_frequency_hz": 30}, "type")],
)
def test_invalid_parameter_changes_are_refused_with_a_reason(node, robot, values, reason_part) -> None:
    before = robot.get_params(*values)
    results = robot.set_params(**values)
    assert len(results) == 1 and results[0][0] is False
    assert reason_part in results[0][1]
    assert robot.get_params(*values) == before


def test_an_nfe_the_export_does_not_support_is_refused(node, robot, tiny_export) -> None:
    from reflex_ros.engine.loader import load_engine

    engine = load_engine(tiny_export)
    supported = list(engine.info.supported_nfe)
    engine.close()
    unsupported = next((n for n in range(1, 101) if n not in supported), None)
    if unsupported is None:
        pytest.skip("this export supports every NFE the parameter's range allows")
    assert robot.set_params(nfe=unsupported) == [(False, f"nfe {unsupported} is not supported by this export; "
                                                         f"supported: {supported} (or 0 = default)")]


def test_valid_changes_take_effect_on_the_next_chunks(node, robot) -> None:
    assert robot.set_params(nfe=2) == [(True, "")]
    assert _latest_chunk_matching(robot, lambda c: c.nfe == 2).nfe == 2
    assert robot.set_params(control_frequency_hz=50.0, execute_steps=5) == [(True, "")] * 2
    chunk = _latest_chunk_matching(robot, lambda c: stamp_ns(c.dt) == 20_000_000)
    assert chunk.skipped_steps == expected_skip(60.0, 50.0) == 3
    traj = robot.matching_trajectory(chunk)
    assert [stamp_ns(p.time_from_start) for p in traj.points[:3]] == [0, 20_000_000, 40_000_000]
    assert robot.set_params(cfg_beta=2.0) == [(True, "")]
    start = robot.chunk_count()
    robot.wait_chunks(3, after=start)
    assert robot.get_params("cfg_beta") == [2.0]
    diag = wait_for(lambda: (d := robot.latest_diagnostics(after_ns=robot.now_ns())) and d["cfg_beta"] == "2" and d,
                    30, "the loop to use cfg_beta 2")
    assert diag["execute_steps"] == "5" and diag["control_frequency_hz"] == "50"


def test_instruction_topic_sets_the_parameter(node, robot) -> None:
    robot.instruction_pub.publish(String(data="pick up the red cube"))
    wait_for(lambda: robot.get_params("instruction") == ["pick up the red cube"], 30, "instruction parameter")


def _bad_inputs(robot: RosHarness) -> list[tuple[str, object, str]]:
    now = robot.now_ns()
    wrong_encoding = rgb_image(now, 64)
    wrong_encoding.encoding = "16UC1"
    short = rgb_image(now, 64)
    short.data = bytes(64 * 64 * 3 - 7)
    missing = JointState(name=SO100_JOINTS[:-1], position=[0.0] * 5)
    missing.header.stamp = to_time(now)
    nan = JointState(name=SO100_JOINTS, position=[0.0, 0.0, float("nan"), 0.0, 0.0, 0.0])
    nan.header.stamp = to_time(now)
    return [
        ("camera", wrong_encoding, "/camera/front/image_raw: unsupported image encoding '16UC1'"),
        ("camera", short, "12281 bytes, expected 12288"),
        ("joints", missing, "joint 'gripper' missing from JointState"),
        ("joints", nan, "joint 'elbow_flex' position is nan"),
    ]


def test_bad_inputs_are_dropped_and_the_node_keeps_publishing(node, robot) -> None:
    robot.feed(False)
    diag_before = robot.latest_diagnostics(after_ns=robot.now_ns())
    for kind, msg, expected_log in _bad_inputs(robot):
        mark = len(node.lines)
        for _ in range(3):
            if kind == "camera":
                robot.camera_pubs[0].publish(msg)
            else:
                robot.joint_pub.publish(msg)
        line = node.wait_for_log(expected_log, timeout_s=30, start=mark)
        assert line is not None and "dropped message" in line, f"no log line naming {expected_log!r}"
        assert node.alive
    diag = wait_for(lambda: (d := robot.latest_diagnostics(after_ns=robot.now_ns())) and
                    int(d["dropped_messages"]) >= int(diag_before["dropped_messages"]) + 4 and d, 30,
                    "dropped_messages to count the bad inputs")
    assert node.alive and node.state() == "active"
    assert diag["last_error"]
    robot.feed(True)
    robot.wait_chunks(3, timeout_s=90)


def test_watchdog_pauses_on_stale_data_and_resumes(node, robot) -> None:
    robot.feed(False)
    stale = wait_for(lambda: (d := robot.latest_diagnostics(after_ns=robot.now_ns())) and
                     d["_message"].startswith("stale") and d, 60, "a stale-observation warning")
    assert stale["_level"] == 1  # WARN
    assert int(stale["stale_observations"]) > 0
    count = robot.chunk_count()
    robot.feed(True)
    robot.wait_chunks(2, after=count, timeout_s=90)
    fresh = wait_for(lambda: (d := robot.latest_diagnostics(after_ns=robot.now_ns())) and
                     d["_message"] == "publishing chunks" and d, 60, "diagnostics back to OK")
    assert fresh["_level"] == 0
    for key in ("engine", "provider", "dtype", "nfe", "inference_p50_ms", "inference_p95_ms",
                "obs_to_publish_p50_ms", "obs_to_publish_p95_ms", "chunks_published", "overruns",
                "dropped_messages", "stale_observations", "calibration_state"):
        assert key in fresh, key
    assert fresh["engine"] == "onnx" and fresh["calibration_state"] == "off"
    assert float(fresh["obs_to_publish_p50_ms"]) >= float(fresh["inference_p50_ms"]) > 0
