"""Selection, not tuning: five serving parameters chosen in one pass, each narrowing the next.

1. variant (fp32 / fp16 / int8 / fp8): hardware + which precisions the export can serve.
   fp8 only on sm_89+ (Ada, Hopper, Blackwell) through TensorRT; fp16 on a GPU when TensorRT
   can build it (batch 1) or the export ships an fp16 graph; int8 only on CPU hosts whose
   export ships an int8 graph; fp32 otherwise.
2. provider: TensorRT-EP needs fp16/fp8 and batch 1 (CFG runs batch 2); else CUDA-EP on a
   GPU; else CPU-EP.
3. nfe: the largest of {1, 2, 4, 8, 10} the engine supports whose predicted inference time
   fits ``0.7 x chunk_period``, with ``chunk_period = execute_steps / control_frequency_hz``.
   Fallback NFE=1 with a warning when none fits.
4. chunk_size: the embodiment default (at most what the export produces), halved when even
   NFE=1 does not fit.
5. latency_compensation_ms: the embodiment cold start, or a value learned live.

**The budget includes the fixed per-chunk cost** (preprocess + VLM prefix), unlike the
seed's ``nfe x expert_step_ms`` rule. The next chunk must be *published* before the robot
runs out of the current one's ``execute_steps``; on a robot that is the whole inference, and
for pi0-size models the VLM prefix is often as long as several expert steps, so leaving it
out lets the resolver pick an NFE that overruns every cycle (skipped chunks, the arm stops
and restarts). ``include_fixed=False`` gives the seed's rule exactly.

Everything here is a pure function of plain values; the session feeds it measurements.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reflex_ros.engine.types import NFE_CHOICES
from reflex_ros.vocab import BF16, CPU, CUDA, FP8, FP16, FP32, INT8, TRT

BUDGET_FRACTION = 0.7
PRECISIONS: tuple[str, ...] = (FP32, FP16, INT8, FP8)  # what step 1 chooses from
FP8_MIN_COMPUTE_CAPABILITY = (8, 9)
NO_NFE_FITS = "No NFE fits budget — falling back to NFE=1"
LOG_PREFIX = "[auto-calibrate]"

# parameter -> accepted explicit-parameter names (the node's "dtype" is our "variant")
PARAMETER_ALIASES: dict[str, tuple[str, ...]] = {
    "variant": ("variant", "dtype"),
    "provider": ("provider",),
    "nfe": ("nfe",),
    "chunk_size": ("chunk_size",),
    "latency_compensation_ms": ("latency_compensation_ms",),
}
RESOLVED_PARAMETERS: tuple[str, ...] = tuple(PARAMETER_ALIASES)


def chunk_period_ms(control_frequency_hz: float, execute_steps: int) -> float:
    """Time the robot spends executing one chunk before the next must be there."""
    if not (control_frequency_hz > 0 and math.isfinite(control_frequency_hz)):
        raise ValueError(f"control_frequency_hz must be a finite number > 0, got {control_frequency_hz}")
    if execute_steps < 1:
        raise ValueError(f"execute_steps must be >= 1, got {execute_steps}")
    return 1000.0 * execute_steps / control_frequency_hz


def select_variant(
    export_precisions: Collection[str],
    compute_capability: tuple[int, int] | None,
    providers: Collection[str],
    max_batch: int = 1,
) -> tuple[str, str]:
    """Step 1. Returns (variant, why).

    ``export_precisions``: precisions the export ships graphs for (always includes fp32 for
    our exports; fp16 can also be *built* by TensorRT from the fp32 graph at batch 1).
    """
    gpu = compute_capability is not None and (CUDA in providers or TRT in providers)
    trt_ok = gpu and TRT in providers and max_batch == 1
    if gpu:
        if FP8 in export_precisions and trt_ok and compute_capability >= FP8_MIN_COMPUTE_CAPABILITY:
            sm = f"sm_{compute_capability[0]}{compute_capability[1]}"
            return FP8, f"fp8 graph present, {sm} >= sm_89, TensorRT available"
        if trt_ok:
            return FP16, "GPU with TensorRT at batch 1 (fp16 kernels)"
        if FP16 in export_precisions and CUDA in providers:
            return FP16, "fp16 graph present, CUDA available"
        return FP32, "GPU without TensorRT at batch 1 and no fp16 graph"
    if INT8 in export_precisions:
        return INT8, "CPU host, int8 graph present"
    return FP32, "CPU host"


def select_torch_precision(compute_capability: tuple[int, int] | None, cuda_available: bool) -> tuple[str, str]:
    """Step 1 for the torch engine (it serves the export's weights at any precision).

    A GPU gets bf16: its chunk stays within cos 0.99999 of fp32 on every family at published
    size, at a third of the eager time and half the memory. fp8 (e4m3 MLP GEMMs, sm_89+) is
    served when asked for (``dtype:=fp8``) but not picked: on an H200 at batch 1 it measured
    no faster than bf16 (pi0 18.0 vs 17.5 ms; the 50-row GEMMs are latency-bound, so halving
    their bytes does not show), and it costs accuracy (cos 0.9997-0.9999). A CPU gets fp32."""
    if compute_capability is not None and cuda_available:
        sm = f"sm_{compute_capability[0]}{compute_capability[1]}"
        return BF16, f"torch engine on a GPU ({sm}): bf16 (fp8 on request: measured no faster at batch 1)"
    return FP32, "torch engine on the CPU"


def select_provider(variant: str, providers: Collection[str], gpu: bool, max_batch: int = 1) -> tuple[str, str]:
    """Step 2. TensorRT-EP needs fp16 (or fp8) and batch 1; then CUDA-EP; then CPU-EP."""
    if gpu and variant in (FP16, FP8) and max_batch == 1 and TRT in providers:
        return TRT, f"{variant} at batch 1"
    if variant == FP8:  # only TensorRT runs fp8; select_variant never gets here without it
        raise ValueError("fp8 needs TensorrtExecutionProvider at batch 1")
    if gpu and CUDA in providers:
        return CUDA, "GPU" + (f", batch {max_batch} rules out TensorRT" if max_batch > 1 else "")
    return CPU, "no GPU provider"


@dataclass(frozen=True)
class NfeChoice:
    """Step 3's outcome. ``predicted_ms`` is the inference time the resolver expects."""

    nfe: int
    fits: bool
    budget_ms: float
    predicted_ms: float


def predicted_inference_ms(nfe: int, expert_step_ms: float, fixed_ms: float, include_fixed: bool = True) -> float:
    return nfe * expert_step_ms + (fixed_ms if include_fixed else 0.0)


def select_nfe(
    supported_nfe: Iterable[int],
    expert_step_ms: float,
    fixed_ms: float,
    chunk_period: float,
    budget_fraction: float = BUDGET_FRACTION,
    include_fixed: bool = True,
) -> NfeChoice:
    """Step 3: largest NFE in {1,2,4,8,10} ∩ supported whose predicted time fits the budget.

    When none fits: NFE=1 if the engine supports it (else its smallest) and ``fits=False``.
    """
    candidates = sorted({int(n) for n in supported_nfe} & set(NFE_CHOICES))
    if not candidates:
        candidates = sorted({int(n) for n in supported_nfe})
    if not candidates:
        raise ValueError("the engine supports no NFE at all")
    budget = chunk_period * budget_fraction
    for nfe in reversed(candidates):
        predicted = predicted_inference_ms(nfe, expert_step_ms, fixed_ms, include_fixed)
        if predicted <= budget:
            return NfeChoice(nfe, True, budget, predicted)
    nfe = 1 if 1 in candidates else candidates[0]
    return NfeChoice(nfe, False, budget, predicted_inference_ms(nfe, expert_step_ms, fixed_ms, include_fixed))


def select_chunk_size(default_chunk_size: int, nfe_fits: bool, engine_chunk_size: int | None = None,
                      execute_steps: int = 1) -> int:
    """Step 4: the embodiment default (capped by the export's chunk), halved when nothing
    fits, but never below ``execute_steps`` (the node executes that many per chunk)."""
    size = int(default_chunk_size)
    if engine_chunk_size is not None:
        size = min(size, int(engine_chunk_size))
    if not nfe_fits:
        size = max(size // 2, int(execute_steps), 1)
    return size


@dataclass
class ResolverInputs:
    """Everything the single pass needs, as plain values."""

    supported_nfe: tuple[int, ...]
    expert_step_ms: float
    fixed_ms: float
    control_frequency_hz: float
    execute_steps: int
    default_chunk_size: int
    cold_start_latency_ms: float
    engine_chunk_size: int | None = None
    export_precisions: tuple[str, ...] = (FP32,)
    compute_capability: tuple[int, int] | None = None
    providers: tuple[str, ...] = (CPU,)
    max_batch: int = 1
    learned_latency_ms: float | None = None
    include_fixed: bool = True
    budget_fraction: float = BUDGET_FRACTION
    #: the runtime the precision is for: "onnx" (graphs, providers) or "torch" (weights, a device)
    engine: str = "onnx"
    cuda_available: bool = False


@dataclass
class AutoSelection:
    """What calibration alone selects (before the override ladder)."""

    variant: str
    provider: str
    nfe: int
    chunk_size: int
    latency_compensation_ms: float
    nfe_fits: bool
    chunk_period_ms: float
    budget_ms: float
    predicted_ms: float
    reasons: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def values(self) -> dict[str, Any]:
        return {p: getattr(self, p) for p in RESOLVED_PARAMETERS}


def resolve(inputs: ResolverInputs) -> AutoSelection:
    """The single pass (steps 1-5). Warnings (the NFE fallback) are returned, not logged, so
    the caller decides how often a user sees them."""
    gpu = inputs.compute_capability is not None
    if inputs.engine == "torch":
        variant, why_variant = select_torch_precision(inputs.compute_capability, inputs.cuda_available)
        provider = CUDA if gpu and inputs.cuda_available else CPU
        why_provider = "the torch engine's device"
    else:
        variant, why_variant = select_variant(inputs.export_precisions, inputs.compute_capability,
                                              inputs.providers, inputs.max_batch)
        provider, why_provider = select_provider(variant, inputs.providers, gpu, inputs.max_batch)
    period = chunk_period_ms(inputs.control_frequency_hz, inputs.execute_steps)
    choice = select_nfe(inputs.supported_nfe, inputs.expert_step_ms, inputs.fixed_ms, period,
                        inputs.budget_fraction, inputs.include_fixed)
    chunk = select_chunk_size(inputs.default_chunk_size, choice.fits, inputs.engine_chunk_size,
                              inputs.execute_steps)
    learned = inputs.learned_latency_ms
    latency = float(learned) if learned is not None else float(inputs.cold_start_latency_ms)
    fixed = f" + {inputs.fixed_ms:.1f} ms prefix+preprocess" if inputs.include_fixed else ""
    warnings = []
    if not choice.fits:
        warnings.append(
            f"{LOG_PREFIX} {NO_NFE_FITS if choice.nfe == 1 else f'No NFE fits budget — falling back to NFE={choice.nfe}'} "
            f"({choice.nfe} x {inputs.expert_step_ms:.2f} ms expert step{fixed} = {choice.predicted_ms:.1f} ms > "
            f"{choice.budget_ms:.1f} ms = {inputs.budget_fraction:g} x {period:.1f} ms chunk period); "
            f"chunk_size halved to {chunk}. Use a SnapFlow-distilled (single-step) student, a faster "
            f"host, or lower control_frequency_hz / raise execute_steps"
        )
    reasons = {
        "variant": why_variant,
        "provider": why_provider,
        "nfe": (f"{choice.nfe} x {inputs.expert_step_ms:.2f} ms{fixed} = {choice.predicted_ms:.1f} ms "
                f"{'<=' if choice.fits else '>'} {choice.budget_ms:.1f} ms budget"),
        "chunk_size": "embodiment default" if choice.fits else "halved: even the smallest NFE overruns",
        "latency_compensation_ms": "learned" if learned is not None else "embodiment cold start",
    }
    return AutoSelection(
        variant=variant, provider=provider, nfe=choice.nfe, chunk_size=chunk, latency_compensation_ms=latency,
        nfe_fits=choice.fits, chunk_period_ms=period, budget_ms=choice.budget_ms,
        predicted_ms=choice.predicted_ms, reasons=reasons, warnings=warnings,
    )


# --------------------------------------------------------------------------- override ladder


def explicit_value(explicit: Mapping[str, Any], parameter: str) -> tuple[str, Any] | None:
    """(name used, value) when ``parameter`` (or an alias) was set explicitly."""
    for name in PARAMETER_ALIASES.get(parameter, (parameter,)):
        if name in explicit and explicit[name] is not None:
            return name, explicit[name]
    return None


def format_value(value: Any) -> str:
    """Compact, stable rendering for log lines: 50, 83.2, CPUExecutionProvider."""
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=0.0, abs_tol=1e-9)
    return str(a) == str(b)


@dataclass
class LadderResult:
    values: dict[str, Any]
    sources: dict[str, str]  # parameter -> "explicit" | "cache" | "measured" | "embodiment"


def apply_override_ladder(
    auto: Mapping[str, Any],
    explicit: Mapping[str, Any],
    cached_entry: Mapping[str, Any] | None,
    *,
    auto_source: str = "cache",
    log: Callable[[str], None] | None = None,
    already_logged: set[str] | None = None,
) -> LadderResult:
    """Explicit parameter > calibration (cache or fresh measurement) > embodiment default.

    ``auto`` holds calibration's values (``auto_source`` names where they came from; a value
    the calibration could not produce is absent and the caller's embodiment default is in
    ``auto`` with source "embodiment" via ``auto_source``). Each cached value an explicit one
    hides is logged once per ``already_logged`` set, in the seed's wording.
    """
    logged = already_logged if already_logged is not None else set()
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for parameter in RESOLVED_PARAMETERS:
        hit = explicit_value(explicit, parameter)
        if hit is not None:
            name, value = hit
            values[parameter] = value
            sources[parameter] = "explicit"
            cached = cached_entry.get(parameter) if cached_entry else None
            if cached is not None and not _same(cached, value) and parameter not in logged and log is not None:
                logged.add(parameter)
                log(f"{LOG_PREFIX} ignoring cached {parameter}={format_value(cached)} because "
                    f"{name}={format_value(value)} was set explicitly")
        elif parameter in auto:
            values[parameter] = auto[parameter]
            sources[parameter] = auto_source
    return LadderResult(values, sources)
