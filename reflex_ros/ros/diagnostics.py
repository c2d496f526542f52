"""Counters and rolling latency windows for the node, and their /diagnostics message.

The counters are plain Python (the control loop and the executor thread both write them;
single integer increments are atomic under the GIL, windows take a lock). The message
builder imports diagnostic_msgs lazily so the stats stay usable without ROS.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np


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
class NodeStats:
    """Everything /diagnostics reports about the loop."""

    chunks_published: int = 0
    overruns: int = 0  # control cycles skipped because the previous one ran long
    dropped_messages: int = 0  # input messages rejected (bad encoding, size, missing joint, NaN)
    stale_observations: int = 0  # cycles skipped by the max_observation_age_ms watchdog
    no_observation: int = 0  # cycles with no synchronized observation yet
    refused_chunks: int = 0  # chunks with non-finite values (never published)
    engine_errors: int = 0
    inference_ms: RollingWindow = field(default_factory=RollingWindow)
    obs_to_publish_ms: RollingWindow = field(default_factory=RollingWindow)
    # obs_to_publish minus engine time minus the wait between the newest input arriving
    # and the cycle starting: what the node itself adds (decode, sync, chunking, publish)
    node_overhead_ms: RollingWindow = field(default_factory=RollingWindow)
    # its two parts: stamp -> decoded and buffered (DDS, deserialization, decode, sync add)
    # for the newest input of the set, and cycle start -> publish minus the engine
    input_latency_ms: RollingWindow = field(default_factory=RollingWindow)
    cycle_overhead_ms: RollingWindow = field(default_factory=RollingWindow)
    # per chunk: obs_to_publish - engine, and the part of it spent waiting for the control
    # tick after the newest input arrived (set by the input and control rates, not the node)
    non_engine_ms: RollingWindow = field(default_factory=RollingWindow)
    tick_wait_ms: RollingWindow = field(default_factory=RollingWindow)
    publish_period_ms: RollingWindow = field(default_factory=RollingWindow)
    last_error: str = ""
    watchdog_stale: bool = False
    last_skipped_steps: int = 0

    def reset_windows(self) -> None:
        for w in (self.inference_ms, self.obs_to_publish_ms, self.node_overhead_ms, self.publish_period_ms,
                  self.input_latency_ms, self.cycle_overhead_ms, self.non_engine_ms, self.tick_wait_ms):
            with w._lock:
                w._samples.clear()


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def build_diagnostic_array(*, stamp, node_name: str, hardware_id: str, level: str, message: str,
                           values: dict[str, str]):
    """A DiagnosticArray with one status; ``level`` is OK / WARN / ERROR / STALE."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    levels = {"OK": DiagnosticStatus.OK, "WARN": DiagnosticStatus.WARN,
              "ERROR": DiagnosticStatus.ERROR, "STALE": DiagnosticStatus.STALE}
    status = DiagnosticStatus(level=levels[level], name=f"{node_name}: policy", message=message,
                              hardware_id=hardware_id)
    status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
    arr = DiagnosticArray()
    arr.header.stamp = stamp
    arr.status = [status]
    return arr


def stats_values(stats: NodeStats) -> dict[str, str]:
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
        "skipped_steps": str(stats.last_skipped_steps),
        "last_error": stats.last_error,
    }
