"""What /diagnostics reports about the loop: counters and rolling latency windows.

:class:`LoopStats` is a :class:`~reflex_ros.control.loop.LoopSubscriber`; the node keeps one
for its whole life (counters add up across configure cycles) and hands it to each loop.
:func:`diagnostic_values` turns it into the key/values of the node's DiagnosticStatus.
Counters are plain ints (single increments are atomic under the GIL); windows take a lock.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reflex_ros.control.handover import HandoverStats
from reflex_ros.control.loop import (
    ENGINE_ERROR,
    HELD,
    NO_OBSERVATION,
    OUT_OF_ORDER,
    OVERRUN,
    REFUSED,
    STALE,
    LoopSubscriber,
    PublishedChunk,
)
from reflex_ros.control.observation import StampError, StateFault
from reflex_ros.engine.types import ReflexError

# A refusal stays in /diagnostics this long after it last happened (diagnostics tick at
# 1 Hz, so every refusal is in at least two messages; a steady fault stays in all of them).
RECENT_S = 3.0
STATE_FAULT, BAD_STAMP, CHUNK_REFUSED = "state_fault", "bad_stamp", "chunk_refused"


class RollingWindow:
    """The last ``size`` samples; percentiles on demand (diagnostics run at 1 Hz)."""

    def __init__(self, size: int = 500) -> None:
        self._samples: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, value: float) -> None:
        with self._lock:
            self._samples.append(float(value))

    def __len__(self) -> int:
        return len(self._samples)

    def percentiles(self, qs: Iterable[float]) -> list[float | None]:
        with self._lock:
            data = np.fromiter(self._samples, dtype=np.float64)
        if data.size == 0:
            return [None for _ in qs]
        return [float(v) for v in np.percentile(data, list(qs))]

    def values(self) -> np.ndarray:
        with self._lock:
            return np.fromiter(self._samples, dtype=np.float64)


@dataclass
class LoopStats(LoopSubscriber):
    """Everything /diagnostics reports about the loop."""

    chunks_published: int = 0
    overruns: int = 0  # control cycles skipped because the previous one ran long
    dropped_messages: int = 0  # input messages rejected (bad encoding, size, missing joint, NaN)
    stale_observations: int = 0  # cycles skipped by the max_observation_age_ms watchdog
    no_observation: int = 0  # cycles with no synchronized observation yet
    refused_chunks: int = 0  # chunks with non-finite values (never published)
    engine_errors: int = 0
    state_faults: int = 0  # joint states refused: beyond the limits by more than the tolerance
    refused_stamps: int = 0  # inputs stamped in the future / out of order, observations older than the last
    clamped_position_values: int = 0  # values the position limits changed, all chunks
    clamped_step_values: int = 0  # values the per-step change limit changed, all chunks
    inference_ms: RollingWindow = field(default_factory=RollingWindow)
    obs_to_publish_ms: RollingWindow = field(default_factory=RollingWindow)
    # obs_to_publish minus engine time minus the wait between the newest input arriving
    # and the cycle starting: what the node itself adds (decode, sync, chunking, publish)
    node_overhead_ms: RollingWindow = field(default_factory=RollingWindow)
    # its two parts: stamp -> buffered (DDS, deserialization, checks, sync add) for the newest
    # input of the set, and cycle start -> publish minus the engine (decode, plan, publish)
    input_latency_ms: RollingWindow = field(default_factory=RollingWindow)
    cycle_overhead_ms: RollingWindow = field(default_factory=RollingWindow)
    # per chunk: obs_to_publish - engine, and the part of it spent waiting for the control
    # tick after the newest input arrived (set by the input and control rates, not the node)
    non_engine_ms: RollingWindow = field(default_factory=RollingWindow)
    tick_wait_ms: RollingWindow = field(default_factory=RollingWindow)
    publish_period_ms: RollingWindow = field(default_factory=RollingWindow)
    last_error: str = ""
    last_skipped_steps: int = 0
    held: bool = False  # the node's ~/hold latch (set by the node)
    # chunk boundaries: jump at every replan, commanded jerk, tracking error (control/handover.py)
    handover: HandoverStats | None = field(default=None, repr=False)
    _last_publish_ns: int | None = field(default=None, repr=False)
    # problem kind -> (time.monotonic() it last happened, what it was): what /diagnostics names
    _recent: dict[str, tuple[float, str]] = field(default_factory=dict, repr=False)

    def _note(self, kind: str, text: str) -> None:
        self._recent[kind] = (time.monotonic(), text)

    def recent(self, kind: str, within_s: float = RECENT_S) -> str | None:
        """The last problem of ``kind`` if it happened in the last ``within_s`` seconds."""
        seen = self._recent.get(kind)
        return seen[1] if seen is not None and time.monotonic() - seen[0] <= within_s else None

    def on_start(self, loop: Any) -> None:
        self._last_publish_ns = None  # the first chunk after activate starts a new period series
        if self.handover is not None:
            self.handover.reset()

    def on_measurement(self, stamp_ns: int, positions: np.ndarray) -> None:
        if self.handover is not None:
            self.handover.on_measurement(stamp_ns, positions)

    def on_input_rejected(self, topic: str, error: Exception) -> None:
        self.dropped_messages += 1
        self.last_error = str(error) if isinstance(error, ReflexError) else f"{topic}: {type(error).__name__}: {error}"
        if isinstance(error, StateFault):
            self.state_faults += 1
            self._note(STATE_FAULT, self.last_error)
        elif isinstance(error, StampError):
            self.refused_stamps += 1
            self._note(BAD_STAMP, self.last_error)

    def on_skipped(self, reason: str, count: int = 1, detail: str = "") -> None:
        if reason == NO_OBSERVATION:
            self.no_observation += count
        elif reason == STALE:
            self.stale_observations += count
        elif reason == OVERRUN:
            self.overruns += count
        elif reason == OUT_OF_ORDER:
            self.refused_stamps += count
            self._note(BAD_STAMP, detail)
        elif reason == REFUSED:
            self.refused_chunks += count
            self.last_error = detail
            self._note(CHUNK_REFUSED, detail)
        elif reason == ENGINE_ERROR:
            self.engine_errors += count
            self.last_error = detail
        elif reason == HELD and self.handover is not None:
            self.handover.reset()  # a hold replaced the trajectory: the next chunk is no replan

    def on_published(self, event: PublishedChunk) -> None:
        self.chunks_published += 1
        plan, obs = event.plan, event.observation
        self.last_skipped_steps = plan.skipped_steps
        self.clamped_position_values += plan.n_position_clamped
        self.clamped_step_values += plan.n_delta_clamped
        infer_ms, o2p_ms = event.inference_ms, event.obs_to_publish_ms
        newest = obs.newest_input()
        newest_ready = obs.ready_ns[newest]
        tick_wait_ms = max(0, event.cycle_start_ns - newest_ready) * 1e-6
        self.inference_ms.add(infer_ms)
        self.obs_to_publish_ms.add(o2p_ms)
        self.non_engine_ms.add(o2p_ms - infer_ms)
        self.tick_wait_ms.add(tick_wait_ms)
        self.node_overhead_ms.add(o2p_ms - infer_ms - tick_wait_ms)
        self.input_latency_ms.add((newest_ready - obs.stamps_ns[newest]) * 1e-6)
        self.cycle_overhead_ms.add((event.published_ns - event.cycle_start_ns) * 1e-6 - infer_ms)
        if self._last_publish_ns is not None:
            self.publish_period_ms.add((event.published_ns - self._last_publish_ns) * 1e-6)
        self._last_publish_ns = event.published_ns
        names = event.settings.joint_names
        if self.handover is None or self.handover.joint_names != tuple(names):
            self.handover = HandoverStats(names, event.settings.defer_future_trajectories)
        self.handover.set_defer(event.settings.defer_future_trajectories)
        self.handover.on_trajectory(plan.stamp_ns, plan.point_times_ns() - plan.stamp_ns, plan.positions,
                                    event.published_ns, plan.dt_ns, origin=np.asarray(obs.observation.state))


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def handover_values(stats: LoopStats) -> dict[str, str]:
    """Chunk boundaries as diagnostic key/values: the jump at every replan (old vs new command
    at the takeover; p50/p95/max of the worst joint, p95 per joint), commanded jerk RMS and
    commanded-vs-measured tracking RMS over the recent window."""
    h = stats.handover.summary() if stats.handover is not None else {}

    def num(key: str, digits: int = 4) -> str:
        value = h.get(key)
        return "n/a" if value is None else f"{value:.{digits}f}"

    def per_joint(key: str) -> str:
        value = h.get(key)
        return "n/a" if not value else ",".join(f"{v:.4f}" for v in value["p95"])

    return {
        "replans": str(h.get("replans", 0)),
        "boundary_jump_p50_rad": num("jump_pos_p50_rad"), "boundary_jump_p95_rad": num("jump_pos_p95_rad"),
        "boundary_jump_max_rad": num("jump_pos_max_rad"),
        "boundary_jump_p95_per_joint_rad": per_joint("jump_pos_per_joint_rad"),
        "boundary_velocity_jump_p50_rad_s": num("jump_vel_p50_rad_s"),
        "boundary_velocity_jump_p95_rad_s": num("jump_vel_p95_rad_s"),
        "boundary_velocity_jump_max_rad_s": num("jump_vel_max_rad_s"),
        "boundary_velocity_jump_p95_per_joint_rad_s": per_joint("jump_vel_per_joint_rad_s"),
        "commanded_jerk_rms_rad_s3": num("jerk_rms_rad_s3", 1),
        "tracking_rms_rad": num("tracking_rms_rad"),
    }


def stats_values(stats: LoopStats) -> dict[str, str]:
    """The loop's counters and percentiles as diagnostic key/values."""
    inf50, inf95, inf99 = stats.inference_ms.percentiles((50, 95, 99))
    o50, o95, o99 = stats.obs_to_publish_ms.percentiles((50, 95, 99))
    n50, n95, n99 = stats.node_overhead_ms.percentiles((50, 95, 99))
    i50, i99 = stats.input_latency_ms.percentiles((50, 99))
    c50, c99 = stats.cycle_overhead_ms.percentiles((50, 99))
    e50, e99 = stats.non_engine_ms.percentiles((50, 99))
    w50, w99 = stats.tick_wait_ms.percentiles((50, 99))
    periods = stats.publish_period_ms.values()
    rate = f"{1000.0 / float(np.mean(periods)):.2f}" if periods.size else "n/a"
    return {
        "inference_p50_ms": _fmt(inf50), "inference_p95_ms": _fmt(inf95), "inference_p99_ms": _fmt(inf99),
        "obs_to_publish_p50_ms": _fmt(o50), "obs_to_publish_p95_ms": _fmt(o95),
        "obs_to_publish_p99_ms": _fmt(o99),
        "node_overhead_p50_ms": _fmt(n50), "node_overhead_p95_ms": _fmt(n95),
        "node_overhead_p99_ms": _fmt(n99),
        "input_latency_p50_ms": _fmt(i50), "input_latency_p99_ms": _fmt(i99),
        "cycle_overhead_p50_ms": _fmt(c50), "cycle_overhead_p99_ms": _fmt(c99),
        "obs_to_publish_minus_engine_p50_ms": _fmt(e50), "obs_to_publish_minus_engine_p99_ms": _fmt(e99),
        "tick_wait_p50_ms": _fmt(w50), "tick_wait_p99_ms": _fmt(w99),
        "publish_rate_hz": rate,
        "chunks_published": str(stats.chunks_published), "overruns": str(stats.overruns),
        "dropped_messages": str(stats.dropped_messages),
        "stale_observations": str(stats.stale_observations),
        "no_observation_cycles": str(stats.no_observation),
        "refused_chunks": str(stats.refused_chunks), "engine_errors": str(stats.engine_errors),
        "state_faults": str(stats.state_faults), "refused_stamps": str(stats.refused_stamps),
        "held": "true" if stats.held else "false",
        "clamped_position_values": str(stats.clamped_position_values),
        "clamped_step_values": str(stats.clamped_step_values),
        "skipped_steps": str(stats.last_skipped_steps),
        **handover_values(stats),
        "last_error": stats.last_error,
    }


def diagnostic_status(lifecycle_state: str, stats: LoopStats, *, watchdog_stale: bool,
                      engine_info: Any | None, settings: Any, calibration_state: str) -> tuple[str, str, dict[str, str]]:
    """(level, message, values) of the node's one DiagnosticStatus; level OK / WARN / ERROR."""
    values = {"lifecycle_state": lifecycle_state}
    s = settings
    if engine_info is not None:
        values.update(engine=engine_info.engine, provider=engine_info.provider, dtype=engine_info.dtype,
                      nfe=str(s.nfe or engine_info.extra.get("default_nfe", "default")),
                      model_hash=engine_info.model_hash)
    values.update(
        cfg_beta="off" if not s.cfg_beta else f"{s.cfg_beta:g}", chunk_strategy=str(s.chunk_strategy),
        anchor_to_command="true" if s.anchor_to_command else "false",
        control_frequency_hz=f"{s.control_frequency_hz:g}", execute_steps=str(s.execute_steps),
        latency_compensation_ms=f"{s.latency_compensation_ms:g}", calibration_state=calibration_state)
    values.update(stats_values(stats))
    level, message = "OK", lifecycle_state
    if lifecycle_state == "active":
        # the most serious current problem, named (a refusal outranks its consequences:
        # refused joint states make the observations go stale, refused chunks publish nothing)
        message = "publishing chunks"
        if fault := stats.recent(STATE_FAULT):
            level, message = "ERROR", f"joint state refused: {fault}"
        elif refused := stats.recent(CHUNK_REFUSED):
            level, message = "ERROR", f"chunks refused: {refused}"
        elif stats.held:
            level, message = "WARN", "held by ~/hold: no chunks until released"
        elif stamp := stats.recent(BAD_STAMP):
            level, message = "WARN", f"inputs refused: {stamp}"
        elif watchdog_stale:
            level, message = "WARN", "stale observations: inference paused"
        elif stats.chunks_published == 0:
            level, message = "WARN", "waiting for synchronized observations"
    elif stats.held:
        message = f"{lifecycle_state}; held by ~/hold (chunks stay off after activate until released)"
    if lifecycle_state == "unconfigured" and stats.last_error:
        level, message = "ERROR", stats.last_error
    return level, message, values


__all__ = ["LoopStats", "RollingWindow", "diagnostic_status", "handover_values", "stats_values"]
