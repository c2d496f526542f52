"""The measurement pass: how long this engine takes on this host, and how trustworthy that is.

The resolver needs two numbers, the per-denoise-step cost (``expert_step_ms``) and the fixed
per-chunk cost (``prefix_ms`` + preprocessing), because NFE is chosen by how many steps fit a
time budget. Both come from the engine's own ``ChunkResult.timings_ms`` (GPU engines
synchronize before reading the clock), never from a CPU timer around an async call.

Measurement needs no robot: :func:`synthetic_observation` builds zero images and a zero
state from :class:`EngineInfo`, and a fixed noise makes every call do identical work. The
outputs are discarded; nothing is ever published, so nothing can move.

Outlier rule: a timed iteration is dropped when its total time lies more than
``OUTLIER_MADS`` scaled median absolute deviations from the median (a robust z-score > 3.5,
Iglewicz & Hoaglin), with the MAD floored at 1% of the median so a perfectly flat series
does not turn every rounding wobble into an "outlier". Those are GC pauses and scheduler
hiccups of the measuring moment; the loop's real tail is learned live by the tracker.

quality_score = (kept fraction) x (median / p99 of the kept samples), in [0, 1]: 1.0 means
nothing was dropped and the tail is as fast as the median. Below ~0.5 the host was busy
while measuring and the numbers deserve a re-measure (the session logs a warning).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from reflex_ros.engine.types import NFE_CHOICES, Engine, EngineInfo, Observation, ReflexError

OUTLIER_MADS = 3.5
MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution -> its standard deviation
MAD_FLOOR_FRACTION = 0.01
LOW_QUALITY = 0.5
SYNTHETIC_INSTRUCTION = "calibration"
SYNTHETIC_NOISE_SEED = 0


@dataclass
class Measurement:
    """One measurement pass, in the cache's terms (``quality_dict`` is the seed's block)."""

    nfe: int
    warmup_iters: int
    measurement_iters: int
    median_ms: float
    p99_ms: float
    n_outliers_dropped: int
    quality_score: float
    expert_step_ms: float
    prefix_ms: float
    preprocess_ms: float
    measure_s: float = 0.0
    samples_ms: list[float] = field(default_factory=list, repr=False)

    def quality_dict(self) -> dict[str, Any]:
        """The seed's ``measurement_quality`` block."""
        return {
            "warmup_iters": self.warmup_iters,
            "measurement_iters": self.measurement_iters,
            "median_ms": round(self.median_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "n_outliers_dropped": self.n_outliers_dropped,
            "quality_score": round(self.quality_score, 3),
        }

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("samples_ms")
        return d


def outlier_mask(samples_ms: Sequence[float]) -> np.ndarray:
    """True for samples to keep (see the module docstring for the rule)."""
    x = np.asarray(samples_ms, dtype=np.float64)
    if x.size == 0:
        return np.zeros(0, dtype=bool)
    median = float(np.median(x))
    mad = float(np.median(np.abs(x - median)))
    scale = max(mad * MAD_TO_SIGMA, abs(median) * MAD_FLOOR_FRACTION, 1e-9)
    return np.abs(x - median) / scale <= OUTLIER_MADS


def summarize(
    total_ms: Sequence[float],
    denoise_ms: Sequence[float],
    prefix_ms: Sequence[float],
    preprocess_ms: Sequence[float],
    *,
    nfe: int,
    warmup_iters: int,
    measure_s: float = 0.0,
) -> Measurement:
    """Turn per-iteration stage timings into a :class:`Measurement` (pure; unit-tested).

    Outliers are chosen on the total time and dropped from every stage together, so the
    stage medians describe the same iterations.
    """
    total = np.asarray(total_ms, dtype=np.float64)
    if total.size == 0:
        raise ValueError("summarize needs at least one timed iteration")
    if nfe < 1:
        raise ValueError(f"nfe must be >= 1, got {nfe}")
    arrays = [np.asarray(a, dtype=np.float64) for a in (denoise_ms, prefix_ms, preprocess_ms)]
    if any(a.shape != total.shape for a in arrays):
        raise ValueError("every stage needs one timing per iteration")
    keep = outlier_mask(total)
    kept = total[keep]
    median = float(np.median(kept))
    p99 = float(np.percentile(kept, 99))
    kept_fraction = kept.size / total.size
    tail = median / p99 if p99 > 0 else 1.0
    quality = float(min(1.0, max(0.0, kept_fraction * tail)))
    denoise, prefix, preprocess = (float(np.median(a[keep])) for a in arrays)
    return Measurement(
        nfe=nfe,
        warmup_iters=warmup_iters,
        measurement_iters=int(total.size),
        median_ms=median,
        p99_ms=p99,
        n_outliers_dropped=int(total.size - kept.size),
        quality_score=quality,
        expert_step_ms=denoise / nfe,
        prefix_ms=prefix,
        preprocess_ms=preprocess,
        measure_s=measure_s,
        samples_ms=[float(v) for v in total],
    )


def synthetic_observation(info: EngineInfo, state_dim: int | None = None,
                          instruction: str = SYNTHETIC_INSTRUCTION) -> Observation:
    """Zero images and a zero state shaped for ``info`` (the policy's own state size when it
    has one, as a LeRobot checkpoint does; else the widest it accepts): the engine does its
    full work on it, and no robot or camera is involved."""
    dim = (info.state_dim or info.max_state_dim) if state_dim is None else int(state_dim)
    if not 1 <= dim <= info.max_state_dim:
        raise ValueError(f"state_dim must be in [1, {info.max_state_dim}] for this export, got {dim}")
    size = int(info.image_size)
    images = [np.zeros((size, size, 3), dtype=np.uint8) for _ in range(int(info.num_cameras))]
    return Observation(images=images, state=np.zeros(dim, dtype=np.float32), instruction=instruction, stamp_ns=0)


def fixed_noise(info: EngineInfo, seed: int = SYNTHETIC_NOISE_SEED) -> np.ndarray:
    """Deterministic initial noise, so every timed call does the same arithmetic."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((info.chunk_size, info.action_width)).astype(np.float32)


def measurement_nfe(info: EngineInfo) -> int:
    """The NFE to time: the largest the resolver may choose (``NFE_CHOICES``) that the export
    serves, so ``expert_step_ms`` averages over the most steps the resolver scales to (an
    export that serves any NFE is not timed at 100 steps); the largest it serves otherwise."""
    if not info.supported_nfe:
        raise ReflexError(f"engine {info.engine} reports no supported_nfe; cannot calibrate")
    choosable = set(info.supported_nfe) & set(NFE_CHOICES)
    return int(max(choosable or info.supported_nfe))


def _stage(timings: dict[str, float], name: str) -> float:
    value = timings.get(name)
    return float(value) if value is not None and math.isfinite(value) else 0.0


def measure_engine(
    engine: Engine,
    obs: Observation | Sequence[Observation],
    nfe: int | None = None,
    warmup_iters: int = 10,
    measurement_iters: int = 100,
    noise: np.ndarray | None = None,
) -> Measurement:
    """Time ``engine.infer`` ``warmup_iters`` untimed + ``measurement_iters`` timed calls.

    ``obs`` may be a sequence (bag replay): calls cycle through it, so the timing covers the
    recorded observations rather than one frame. ``nfe`` None uses :func:`measurement_nfe`.
    A missing ``denoise`` stage (an engine that cannot split stages) is derived as
    total - prefix - preprocess.
    """
    if warmup_iters < 0 or measurement_iters < 1:
        raise ValueError(f"need warmup_iters >= 0 and measurement_iters >= 1, got {warmup_iters}, {measurement_iters}")
    observations = [obs] if isinstance(obs, Observation) else list(obs)
    if not observations:
        raise ValueError("measure_engine needs at least one observation")
    nfe = measurement_nfe(engine.info) if nfe is None else int(nfe)
    if noise is None:
        noise = fixed_noise(engine.info)
    start = time.perf_counter()
    for i in range(warmup_iters):
        engine.infer(observations[i % len(observations)], nfe=nfe, noise=noise)
    totals, denoises, prefixes, preprocesses = [], [], [], []
    for i in range(measurement_iters):
        result = engine.infer(observations[i % len(observations)], nfe=nfe, noise=noise)
        t = result.timings_ms
        total = _stage(t, "total")
        prefix, preprocess = _stage(t, "prefix"), _stage(t, "preprocess")
        denoise = _stage(t, "denoise") if "denoise" in t else max(0.0, total - prefix - preprocess)
        totals.append(total)
        denoises.append(denoise)
        prefixes.append(prefix)
        preprocesses.append(preprocess)
    return summarize(totals, denoises, prefixes, preprocesses, nfe=int(result.nfe), warmup_iters=warmup_iters,
                     measure_s=time.perf_counter() - start)
