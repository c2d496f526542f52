"""The demo's arithmetic (ROS-free): rates, limit checks by message kind, tracking error and
the lag it finds, and the CLI surface of `reflex-ros demo`."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from reflex_ros.apps import demo, loop_report
from reflex_ros.apps.loop_report import ChunkRecord, LoopRecording, TrajectoryRecord

MS = 1_000_000
DT = 33_333_333
LOWER = np.array([-1.0, -1.0])
UPPER = np.array([1.0, 1.0])


def command(t_ns: np.ndarray) -> np.ndarray:
    """A smooth, varied two-joint motion (timing is identifiable from it)."""
    s = t_ns / 1e9
    return np.stack([0.5 * np.sin(2.1 * s) + 0.2 * np.sin(5.3 * s), 0.4 * np.cos(3.7 * s)], axis=1)


def recording(lag_ms: float, n_chunks: int = 40, period_ns: int = 10 * DT) -> LoopRecording:
    """Chunks every ``period_ns`` whose points follow ``command``; joints follow it ``lag_ms`` late."""
    rec = LoopRecording(("a", "b"))
    t0 = 10**12
    for i in range(n_chunks):
        stamp = t0 + i * period_ns
        offsets = np.arange(20, dtype=np.int64) * DT
        pos = command(stamp + offsets)
        latency_ms = 60.0 if i < 20 else 150.0
        rec.chunks.append(ChunkRecord(stamp + 50 * MS, stamp, 2, DT, latency_ms, 5.0 + i % 3, pos))
        rec.trajectories.append(TrajectoryRecord(stamp + 50 * MS, stamp, offsets, pos))
    t = np.arange(t0, t0 + n_chunks * period_ns, 10 * MS)
    rec.meas_t_ns = t.tolist()
    rec.meas_pos = list(command(t - int(lag_ms * MS)))
    return rec


def test_summary_numbers_from_a_recording():
    rec = recording(lag_ms=120.0)
    s = loop_report.summarize(
        rec,
        lower=LOWER,
        upper=UPPER,
        control_frequency_hz=30.0,
        execute_steps=10,
        cold_start_latency_ms=60.0,
        injected_delay_ms=80.0,
        duration_s=13.3,
    )
    assert s["chunks"] == 40
    assert s["chunk_rate_hz"] == pytest.approx(1e9 / (10 * DT))
    assert s["target_rate_hz"] == pytest.approx(3.0)
    assert s["obs_to_publish_source"] == "monitor"  # no diagnostics in this recording
    assert s["obs_to_publish_p50_ms"] == pytest.approx(50.0 + 2 * DT / 1e6)
    assert (s["first_learned_latency_ms"], s["learned_latency_ms"], s["latency_changes"]) == (150.0, 150.0, 1)
    assert s["start_latency_ms"] == 60.0
    assert s["actuation_lag_ms"] == pytest.approx(120.0, abs=2.0)
    assert s["aligned_rms_rad"] < 0.2 * s["tracking_rms_rad"]
    assert s["loop_inference_plus_delay_ms"] == pytest.approx(s["inference_p50_ms"] + 80.0)
    assert s["points_outside"] == 0 and s["points_checked"] == 2 * 40 * 20
    table = loop_report.format_table(s)
    for row in ("chunk publish rate", "inference", "observation -> publish", "latency_compensation_ms",
                "loop really has", "tracking error", "joint limits", "calibration cache"):  # fmt: skip
        assert row in table


def test_node_diagnostics_win_over_the_monitor_estimate():
    rec = recording(lag_ms=0.0, n_chunks=5)
    rec.diagnostics = {"obs_to_publish_p50_ms": "41.5", "obs_to_publish_p95_ms": "77.0", "execute_steps": "5"}
    s = loop_report.summarize(
        rec, lower=LOWER, upper=UPPER, control_frequency_hz=30.0, execute_steps=10,
        cold_start_latency_ms=60.0, injected_delay_ms=0.0, duration_s=2.0,
    )  # fmt: skip
    o2p = (s["obs_to_publish_p50_ms"], s["obs_to_publish_p95_ms"], s["obs_to_publish_source"])
    assert o2p == (41.5, 77.0, "node")
    assert s["target_rate_hz"] == pytest.approx(6.0)


def test_limit_check_counts_each_kind_of_message():
    rec = recording(lag_ms=0.0, n_chunks=3)
    inside = loop_report.limit_check(rec, LOWER, UPPER)
    assert inside["points_outside"] == 0
    # a hold-position trajectory outside the limits
    rec.trajectories.append(TrajectoryRecord(0, 1, np.array([DT]), np.array([[1.05, 0.0]])))
    # the chunk and its trajectory share this array: both carry the point
    rec.chunks[1].positions[3, 1] = -1.2
    out = loop_report.limit_check(rec, LOWER, UPPER)
    kinds = (out["chunk_points_outside"], out["trajectory_points_outside"], out["hold_points_outside"])
    assert kinds == (1, 1, 1)
    assert out["max_violation_rad"] == pytest.approx(0.2)
    # float32 on the wire: a value clamped to the limit may read a hair above it
    rec2 = recording(lag_ms=0.0, n_chunks=1)
    rec2.chunks[0].positions[0, 0] = np.float32(1.0) + 1e-7
    assert loop_report.limit_check(rec2, LOWER, UPPER)["points_outside"] == 0


def test_demo_cli_accepts_duration_alias_and_repeats_params():
    parser = argparse.ArgumentParser()
    demo.register(parser.add_subparsers())
    args = parser.parse_args(["demo", "--duration", "12", "--sim-param", "a:=1", "--sim-param", "b:=2",
                              "--policy-param", "execute_steps:=5"])  # fmt: skip
    assert (args.duration_s, args.actuation_delay_ms, args.real_time_factor) == (12.0, 0.0, 1.0)
    assert args.sim_param == ["a:=1", "b:=2"]
    assert demo._parse_params(args.policy_param) == {"execute_steps": 5}
    with pytest.raises(ValueError, match="NAME:=VALUE"):
        demo._parse_params(["execute_steps=5"])
    assert args.func is demo.handle


def test_demo_refuses_an_export_dir_that_holds_something_else(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("not an export")
    with pytest.raises(ValueError, match="not a reflex_ros export"):
        demo.ensure_export(str(tmp_path), demo._Console())
    exported = tmp_path / "ok"
    exported.mkdir()
    (exported / "reflex_config.json").write_text("{}")
    assert demo.ensure_export(str(exported), demo._Console()) == exported  # reused, not re-exported
