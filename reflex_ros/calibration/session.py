"""The one object the policy node talks to when ``auto_calibrate`` is on.

Lifecycle, as the node drives it::

    session = CalibrationSession(cache_path, embodiment, model_hash, explicit_params, force, log)
    res = session.resolve(engine, control_frequency_hz=30.0, execute_steps=10)   # configure
    ... each published chunk:  new = session.record_loop_latency(obs_to_publish_ms)
    ... each lag estimate:     session.record_actuation_lag(lag_ms)
    ... a live rate change:    res = session.re_resolve(control_frequency_hz=..., execute_steps=...)
    session.flush()                                                                # cleanup

A fresh cache entry makes ``resolve`` instant (no engine call at all); a missing or stale
one costs one measurement pass on synthetic zero observations (the robot is never involved)
and writes the entry. The override ladder (explicit > cache > embodiment) and its log lines
live in :mod:`reflex_ros.calibration.resolver`; the learning rule in
:mod:`reflex_ros.calibration.tracker`.

Thread model: ``record_*`` may be called from any thread. Persisting a learned value
(lock + fsync) runs on a background thread so a control loop never waits on the disk.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reflex_ros.calibration import resolver as rs
from reflex_ros.calibration.cache import (
    CacheWriteError,
    CalibrationCache,
    entry_key,
    entry_problem,
    staleness_reasons,
)
from reflex_ros.calibration.fingerprint import collect_fingerprint, gpu_compute_capability, reflex_version
from reflex_ros.calibration.measure import LOW_QUALITY, Measurement, measure_engine, synthetic_observation
from reflex_ros.calibration.tracker import CHECK_EVERY, LatencyTracker
from reflex_ros.engine.types import Engine, ReflexError
from reflex_ros.vocab import CPU, FP32, ONNX, TORCH

LOG = rs.LOG_PREFIX


@dataclass
class Resolution:
    """What the node should serve with, and how calibration got there."""

    nfe: int
    chunk_size: int
    latency_compensation_ms: float
    provider: str
    variant: str
    cache_hit: bool
    measure_s: float
    state: str
    key: str = ""
    sources: dict[str, str] = field(default_factory=dict)
    latency_source: str = "cold_start"  # "cold_start" | "learned" | "explicit"
    stale_reasons: list[str] = field(default_factory=list)
    expert_step_ms: float = 0.0
    prefix_ms: float = 0.0
    chunk_period_ms: float = 0.0
    budget_ms: float = 0.0
    predicted_ms: float = 0.0
    nfe_fits: bool = True
    resolve_s: float = 0.0
    runtime_matches: bool = True  # the loaded engine runs the selected provider/variant
    cache_path: str = ""


def export_precisions(export_dir: str | Path | None) -> tuple[str, ...]:
    """Precisions an export's graphs are stored in: fp32, always (``reflex-ros export`` writes
    fp32 graphs; TensorRT builds fp16 kernels from them, which the resolver's provider rule
    covers). The argument is kept for the day an exporter writes other graphs."""
    return (rs.FP32,)


def torch_cuda_available() -> bool:
    """Whether torch sees a GPU (False without torch: the ONNX-only install)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def onnx_providers() -> tuple[str, ...]:
    """Execution providers the installed onnxruntime can start here (CPU only if it is
    missing): the engine's own list, so the calibrator never selects TensorRT where
    onnxruntime-gpu lists it but TensorRT's libraries are absent."""
    try:
        from reflex_ros.engine.onnx_runtime import available_providers
    except ImportError:
        return (rs.CPU,)
    return tuple(available_providers())


def _engine_runtime(engine: Engine) -> tuple[str, str]:
    """(provider, variant) the loaded engine actually runs, in the resolver's names."""
    info = engine.info
    provider = info.provider
    if info.engine == TORCH:
        provider = rs.CUDA if str(provider).startswith("cuda") else rs.CPU
    return provider, info.dtype


class CalibrationSession:
    """Calibration for one (embodiment, model) on this host. See the module docstring."""

    def __init__(
        self,
        cache_path: str | Path | None,
        embodiment: Any,
        model_hash: str | None,
        explicit_params: Mapping[str, object] | None,
        force: bool,
        log: Callable[[str], None],
        warmup_iters: int = 10,
        measurement_iters: int = 100,
        *,
        max_batch: int | None = None,
        tracker_check_every: int = CHECK_EVERY,
        include_prefix_in_budget: bool = True,
    ) -> None:
        self.embodiment = embodiment
        self.model_hash = model_hash
        self.explicit: dict[str, object] = {k: v for k, v in (explicit_params or {}).items() if v is not None}
        self.force = bool(force)
        self._log = log
        self.warmup_iters = int(warmup_iters)
        self.measurement_iters = int(measurement_iters)
        self.max_batch = max_batch if max_batch is not None else (2 if self.explicit.get("cfg_beta") is not None else 1)
        self.include_prefix = include_prefix_in_budget
        self.cache = CalibrationCache(cache_path, warn=log)
        self._logged: set[str] = set()  # ladder lines and one-time warnings already shown
        self._lock = threading.Lock()
        self._persist_lock = threading.Lock()
        self._pending: list[threading.Thread] = []
        explicit_latency = rs.explicit_value(self.explicit, "latency_compensation_ms")
        self.tracker = LatencyTracker(enabled=explicit_latency is None, check_every=tracker_check_every)
        if explicit_latency is not None:
            self._log_once("latency-explicit", f"{LOG} latency_compensation_ms={rs.format_value(explicit_latency[1])} "
                                               "was set explicitly; passive latency learning is off")
        self._entry: dict[str, Any] | None = None
        self._key = ""
        self._supported_nfe: tuple[int, ...] = ()
        self._engine_chunk_size: int | None = None
        self._runtime: tuple[str, str] = (CPU, FP32)
        self._engine_kind = ONNX
        self._hardware: tuple[tuple[int, int] | None, tuple[str, ...], tuple[str, ...]] = (None, (CPU,), (FP32,))
        self._resolve_state = "not resolved"
        self._last: Resolution | None = None

    # -- public API

    @property
    def key(self) -> str:
        return self._key

    @property
    def state(self) -> str:
        """Short diagnostics text: "cache hit; warming 12/30", "measured in 6.1 s; learned 83.2 ms"."""
        with self._lock:
            return f"{self._resolve_state}; {self.tracker.state()}"

    def select_runtime(self, export_dir: str | Path, engine: str = ONNX) -> tuple[str, str]:
        """Steps 1-2 before an engine exists: (variant, provider) to load the export with.

        Explicit ``dtype``/``variant`` and ``provider`` parameters win, as everywhere."""
        fingerprint = collect_fingerprint()
        capability, providers = gpu_compute_capability(fingerprint), onnx_providers()
        if engine == TORCH:
            cuda = torch_cuda_available()
            variant, _ = rs.select_torch_precision(capability, cuda)
            provider = rs.CUDA if (capability is not None and cuda) else rs.CPU
        else:
            variant, _ = rs.select_variant(export_precisions(export_dir), capability, providers, self.max_batch)
            provider, _ = rs.select_provider(variant, providers, capability is not None, self.max_batch)
        explicit_variant = rs.explicit_value(self.explicit, "variant")
        explicit_provider = rs.explicit_value(self.explicit, "provider")
        return (str(explicit_variant[1]) if explicit_variant else variant,
                str(explicit_provider[1]) if explicit_provider else provider)

    def resolve(self, engine: Engine, *, control_frequency_hz: float, execute_steps: int) -> Resolution:
        """Cache hit (fresh): instant, no engine call. Miss or stale: measure, then write."""
        start = time.perf_counter()
        self.tracker.control_period_ms = 1000.0 / float(control_frequency_hz)
        fingerprint, version = self._bind_engine(engine)
        loaded = self.cache.load()
        document = loaded.document if loaded.status == "ok" else None
        entry = document["entries"].get(self._key) if document else None
        reasons: list[str] = []
        if entry is not None:
            # a malformed entry (any field; it may not even be an object) is stale, never a crash
            reasons = staleness_reasons(document, entry, fingerprint, version, force=self.force)
            measured_with = (str(entry.get("provider")), str(entry.get("variant"))) if isinstance(entry, dict) else None
            if measured_with is not None and not entry_problem(entry) and measured_with != self._runtime:
                # The timings describe another runtime (a provider/dtype switch): re-measure.
                reasons.append(f"measured with {measured_with[0]} {measured_with[1]}, the engine runs "
                               f"{self._runtime[0]} {self._runtime[1]}")
        if entry is not None and not reasons:
            self._entry = dict(entry)
            self._resolve_state = "cache hit"
            self._log(f"{LOG} cache hit for {self._key} in {self.cache.path} (measured {entry.get('measured_at', '?')}, "
                      f"source {entry.get('source', 'measured')}); no measurement needed")
            resolution = self._resolve_from_entry(control_frequency_hz, execute_steps, cache_hit=True,
                                                  measure_s=0.0, stale=[])
        else:
            if entry is None:
                self._log(f"{LOG} no calibration for {self._key} in {self.cache.path}; measuring "
                          f"({self.warmup_iters} warm-up + {self.measurement_iters} timed iterations on synthetic "
                          "observations; the robot is not moved)")
            else:
                self._log(f"{LOG} cache stale ({'; '.join(reasons)}) for {self._key}; re-measuring")
            measurement = measure_engine(engine, synthetic_observation(engine.info), None,
                                         self.warmup_iters, self.measurement_iters)
            resolution = self._store_measurement(measurement, fingerprint, version, control_frequency_hz,
                                                 execute_steps, source="measured", stale=reasons)
        resolution.resolve_s = time.perf_counter() - start
        return resolution

    def calibrate_from_measurement(
        self,
        engine: Engine,
        measurement: Measurement,
        *,
        control_frequency_hz: float,
        execute_steps: int,
        source: str,
        learned_latency_ms: float | None = None,
        latency_parts: tuple[float, float | None] | None = None,
    ) -> Resolution:
        """Write an entry from a measurement made elsewhere (bag replay: ``source="bag:<file>"``),
        optionally with a latency learned from the recording and its parts (observation-to-
        publish p95, actuation lag), and resolve from it."""
        fingerprint, version = self._bind_engine(engine)
        return self._store_measurement(measurement, fingerprint, version, control_frequency_hz, execute_steps,
                                       source=source, stale=[], learned_latency_ms=learned_latency_ms,
                                       latency_parts=latency_parts)

    def re_resolve(self, *, control_frequency_hz: float, execute_steps: int) -> Resolution:
        """Re-run the resolver from the cached measurement (a live rate change); no engine call."""
        if self._entry is None:
            raise ReflexError("CalibrationSession.re_resolve() called before resolve(engine, ...)")
        start = time.perf_counter()
        self.tracker.control_period_ms = 1000.0 / float(control_frequency_hz)
        before = self._last
        resolution = self._resolve_from_entry(control_frequency_hz, execute_steps, cache_hit=True, measure_s=0.0,
                                              stale=[])
        resolution.resolve_s = time.perf_counter() - start
        if before is not None:
            changes = [f"{p} {getattr(before, p)} -> {getattr(resolution, p)}" for p in ("nfe", "chunk_size")
                       if getattr(before, p) != getattr(resolution, p)]
            self._log(f"{LOG} re-resolved for {control_frequency_hz:g} Hz x {execute_steps} steps "
                      f"({resolution.chunk_period_ms:.1f} ms chunk period): {', '.join(changes) or 'no change'}")
        return resolution

    def record_loop_latency(self, obs_to_publish_ms: float) -> float | None:
        """One chunk's observation-to-publish latency. Returns a new latency_compensation_ms
        when the tracker updates (and persists it to the cache in the background)."""
        with self._lock:
            value = self.tracker.add(obs_to_publish_ms)
        if value is None:
            return None
        lag = self.tracker.actuation_lag_ms
        self._log(f"{LOG} learned latency_compensation_ms={value:.1f} (p95 observation-to-publish over "
                  f"{self.tracker.n_samples} chunks + actuation lag {lag or 0.0:.1f} ms); persisting to {self.cache.path}")
        if self._entry is not None:
            self._entry.update(self._learned_fields(value))
            thread = threading.Thread(target=self._persist_learned, args=(value,), name="reflex-calib-persist",
                                      daemon=True)
            self._pending.append(thread)
            thread.start()
        return value

    def _learned_fields(self, value: float) -> dict[str, Any]:
        """The cache fields of a learned latency: the value, its source and its two parts."""
        with self._lock:
            parts = self.tracker.learned_parts
        o2p, lag = parts if parts is not None else (None, None)
        return {"latency_compensation_ms": value, "latency_source": "learned", "obs_to_publish_p95_ms": o2p,
                "actuation_lag_ms": lag}

    def record_actuation_lag(self, lag_ms: float) -> None:
        """One actuation-lag estimate from commanded vs measured joint positions."""
        with self._lock:
            self.tracker.record_actuation_lag(lag_ms)

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait for background cache writes (node cleanup, tests)."""
        deadline = time.monotonic() + timeout_s
        for thread in list(self._pending):
            thread.join(max(0.0, deadline - time.monotonic()))
        self._pending = [t for t in self._pending if t.is_alive()]

    # -- internals

    def _bind_engine(self, engine: Engine) -> tuple[dict[str, Any], str]:
        """Remember what the engine is (key, NFEs, runtime) and read this host's fingerprint."""
        info = engine.info
        self._key = entry_key(self.embodiment.name, self.model_hash or info.model_hash)
        self._supported_nfe = tuple(info.supported_nfe)
        self._engine_chunk_size = int(info.chunk_size)
        self._runtime = _engine_runtime(engine)
        self._engine_kind = str(info.engine)
        fingerprint = collect_fingerprint()
        providers = onnx_providers() if info.engine == ONNX else (
            (rs.CUDA, rs.CPU) if self._runtime[0] == rs.CUDA else (rs.CPU,))
        self._hardware = (gpu_compute_capability(fingerprint), providers,
                          export_precisions(info.extra.get("export_dir")))
        return fingerprint, reflex_version()

    def _store_measurement(self, measurement: Measurement, fingerprint: Mapping[str, Any], version: str,
                           control_frequency_hz: float, execute_steps: int, *, source: str, stale: list[str],
                           learned_latency_ms: float | None = None,
                           latency_parts: tuple[float, float | None] | None = None) -> Resolution:
        self._resolve_state = f"measured in {measurement.measure_s:.1f} s"
        self._log(self._describe_measurement(measurement))
        self._entry = self._entry_from(measurement, control_frequency_hz, execute_steps, source=source)
        if learned_latency_ms is not None:
            self._entry["latency_compensation_ms"] = round(float(learned_latency_ms), 1)
            self._entry["latency_source"] = "learned"
            if latency_parts is not None:
                o2p, lag = latency_parts
                self._entry["obs_to_publish_p95_ms"] = round(float(o2p), 1)
                self._entry["actuation_lag_ms"] = None if lag is None else round(float(lag), 1)
        self._write_entry(fingerprint, version)
        return self._resolve_from_entry(control_frequency_hz, execute_steps, cache_hit=False,
                                        measure_s=measurement.measure_s, stale=stale)

    def _log_once(self, topic: str, message: str) -> None:
        if topic not in self._logged:
            self._logged.add(topic)
            self._log(message)

    def _describe_measurement(self, m: Measurement) -> str:
        text = (f"{LOG} measured in {m.measure_s:.1f} s at nfe={m.nfe}: median {m.median_ms:.2f} ms, "
                f"p99 {m.p99_ms:.2f} ms, expert step {m.expert_step_ms:.3f} ms, prefix {m.prefix_ms:.2f} ms, "
                f"{m.n_outliers_dropped} outliers dropped, quality {m.quality_score:.2f}")
        if m.quality_score < LOW_QUALITY:
            text += " (low: the host was busy while measuring; consider calibrate_force on a quiet host)"
        return text

    def _inputs(self, control_frequency_hz: float, execute_steps: int, entry: Mapping[str, Any]) -> rs.ResolverInputs:
        capability, providers, precisions = self._hardware
        learned = entry.get("latency_compensation_ms") if entry.get("latency_source") == "learned" else None
        return rs.ResolverInputs(
            supported_nfe=self._supported_nfe,
            expert_step_ms=float(entry.get("expert_step_ms", 0.0)),
            fixed_ms=float(entry.get("prefix_ms", 0.0)) + float(entry.get("preprocess_ms", 0.0)),
            control_frequency_hz=float(control_frequency_hz),
            execute_steps=int(execute_steps),
            default_chunk_size=int(self.embodiment.chunk_size),
            cold_start_latency_ms=float(self.embodiment.latency_compensation_ms),
            engine_chunk_size=self._engine_chunk_size,
            export_precisions=precisions,
            compute_capability=capability,
            providers=providers,
            max_batch=self.max_batch,
            learned_latency_ms=float(learned) if learned is not None else None,
            include_fixed=self.include_prefix,
            engine=self._engine_kind,
            cuda_available=self._engine_kind == TORCH and self._runtime[0] == rs.CUDA,
        )

    def _entry_from(self, m: Measurement, control_frequency_hz: float, execute_steps: int,
                    source: str) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "expert_step_ms": m.expert_step_ms,
            "prefix_ms": m.prefix_ms,
            "preprocess_ms": m.preprocess_ms,
            "latency_compensation_ms": float(self.embodiment.latency_compensation_ms),
            "latency_source": "cold_start",
        }
        auto = rs.resolve(self._inputs(control_frequency_hz, execute_steps, entry))
        entry.update({
            "chunk_size": auto.chunk_size,
            "nfe": auto.nfe,
            # What the timings were measured with (not the hardware recommendation): a cache
            # hit is only valid for an engine running exactly this.
            "provider": self._runtime[0],
            "variant": self._runtime[1],
            "measurement_quality": m.quality_dict(),
            "expert_step_ms": max(round(m.expert_step_ms, 4), 0.0001),  # > 0, what entry_problem requires
            "prefix_ms": round(m.prefix_ms, 4),
            "preprocess_ms": round(m.preprocess_ms, 4),
            "source": source,
        })
        return entry

    def _write_entry(self, fingerprint: Mapping[str, Any], version: str) -> None:
        assert self._entry is not None
        problem = entry_problem(self._entry)
        if problem:  # a bug, not a user error: say so rather than write a bad cache
            raise ReflexError(f"refusing to write calibration entry {self._key}: {problem}")
        try:
            self.cache.put_entry(self._key, self._entry, fingerprint, version)
            self._log(f"{LOG} wrote {self._key} to {self.cache.path}")
        except CacheWriteError as exc:
            self._log_once("write-failed", f"{LOG} {exc}; continuing with the measurement in memory only")

    def _persist_learned(self, value: float) -> None:
        with self._persist_lock:
            try:
                fields = self._learned_fields(value)
                if not self.cache.patch_entry(self._key, fields) and self._entry is not None:
                    # The entry vanished (cache deleted or moved aside meanwhile): write ours back.
                    self.cache.put_entry(self._key, self._entry, collect_fingerprint(), reflex_version())
            except CacheWriteError as exc:
                self._log_once("write-failed", f"{LOG} {exc}; the learned value is used but not persisted")
            except Exception as exc:  # a background thread must never take the node down
                self._log_once("persist-error", f"{LOG} could not persist the learned latency: {exc}")

    def _resolve_from_entry(self, control_frequency_hz: float, execute_steps: int, *, cache_hit: bool,
                            measure_s: float, stale: list[str]) -> Resolution:
        assert self._entry is not None
        entry = self._entry
        inputs = self._inputs(control_frequency_hz, execute_steps, entry)
        auto = rs.resolve(inputs)
        for warning in auto.warnings:
            self._log_once(f"warn:{control_frequency_hz}:{execute_steps}", warning)
        values = auto.values()
        with self._lock:
            learned_live = self.tracker.learned_ms
        if learned_live is not None:
            values["latency_compensation_ms"] = learned_live
        ladder = rs.apply_override_ladder(values, self.explicit, entry, auto_source="cache" if cache_hit else "measured",
                                          log=self._log, already_logged=self._logged)
        if ladder.sources["latency_compensation_ms"] == "explicit":
            latency_source = "explicit"
        elif learned_live is not None or inputs.learned_latency_ms is not None:
            latency_source = "learned"
        else:
            latency_source = "cold_start"
            ladder.sources["latency_compensation_ms"] = "embodiment"
        v = ladder.values
        runtime_matches = (str(v["provider"]), str(v["variant"])) == self._runtime
        if not runtime_matches:
            self._log_once("runtime", f"{LOG} selected provider={v['provider']} variant={v['variant']} but the engine "
                                      f"runs provider={self._runtime[0]} dtype={self._runtime[1]}; load the engine "
                                      "with session.select_runtime(export_dir) to use the selection. NFE is chosen "
                                      "for the engine as loaded")
        resolution = Resolution(
            nfe=int(v["nfe"]), chunk_size=int(v["chunk_size"]), latency_compensation_ms=float(v["latency_compensation_ms"]),
            provider=str(v["provider"]), variant=str(v["variant"]), cache_hit=cache_hit, measure_s=measure_s,
            state=self._resolve_state, key=self._key, sources=ladder.sources, latency_source=latency_source,
            stale_reasons=list(stale), expert_step_ms=inputs.expert_step_ms, prefix_ms=inputs.fixed_ms,
            chunk_period_ms=auto.chunk_period_ms, budget_ms=auto.budget_ms, predicted_ms=auto.predicted_ms,
            nfe_fits=auto.nfe_fits, runtime_matches=runtime_matches, cache_path=str(self.cache.path),
        )
        self._log_once(
            f"selected:{resolution.nfe}:{resolution.chunk_size}:{resolution.latency_compensation_ms}",
            f"{LOG} selected nfe={resolution.nfe} ({ladder.sources['nfe']}: {auto.reasons['nfe']}), "
            f"chunk_size={resolution.chunk_size}, latency_compensation_ms={resolution.latency_compensation_ms:.1f} "
            f"({latency_source}), provider={resolution.provider}, variant={resolution.variant}",
        )
        self._last = resolution
        return resolution
