"""The resolver, table-driven: each rule of the strict partial order, the NFE=1 fallback,
chunk halving, and the override ladder's log lines (once each)."""

from __future__ import annotations

import pytest

from reflex_ros.calibration import resolver as rs
from reflex_ros.calibration.resolver import CPU, CUDA, TRT

ALL_NFE = (1, 2, 4, 8, 10)


@pytest.mark.parametrize(
    ("precisions", "capability", "providers", "batch", "expected"),
    [
        (("fp32",), None, (CPU,), 1, "fp32"),  # CPU host
        (("fp32", "int8"), None, (CPU,), 1, "int8"),  # CPU host, int8 graph shipped
        (("fp32", "fp8"), (9, 0), (TRT, CUDA, CPU), 1, "fp8"),  # Hopper: fp8
        (("fp32", "fp8"), (8, 9), (TRT, CUDA, CPU), 1, "fp8"),  # Ada: sm_89 is the floor
        (("fp32", "fp8"), (8, 6), (TRT, CUDA, CPU), 1, "fp16"),  # Ampere: no fp8
        (("fp32", "fp8"), (9, 0), (CUDA, CPU), 1, "fp32"),  # fp8 needs TensorRT
        (("fp32",), (8, 6), (TRT, CUDA, CPU), 1, "fp16"),  # TRT builds fp16 at batch 1
        (("fp32",), (8, 6), (TRT, CUDA, CPU), 2, "fp32"),  # CFG batch 2: no TRT, no fp16 graph
        (("fp32", "fp16"), (8, 6), (CUDA, CPU), 2, "fp16"),  # a shipped fp16 graph runs on CUDA
        (("fp32",), (8, 6), (CUDA, CPU), 1, "fp32"),
        (("fp32",), (9, 0), (CPU,), 1, "fp32"),  # a GPU but a CPU-only onnxruntime
    ],
)
def test_select_variant(precisions, capability, providers, batch, expected):
    variant, why = rs.select_variant(precisions, capability, providers, batch)
    assert variant == expected, why
    assert why


@pytest.mark.parametrize(
    ("variant", "providers", "gpu", "batch", "expected"),
    [
        ("fp16", (TRT, CUDA, CPU), True, 1, TRT),
        ("fp8", (TRT, CUDA, CPU), True, 1, TRT),
        ("fp16", (TRT, CUDA, CPU), True, 2, CUDA),  # TRT-EP needs batch 1
        ("fp32", (TRT, CUDA, CPU), True, 1, CUDA),  # TRT-EP needs fp16
        ("fp32", (CUDA, CPU), True, 1, CUDA),
        ("fp32", (CPU,), False, 1, CPU),
        ("int8", (CPU,), False, 1, CPU),
    ],
)
def test_select_provider(variant, providers, gpu, batch, expected):
    assert rs.select_provider(variant, providers, gpu, batch)[0] == expected


def test_fp8_without_tensorrt_is_refused():
    with pytest.raises(ValueError, match="fp8 needs TensorrtExecutionProvider"):
        rs.select_provider("fp8", (CUDA, CPU), True, 1)


# chunk period: 10 steps at 50 Hz = 200 ms -> budget 140 ms
@pytest.mark.parametrize(
    ("supported", "step_ms", "fixed_ms", "include_fixed", "nfe", "fits"),
    [
        (ALL_NFE, 5.0, 0.0, True, 10, True),  # 50 <= 140
        (ALL_NFE, 14.0, 0.0, True, 10, True),  # exactly on the budget
        (ALL_NFE, 14.1, 0.0, True, 8, True),
        (ALL_NFE, 20.0, 0.0, True, 4, True),  # 8 x 20 = 160 > 140; 4 x 20 = 80
        (ALL_NFE, 12.0, 40.0, True, 8, True),  # 10 x 12 + 40 = 160 > 140; 8 x 12 + 40 = 136
        (ALL_NFE, 12.0, 40.0, False, 10, True),  # the seed's rule ignores the prefix: 120 <= 140
        (ALL_NFE, 60.0, 0.0, True, 2, True),  # 4 x 60 = 240 > 140; 2 x 60 = 120
        (ALL_NFE, 100.0, 0.0, True, 1, True),  # NFE=1 fits on its own merit: no warning
        (ALL_NFE, 141.0, 0.0, True, 1, False),  # nothing fits -> NFE=1
        (ALL_NFE, 100.0, 50.0, True, 1, False),
        ((2, 4, 8), 100.0, 0.0, True, 2, False),  # no NFE=1 in the export: its smallest
        ((10,), 10.0, 0.0, True, 10, True),  # a monolithic export serves one NFE
        ((10,), 20.0, 0.0, True, 10, False),
        ((1, 2, 3, 4), 30.0, 0.0, True, 4, True),  # 3 is not a legal choice; 4 x 30 = 120
    ],
)
def test_select_nfe(supported, step_ms, fixed_ms, include_fixed, nfe, fits):
    choice = rs.select_nfe(supported, step_ms, fixed_ms, rs.chunk_period_ms(50.0, 10), include_fixed=include_fixed)
    assert (choice.nfe, choice.fits) == (nfe, fits)
    assert choice.budget_ms == pytest.approx(140.0)


@pytest.mark.parametrize(
    ("default", "fits", "engine_chunk", "execute_steps", "expected"),
    [
        (50, True, 50, 10, 50),
        (50, False, 50, 10, 25),  # halved when even NFE=1 does not fit
        (50, True, 32, 10, 32),  # capped by what the export produces
        (50, False, 32, 10, 16),
        (16, False, 16, 10, 10),  # never below execute_steps
        (1, False, None, 1, 1),
    ],
)
def test_select_chunk_size(default, fits, engine_chunk, execute_steps, expected):
    assert rs.select_chunk_size(default, fits, engine_chunk, execute_steps) == expected


def test_chunk_period_rejects_nonsense():
    assert rs.chunk_period_ms(30.0, 10) == pytest.approx(333.333, abs=1e-3)
    with pytest.raises(ValueError, match="control_frequency_hz"):
        rs.chunk_period_ms(0.0, 10)
    with pytest.raises(ValueError, match="execute_steps"):
        rs.chunk_period_ms(30.0, 0)


def _inputs(**overrides) -> rs.ResolverInputs:
    values = dict(supported_nfe=ALL_NFE, expert_step_ms=5.0, fixed_ms=10.0, control_frequency_hz=50.0,
                  execute_steps=10, default_chunk_size=50, cold_start_latency_ms=40.0, engine_chunk_size=50)
    values.update(overrides)
    return rs.ResolverInputs(**values)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, dict(variant="fp32", provider=CPU, nfe=10, chunk_size=50, latency_compensation_ms=40.0, nfe_fits=True)),
        ({"compute_capability": (9, 0), "providers": (TRT, CUDA, CPU), "export_precisions": ("fp32", "fp8")},
         dict(variant="fp8", provider=TRT, nfe=10)),
        ({"compute_capability": (8, 6), "providers": (TRT, CUDA, CPU), "max_batch": 2},
         dict(variant="fp32", provider=CUDA)),
        ({"control_frequency_hz": 200.0}, dict(nfe=4, chunk_size=50)),  # 50 ms -> 35 ms budget
        ({"control_frequency_hz": 1000.0}, dict(nfe=1, chunk_size=25, nfe_fits=False)),
        ({"learned_latency_ms": 83.2}, dict(latency_compensation_ms=83.2)),
    ],
)
def test_resolve_single_pass(overrides, expected):
    auto = rs.resolve(_inputs(**overrides))
    for key, value in expected.items():
        assert getattr(auto, key) == value, (key, auto)


def test_nfe_fallback_warns_in_the_seed_wording():
    auto = rs.resolve(_inputs(control_frequency_hz=1000.0))
    assert len(auto.warnings) == 1
    warning = auto.warnings[0]
    assert warning.startswith("[auto-calibrate] No NFE fits budget — falling back to NFE=1 (")
    assert "chunk_size halved to 25" in warning and "SnapFlow" in warning
    assert rs.resolve(_inputs()).warnings == []


def test_override_ladder_logs_each_ignored_cached_value_once():
    lines: list[str] = []
    logged: set[str] = set()
    auto = {"variant": "fp32", "provider": CPU, "nfe": 10, "chunk_size": 50, "latency_compensation_ms": 40.0}
    cached = {**auto, "latency_compensation_ms": 83.2}
    explicit = {"chunk_size": 40, "dtype": "fp16", "nfe": 10, "latency_compensation_ms": 50.0}
    for _ in range(3):  # configure, then two live re-resolves
        result = rs.apply_override_ladder(auto, explicit, cached, log=lines.append, already_logged=logged)
    assert result.values == {"variant": "fp16", "provider": CPU, "nfe": 10, "chunk_size": 40,
                             "latency_compensation_ms": 50.0}
    assert result.sources == {"variant": "explicit", "provider": "cache", "nfe": "explicit", "chunk_size": "explicit",
                              "latency_compensation_ms": "explicit"}
    assert lines == [
        "[auto-calibrate] ignoring cached variant=fp32 because dtype=fp16 was set explicitly",
        "[auto-calibrate] ignoring cached chunk_size=50 because chunk_size=40 was set explicitly",
        "[auto-calibrate] ignoring cached latency_compensation_ms=83.2 because latency_compensation_ms=50.0 "
        "was set explicitly",
    ]  # nfe=10 equals the cached value: nothing was ignored, nothing is logged


def test_override_ladder_without_cache_or_explicit():
    auto = {"variant": "fp32", "provider": CPU, "nfe": 4, "chunk_size": 50, "latency_compensation_ms": 60.0}
    lines: list[str] = []
    result = rs.apply_override_ladder(auto, {}, None, auto_source="measured", log=lines.append)
    assert result.values == auto and set(result.sources.values()) == {"measured"} and lines == []
    result = rs.apply_override_ladder(auto, {"chunk_size": 40}, None, log=lines.append)
    assert result.values["chunk_size"] == 40 and lines == []  # no cached value was hidden


@pytest.mark.parametrize(
    ("capability", "cuda", "expected_variant", "expected_provider"),
    [((9, 0), True, "bf16", CUDA), ((8, 6), True, "bf16", CUDA), (None, False, "fp32", CPU), ((9, 0), False, "fp32", CPU)],
)
def test_torch_engine_precision_is_real(capability, cuda, expected_variant, expected_provider):
    """The torch engine serves the weights at any precision: bf16 on a GPU (what it then runs
    and the cache records), fp32 on the CPU; never an ONNX provider's rule."""
    inputs = rs.ResolverInputs(supported_nfe=ALL_NFE, expert_step_ms=1.0, fixed_ms=2.0, control_frequency_hz=30.0,
                               execute_steps=10, default_chunk_size=50, cold_start_latency_ms=40.0,
                               compute_capability=capability, providers=(TRT, CUDA, CPU), engine="torch",
                               cuda_available=cuda)
    auto = rs.resolve(inputs)
    assert (auto.variant, auto.provider) == (expected_variant, expected_provider)
    assert rs.select_torch_precision(capability, cuda)[0] == expected_variant
