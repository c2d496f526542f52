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


def episodic_recording(lag_ms: float) -> tuple[LoopRecording, list[tuple[int, int]]]:
    """Three episodes as the demo runs them: each starts at home (0) and moves out to a far pose
    over 2 s while wiggling (``command``); between episodes a one-point hold at the last pose,
    then the scene reset teleports the arm home (no command says so), and the next episode's
    first chunk arrives 0.3 s after the release, starting from home (anchored to the observed
    state). The joints follow the commands ``lag_ms`` late. Returns the recording and the
    episodes' (release, end) windows."""
    rec = LoopRecording(("a", "b"))
    far = np.array([1.5, -1.2])
    t = 10**12
    windows = []
    meas_t: list[int] = []
    meas_pos: list[np.ndarray] = []
    for _ in range(3):
        release = t
        start = release + 300 * MS

        def pose(at_ns: np.ndarray, start: int = start) -> np.ndarray:
            ramp = np.clip((np.asarray(at_ns) - start) / 2e9, 0.0, 1.0)[:, None]
            return ramp * far + 0.3 * (command(np.asarray(at_ns)) - command(np.array([start]))[0])

        for i in range(15):
            stamp = start + i * 10 * DT
            offsets = np.arange(20, dtype=np.int64) * DT
            rec.trajectories.append(TrajectoryRecord(stamp - 20 * MS, stamp, offsets, pose(stamp + offsets)))
        end = start + 15 * 10 * DT
        ts = np.arange(release, end, 10 * MS)
        meas_t += ts.tolist()
        meas_pos += list(pose(np.maximum(ts - int(lag_ms * MS), start)))
        windows.append((int(release), int(end)))
        hold = pose(np.array([end]))[0]
        rec.trajectories.append(TrajectoryRecord(end + 5 * MS, end + 5 * MS, np.zeros(1, dtype=np.int64), hold[None]))
        t = end + 800 * MS
        ts = np.arange(end, t, 10 * MS)  # held for 0.5 s, then the reset: home until the release
        meas_t += ts.tolist()
        meas_pos += [hold if tt < end + 500 * MS else np.zeros(2) for tt in ts]
    rec.meas_t_ns, rec.meas_pos = meas_t, meas_pos
    return rec, windows


def test_episode_windows_keep_the_previous_hold_out_of_the_lag_and_the_boundaries():
    rec, windows = episodic_recording(lag_ms=180.0)
    kwargs = dict(lower=np.array([-5.0, -5.0]), upper=np.array([5.0, 5.0]), control_frequency_hz=30.0,
                  execute_steps=10, cold_start_latency_ms=60.0, injected_delay_ms=150.0, duration_s=20.0)
    from reflex_ros.calibration.actuation_lag import estimate_actuation_lag_ms
    from reflex_ros.control.jtc import commanded_series

    # one command series over the whole run: the stale hold pose next to the reset arm biases it
    segments = [(t.start_ns, t.offsets_ns, t.positions, t.recv_ns) for t in rec.trajectories]
    naive = estimate_actuation_lag_ms(*commanded_series(segments), rec.meas_t_ns, np.stack(rec.meas_pos))
    assert naive is None or abs(naive - 180.0) > 20.0
    whole = loop_report.summarize(rec, **kwargs)  # split at the holds
    episodes = loop_report.summarize(rec, windows=windows, **kwargs)
    assert whole["actuation_lag_ms"] == pytest.approx(180.0, abs=4.0)
    assert episodes["actuation_lag_ms"] == pytest.approx(180.0, abs=4.0)
    assert episodes["aligned_rms_rad"] < 0.1 * episodes["tracking_rms_rad"]
    # a hold ends the motion: the jump from the hold pose to the next episode is no boundary
    assert episodes["boundary_jump_max_rad"] < 0.5
    assert episodes["replans"] == 3 * 14


def test_summary_table_prints_episodes_and_the_success_line():
    rec, windows = episodic_recording(lag_ms=0.0)
    s = loop_report.summarize(rec, lower=LOWER * 5, upper=UPPER * 5, control_frequency_hz=30.0, execute_steps=10,
                              cold_start_latency_ms=60.0, injected_delay_ms=0.0, duration_s=20.0, windows=windows)
    s["episodes"] = [{"seed": 4, "success": True, "time_s": 5.25}, {"seed": 5, "success": False, "time_s": 15.0}]
    s["success"], s["successes"] = "success 1/2", 1
    table = loop_report.format_table(s)
    assert "seed 4 ok 5.2 s, seed 5 FAIL" in table or "seed 4 ok 5.3 s, seed 5 FAIL" in table
    assert table.splitlines()[-1].strip() == "success 1/2 (50%)"
