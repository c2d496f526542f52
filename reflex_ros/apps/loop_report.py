"""What the closed loop did, from recorded traffic: numbers and the demo's summary table.

ROS-free (numpy in, dict and text out) so the arithmetic is testable on its own; the demo's
monitor node fills a :class:`LoopRecording` from ``~/action_chunk``, ``~/joint_trajectory``,
``/diagnostics`` and ``/joint_states``.

Definitions, and why:

* chunk rate: (chunks - 1) / (time between the first and the last chunk received); counting
  from the first chunk leaves out start-up (sync warm-up), which is not the loop's rate.
* observation-to-publish: the node's own measurement (``/diagnostics``) when available, it
  excludes DDS delivery to us; the monitor's receipt-based value is kept as a cross-check.
* commanded vs measured: the trajectories as a joint_trajectory_controller executes them
  (:func:`reflex_ros.control.jtc.commanded_series`, the sim's own model) against the
  joint states; the "aligned" error shifts the command by the measured actuation lag, which
  separates "the arm lags" from "the arm goes elsewhere".
* limits: every published point (trajectories and chunks) against the embodiment's limits;
  chunk data is float32 on the wire, hence a tolerance of 1e-5 rad.
* chunk boundaries (:class:`reflex_ros.control.handover.HandoverStats`, the numbers the node's
  /diagnostics reports too): at every replan the new minus the old commanded position (and
  velocity) at the takeover, p50/p95/max of the worst joint and p95 per joint; the commanded
  jerk (RMS of the third difference of the command sampled every control period, / dt^3); the
  command as the controller executes it (received trajectories, deferred or not as the sim).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reflex_ros.calibration.actuation_lag import estimate_actuation_lag_ms_over_holds
from reflex_ros.control.handover import HandoverStats
from reflex_ros.control.jtc import commanded_series

LIMIT_TOLERANCE = 1e-5


@dataclass(frozen=True)
class ChunkRecord:
    """One ActionChunk as received."""

    recv_ns: int
    stamp_ns: int  # row 0 time = observation stamp + skipped_steps * dt
    skipped_steps: int
    dt_ns: int
    latency_compensation_ms: float
    inference_ms: float
    positions: np.ndarray  # (rows, joints)

    @property
    def obs_stamp_ns(self) -> int:
        return self.stamp_ns - self.skipped_steps * self.dt_ns


@dataclass(frozen=True)
class TrajectoryRecord:
    """One JointTrajectory as received (start = header.stamp, or receipt when 0)."""

    recv_ns: int
    start_ns: int
    offsets_ns: np.ndarray  # time_from_start of each point
    positions: np.ndarray  # (points, joints), in the recording's joint order


@dataclass
class LoopRecording:
    joint_names: tuple[str, ...]
    chunks: list[ChunkRecord] = field(default_factory=list)
    trajectories: list[TrajectoryRecord] = field(default_factory=list)
    meas_t_ns: list[int] = field(default_factory=list)
    meas_pos: list[np.ndarray] = field(default_factory=list)
    diagnostics: dict[str, str] = field(default_factory=dict)  # newest values of the node's status
    images: int = 0
    image_age_ms: list[float] = field(default_factory=list)  # receipt - stamp of each frame
    model_hash: str | None = None


def percentile(values: Any, q: float) -> float | None:
    arr = np.asarray(values, dtype=np.float64)
    return float(np.percentile(arr, q)) if arr.size else None


def _diag_float(diag: dict[str, str], key: str) -> float | None:
    try:
        value = float(diag[key])
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _count_outside(blocks: list[np.ndarray], lower: np.ndarray, upper: np.ndarray) -> tuple[int, int, float]:
    """(points, points outside, largest excess) over ``blocks`` of (n, joints) positions."""
    blocks = [b for b in blocks if b.size]
    if not blocks:
        return 0, 0, 0.0
    points = np.concatenate(blocks)
    excess = np.maximum(points - upper[None, :], lower[None, :] - points)
    outside = np.any(excess > LIMIT_TOLERANCE, axis=1)
    return int(points.shape[0]), int(outside.sum()), float(max(0.0, excess.max()))


def limit_check(rec: LoopRecording, lower: np.ndarray, upper: np.ndarray) -> dict[str, Any]:
    """Every published point against [lower, upper], by kind of message.

    Chunk trajectories carry the same points as the chunks; single-point trajectories are
    the node's hold-position commands (deactivate), which hold the *measured* state.
    """
    chunk = _count_outside([c.positions for c in rec.chunks], lower, upper)
    traj = _count_outside([t.positions for t in rec.trajectories if len(t.positions) > 1], lower, upper)
    hold = _count_outside([t.positions for t in rec.trajectories if len(t.positions) == 1], lower, upper)
    return {
        "points_checked": chunk[0] + traj[0] + hold[0],
        "points_outside": chunk[1] + traj[1] + hold[1],
        "max_violation_rad": max(chunk[2], traj[2], hold[2]),
        "chunk_points_outside": chunk[1],
        "trajectory_points_outside": traj[1],
        "hold_points_outside": hold[1],
        "hold_points": hold[0],
    }


def tracking(rec: LoopRecording, max_lag_ms: float,
             windows: list[tuple[int, int]] | None = None) -> dict[str, Any]:
    """Commanded vs measured joint positions (see the module docstring). ``windows``: only
    measured samples inside these ``(start_ns, end_ns)`` spans count (the demo's episodes: a
    scene reset teleports the arm home, which no command explains)."""
    empty = {
        "actuation_lag_ms": None,
        "tracking_rms_rad": None,
        "tracking_p95_rad": None,
        "aligned_rms_rad": None,
    }
    if len(rec.trajectories) < 2 or len(rec.meas_t_ns) < 20:
        return empty
    segments = [(t.start_ns, t.offsets_ns, t.positions, t.recv_ns) for t in rec.trajectories]
    cmd_t, cmd_pos = commanded_series(segments)
    meas_t = np.asarray(rec.meas_t_ns, dtype=np.int64)
    meas_pos = np.stack(rec.meas_pos)
    keep = (meas_t >= cmd_t[0]) & (meas_t <= cmd_t[-1])
    if windows:
        inside = np.zeros_like(keep)
        for start_ns, end_ns in windows:
            inside |= (meas_t >= start_ns) & (meas_t <= end_ns)
        keep &= inside
    if keep.sum() < 20:
        return empty
    meas_t, meas_pos = meas_t[keep], meas_pos[keep]
    lag_ms = estimate_actuation_lag_ms_over_holds(segments, meas_t, meas_pos, max_lag_ms=max_lag_ms)

    # (command series, measured samples) pieces: the whole run, or each window with its own
    # commands (a shifted command never reaches back into the previous episode's hold)
    pieces = [(cmd_t, cmd_pos, meas_t, meas_pos)]
    if windows:
        pieces = []
        for start_ns, end_ns in windows:
            segs = [seg for seg in segments if start_ns <= seg[3] <= end_ns]
            inside = (meas_t >= start_ns) & (meas_t <= end_ns)
            if segs and inside.any():
                pieces.append((*commanded_series(segs), meas_t[inside], meas_pos[inside]))
        if not pieces:
            return empty

    def errors(shift_ns: int) -> np.ndarray:
        out = []
        for ct, cp, mt, mp in pieces:
            at = mt - shift_ns
            use = (at >= ct[0]) & (at <= ct[-1])
            rel = (ct - ct[0]).astype(np.float64)
            x = (at[use] - ct[0]).astype(np.float64)
            cmd = np.stack([np.interp(x, rel, cp[:, j]) for j in range(cp.shape[1])], axis=1)
            out.append(mp[use] - cmd)
        return np.concatenate(out) if out else np.zeros((0, cmd_pos.shape[1]))

    err = errors(0)
    if len(err) < 20:
        return {**empty, "actuation_lag_ms": lag_ms}
    out = {
        "actuation_lag_ms": lag_ms,
        "tracking_rms_rad": float(np.sqrt(np.mean(err**2))),
        "tracking_p95_rad": float(np.percentile(np.abs(err).max(axis=1), 95)),
        "aligned_rms_rad": None,
    }
    if lag_ms is not None:
        aligned = errors(int(round(lag_ms * 1e6)))
        out["aligned_rms_rad"] = float(np.sqrt(np.mean(aligned**2)))
    return out


def boundaries(rec: LoopRecording, control_frequency_hz: float, defer: bool) -> dict[str, Any]:
    """The chunk-boundary numbers of the recording (module docstring): chunk trajectories in
    arrival order; a hold (one point: the node's hold-position trajectory; the monitor records
    its zero stamp as the arrival time) ends what was executing, so the next chunk is not a
    replan (in the demo the scene is reset between the hold and the next chunk).
    (Tracking error: :func:`tracking`.)"""
    stats = HandoverStats(rec.joint_names, defer, window=1_000_000)
    dt_ns = round(1e9 / control_frequency_hz)
    ordered = sorted(rec.trajectories, key=lambda r: r.recv_ns)
    for t in ordered:
        if len(t.positions) == 1:
            stats.reset()
            continue
        dt = int(t.offsets_ns[1] - t.offsets_ns[0]) if len(t.offsets_ns) > 1 else dt_ns
        stats.on_trajectory(t.start_ns, t.offsets_ns, t.positions, t.recv_ns, dt)
    if ordered:
        last = ordered[-1]
        stats.flush(int((last.start_ns or last.recv_ns) + last.offsets_ns[-1]))
    out = stats.summary()
    out.pop("tracking_rms_rad", None)
    out.pop("tracking_rms_per_joint_rad", None)
    return out


def summarize(
    rec: LoopRecording,
    *,
    lower: np.ndarray,
    upper: np.ndarray,
    control_frequency_hz: float,
    execute_steps: int,
    cold_start_latency_ms: float,
    injected_delay_ms: float,
    duration_s: float,
    cache_path: Path | None = None,
    cache_entry: dict[str, Any] | None = None,
    real_time_factor: float = 1.0,
    defer_future_trajectories: bool = True,
    windows: list[tuple[int, int]] | None = None,
) -> dict[str, Any]:
    """All the numbers of the demo's summary table, JSON-ready.

    Times are on the loop's clock (sim time when ``real_time_factor`` != 1), except the
    engine's inference_ms, which is wall time; it is scaled to loop time where it is added
    to loop quantities.
    """
    diag = rec.diagnostics
    freq = _diag_float(diag, "control_frequency_hz") or control_frequency_hz
    steps = _diag_float(diag, "execute_steps") or execute_steps
    target_rate_hz = freq / steps
    chunks = rec.chunks
    rate_hz = None
    if len(chunks) >= 2:
        span_s = (chunks[-1].recv_ns - chunks[0].recv_ns) / 1e9
        rate_hz = (len(chunks) - 1) / span_s if span_s > 0 else None
    inference = [c.inference_ms for c in chunks]
    monitor_o2p = [(c.recv_ns - c.obs_stamp_ns) / 1e6 for c in chunks]
    o2p_p50 = _diag_float(diag, "obs_to_publish_p50_ms")
    o2p_p95 = _diag_float(diag, "obs_to_publish_p95_ms")
    o2p_source = "node"
    if o2p_p50 is None or o2p_p95 is None:
        o2p_p50, o2p_p95, o2p_source = percentile(monitor_o2p, 50), percentile(monitor_o2p, 95), "monitor"
    inf_p50 = percentile(inference, 50)
    learned = chunks[-1].latency_compensation_ms if chunks else None
    track = tracking(rec, max_lag_ms=max(300.0, injected_delay_ms + 250.0), windows=windows)
    bounds = boundaries(rec, freq, defer_future_trajectories)
    return {
        "duration_s": duration_s,
        "injected_delay_ms": injected_delay_ms,
        "chunks": len(chunks),
        "chunk_rate_hz": rate_hz,
        "target_rate_hz": target_rate_hz,
        "rate_fraction": (rate_hz / target_rate_hz) if rate_hz else 0.0,
        "inference_p50_ms": inf_p50,
        "inference_p95_ms": percentile(inference, 95),
        "obs_to_publish_p50_ms": o2p_p50,
        "obs_to_publish_p95_ms": o2p_p95,
        "obs_to_publish_source": o2p_source,
        "monitor_obs_to_publish_p50_ms": percentile(monitor_o2p, 50),
        "monitor_obs_to_publish_p95_ms": percentile(monitor_o2p, 95),
        "cold_start_latency_ms": cold_start_latency_ms,
        "learned_latency_ms": learned,
        "start_latency_ms": chunks[0].latency_compensation_ms if chunks else None,
        "latency_changes": len({round(c.latency_compensation_ms, 3) for c in chunks}) - 1 if chunks else 0,
        "first_learned_latency_ms": next(
            (
                c.latency_compensation_ms
                for c in chunks
                if c.latency_compensation_ms != chunks[0].latency_compensation_ms
            ),
            None,
        ),
        "loop_inference_plus_delay_ms": (
            (inf_p50 * real_time_factor + injected_delay_ms) if inf_p50 is not None else None
        ),
        "real_time_factor": real_time_factor,
        **track,
        "chunk_strategy": diag.get("chunk_strategy"),
        "anchor_to_command": diag.get("anchor_to_command"),
        "replans": bounds["replans"],
        "boundary_jump_p50_rad": bounds["jump_pos_p50_rad"],
        "boundary_jump_p95_rad": bounds["jump_pos_p95_rad"],
        "boundary_jump_max_rad": bounds["jump_pos_max_rad"],
        "boundary_velocity_jump_p50_rad_s": bounds["jump_vel_p50_rad_s"],
        "boundary_velocity_jump_p95_rad_s": bounds["jump_vel_p95_rad_s"],
        "boundary_velocity_jump_max_rad_s": bounds["jump_vel_max_rad_s"],
        "boundary_per_joint": {"position_rad": bounds["jump_pos_per_joint_rad"],
                               "velocity_rad_s": bounds["jump_vel_per_joint_rad_s"]},
        "commanded_jerk_rms_rad_s3": bounds["jerk_rms_rad_s3"],
        "commanded_jerk_rms_per_joint_rad_s3": bounds["jerk_rms_per_joint_rad_s3"],
        **limit_check(rec, lower, upper),
        "joint_states": len(rec.meas_t_ns),
        "images": rec.images,
        "calibration_state": diag.get("calibration_state"),
        "calibration_cache": str(cache_path) if cache_path else None,
        "cache_entry_latency_ms": (cache_entry or {}).get("latency_compensation_ms"),
        "cache_entry_latency_source": (cache_entry or {}).get("latency_source"),
    }


def _ms(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f} ms"


def _end_to_end(s: dict[str, Any]) -> str:
    """p95 obs->publish + the measured actuation lag: what the calibrator is meant to learn."""
    o2p, lag = s["obs_to_publish_p95_ms"], s["actuation_lag_ms"]
    if o2p is None or lag is None:
        return "n/a (not enough motion to measure the lag)"
    servo = lag - s["injected_delay_ms"]
    return (
        f"obs->publish p95 {o2p:.1f} + actuation lag {lag:.1f} (injected {s['injected_delay_ms']:g} "
        f"+ servo response {servo:.1f}) = {o2p + lag:.1f} ms"
    )


def _inference_loop_time(s: dict[str, Any]) -> str:
    rtf, inf = s.get("real_time_factor", 1.0), s["inference_p50_ms"]
    if rtf == 1.0 or inf is None:
        return _ms(inf)
    return f"{_ms(inf)} wall = {_ms(inf * rtf)} sim time"


def _latency(s: dict[str, Any]) -> str:
    start, cold = s["start_latency_ms"], s["cold_start_latency_ms"]
    origin = "the embodiment's cold start" if start == cold else f"from the cache; cold start {_ms(cold)}"
    n = s["latency_changes"]
    return (
        f"learned {_ms(s['learned_latency_ms'])} (started at {_ms(start)}, {origin}; "
        f"first update {_ms(s['first_learned_latency_ms'])}, {n} live update{'' if n == 1 else 's'})"
    )


def _tracking(s: dict[str, Any]) -> str:
    if s["tracking_rms_rad"] is None:
        return "n/a"
    text = f"RMS {s['tracking_rms_rad']:.3f} rad, p95 {s['tracking_p95_rad']:.3f} rad (commanded vs measured)"
    if s["aligned_rms_rad"] is not None:
        text += f"; RMS {s['aligned_rms_rad']:.3f} rad with the lag removed"
    return text


def _boundaries(s: dict[str, Any]) -> tuple[str, str, str]:
    """(jumps, per joint p95, jerk) lines of the table."""
    if not s.get("replans"):
        return "n/a (no replan recorded)", "n/a", "n/a"
    jumps = (f"position p50 {s['boundary_jump_p50_rad']:.4f} / p95 {s['boundary_jump_p95_rad']:.4f} / max "
             f"{s['boundary_jump_max_rad']:.4f} rad, velocity p95 {s['boundary_velocity_jump_p95_rad_s']:.3f} rad/s "
             f"(worst joint, {s['replans']} replans)")
    per = s["boundary_per_joint"]
    joints = "n/a" if not per["position_rad"] else " ".join(f"{v:.4f}" for v in per["position_rad"]["p95"]) + " rad"
    jerk = "n/a" if s["commanded_jerk_rms_rad_s3"] is None else f"RMS {s['commanded_jerk_rms_rad_s3']:.1f} rad/s^3"
    return jumps, joints, jerk


def _limits(s: dict[str, Any]) -> str:
    text = f"{s['points_checked']} published points, {s['points_outside']} outside"
    if s["points_outside"]:
        text += (
            f" (chunks {s['chunk_points_outside']}, trajectories {s['trajectory_points_outside']}, "
            f"hold-position {s['hold_points_outside']}; worst {s['max_violation_rad']:.3f} rad)"
        )
    return text


def _cache(s: dict[str, Any]) -> str:
    text = f"{s['calibration_cache']}"
    if s["cache_entry_latency_ms"] is not None:
        text += f" (entry latency {s['cache_entry_latency_ms']:.1f} ms, {s['cache_entry_latency_source']})"
    return text


def format_table(s: dict[str, Any]) -> str:
    """The human summary: one metric a row, what it is compared with on the right."""
    rate = "n/a" if s["chunk_rate_hz"] is None else f"{s['chunk_rate_hz']:.2f} Hz"
    rows = [
        ("chunk publish rate", f"{rate} of {s['target_rate_hz']:.2f} Hz target "
                               f"({100 * s['rate_fraction']:.0f}%), {s['chunks']} chunks"),
        ("inference", f"p50 {_ms(s['inference_p50_ms'])}, p95 {_ms(s['inference_p95_ms'])}"),
        ("observation -> publish", f"p50 {_ms(s['obs_to_publish_p50_ms'])}, "
                                   f"p95 {_ms(s['obs_to_publish_p95_ms'])} ({s['obs_to_publish_source']})"),
        ("latency_compensation_ms", _latency(s)),
        ("loop really has", f"inference p50 {_inference_loop_time(s)} + injected delay "
                            f"{_ms(s['injected_delay_ms'], 0)} = {_ms(s['loop_inference_plus_delay_ms'])}"),
        ("", f"end to end: {_end_to_end(s)}"),
        ("tracking error", _tracking(s)),
        ("chunk strategy", f"{s.get('chunk_strategy') or 'n/a'}"
                           + ("" if s.get("anchor_to_command") is None else
                              f", anchored to the command: {s['anchor_to_command']}")),
        ("boundary jump", _boundaries(s)[0]),
        ("  p95 per joint", _boundaries(s)[1]),
        ("commanded jerk", _boundaries(s)[2]),
        ("joint limits (so100)", _limits(s)),
        ("calibration cache", _cache(s)),
    ]  # fmt: skip
    if s.get("real_time_factor", 1.0) != 1.0:
        rows.append(("clock", f"sim time at {s['real_time_factor']:g}x real time (inference is wall time)"))
    episodes = s.get("episodes")
    if episodes is not None:
        if s["tracking_rms_rad"] is not None:
            rows[[name for name, _ in rows].index("tracking error")] = (
                "tracking error", _tracking(s) + " (within episodes)")
        rows.insert(0, ("episodes", _episodes(s)))
    width = max(len(name) for name, _ in rows)
    title = f"reflex-ros demo summary: {s['duration_s']:.0f} s closed loop, actuation delay {s['injected_delay_ms']:g} ms"
    lines = [title, "-" * len(title)]
    lines += [f"  {name:<{width}}  {value}" for name, value in rows]
    if episodes is not None:
        n = len(episodes)
        rate = f" ({100 * s['successes'] / n:.0f}%)" if n else ""
        lines.append(f"  {s['success']}{rate}")
    return "\n".join(lines)


def _episodes(s: dict[str, Any]) -> str:
    """One entry per episode: seed and outcome."""
    episodes = s["episodes"]
    if not episodes:
        return f"none completed of {s.get('episodes_requested', '?')}"
    parts = [f"seed {e['seed']} {'ok ' + format(e['time_s'], '.1f') + ' s' if e['success'] else 'FAIL'}"
             for e in episodes]
    chunks = [", ".join(parts[i:i + 5]) for i in range(0, len(parts), 5)]
    return "\n".join(chunks[:1] + [" " * 27 + c for c in chunks[1:]])


def write_json(summary: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
