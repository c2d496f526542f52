"""The measurement pass and CalibrationSession on a real tiny export with real onnxruntime:
first run measures and writes, a second start hits the cache without touching the engine,
live re-resolve, learned latency persisted, overrides, staleness, and no rclpy anywhere."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from reflex_ros.calibration.measure import (
    fixed_noise,
    measure_engine,
    outlier_mask,
    summarize,
    synthetic_observation,
)
from reflex_ros.calibration.session import CalibrationSession, export_precisions
from reflex_ros.engine.types import NFE_CHOICES

SO100 = SimpleNamespace(name="so100", control_frequency_hz=30.0, chunk_size=50, execute_steps=10,
                        latency_compensation_ms=60.0)
ITERS = dict(warmup_iters=1, measurement_iters=6)


@pytest.fixture(scope="module")
def engine(tiny_export):
    from reflex_ros.engine.loader import load_engine

    eng = load_engine(tiny_export)
    yield eng
    eng.close()


def session(path, lines, explicit=None, force=False, **kwargs) -> CalibrationSession:
    return CalibrationSession(path, SO100, None, explicit or {}, force, lines.append, **ITERS, **kwargs)


def runs(engine) -> int:
    return sum(engine.run_counts.values())


# --------------------------------------------------------------------------- measurement


def test_outlier_rule_and_quality_score():
    rng = np.random.default_rng(0)
    base = list(10.0 + rng.normal(0, 0.1, 97))
    samples = base + [100.0, 80.0, 55.0]  # three scheduler hiccups
    keep = outlier_mask(samples)
    assert keep.sum() == 97 and not keep[-3:].any()
    m = summarize(samples, [s * 0.8 for s in samples], [1.0] * 100, [0.2] * 100, nfe=10, warmup_iters=10)
    assert m.n_outliers_dropped == 3 and m.measurement_iters == 100
    assert m.median_ms == pytest.approx(10.0, abs=0.1) and m.p99_ms < 11.0
    assert m.expert_step_ms == pytest.approx(0.8, abs=0.01)  # denoise median / nfe
    assert m.quality_score == pytest.approx(0.97 * m.median_ms / m.p99_ms)
    flat = summarize([5.0] * 20, [4.0] * 20, [1.0] * 20, [0.0] * 20, nfe=4, warmup_iters=0)
    assert flat.n_outliers_dropped == 0 and flat.quality_score == 1.0 and flat.expert_step_ms == 1.0
    assert set(m.quality_dict()) == {"warmup_iters", "measurement_iters", "median_ms", "p99_ms",
                                     "n_outliers_dropped", "quality_score"}
    with pytest.raises(ValueError, match="one timing per iteration"):
        summarize([1.0, 2.0], [1.0], [1.0, 1.0], [0.0, 0.0], nfe=1, warmup_iters=0)


def test_measure_engine_on_the_tiny_export(engine):
    info = engine.info
    obs = synthetic_observation(info)
    assert [im.shape for im in obs.images] == [(info.image_size, info.image_size, 3)] * info.num_cameras
    assert not obs.state.any() and obs.state.shape == (info.max_state_dim,)
    assert fixed_noise(info).shape == (info.chunk_size, info.action_dim)
    assert np.array_equal(fixed_noise(info), fixed_noise(info))
    before = runs(engine)
    m = measure_engine(engine, obs, warmup_iters=2, measurement_iters=5)
    # the largest NFE the resolver may choose that the export serves
    assert m.nfe == max(set(info.supported_nfe) & set(NFE_CHOICES)) == 10
    assert m.measurement_iters == 5 and m.warmup_iters == 2
    assert len(m.samples_ms) == 5 and m.expert_step_ms > 0 and m.prefix_ms > 0
    assert 0.0 <= m.quality_score <= 1.0 and m.median_ms <= m.p99_ms
    # 7 calls, each one prefix run and nfe expert runs: the synthetic pass did the full work.
    assert runs(engine) - before == 7 * (1 + m.nfe)
    with pytest.raises(ValueError, match="state_dim must be in"):
        synthetic_observation(info, state_dim=info.max_state_dim + 1)


def test_export_precisions_are_what_the_exporter_writes(tmp_path, tiny_export):
    """No file-name sniffing for formats no exporter writes: a stray `*_fp8.onnx` is not an
    fp8 export."""
    assert export_precisions(tiny_export) == ("fp32",)
    (tmp_path / "expert_denoise_fp8.onnx").write_text("x")
    assert export_precisions(tmp_path) == ("fp32",)


# --------------------------------------------------------------------------- session


def test_first_run_measures_then_second_start_hits_the_cache(tmp_path, engine):
    path = tmp_path / "calibration.json"
    lines: list[str] = []
    first = session(path, lines).resolve(engine, control_frequency_hz=30.0, execute_steps=10)
    assert not first.cache_hit and first.measure_s > 0 and first.state.startswith("measured in")
    assert first.nfe == 10 and first.chunk_size == 50 and first.latency_compensation_ms == 60.0
    assert first.provider == "CPUExecutionProvider" and first.variant == "fp32" and first.runtime_matches
    assert any("no calibration for so100::" in line for line in lines)
    entry = json.loads(path.read_text())["entries"][first.key]
    assert entry["source"] == "measured" and entry["latency_source"] == "cold_start"
    assert entry["measurement_quality"]["measurement_iters"] == 6 and entry["expert_step_ms"] > 0

    before = runs(engine)
    lines2: list[str] = []
    second = session(path, lines2).resolve(engine, control_frequency_hz=30.0, execute_steps=10)
    assert runs(engine) == before  # the engine was not called at all
    assert second.cache_hit and second.measure_s == 0.0 and second.state == "cache hit"
    assert (second.nfe, second.chunk_size, second.latency_compensation_ms) == (10, 50, 60.0)
    assert any("cache hit for so100::" in line for line in lines2)
    assert not any("measuring" in line for line in lines2)


def test_the_tracker_learns_in_control_periods_of_the_resolved_rate(tmp_path, engine):
    """The latency tracker's tolerance is one control period of the rate being served, and
    follows a live rate change (re_resolve)."""
    s = session(tmp_path / "calibration.json", [])
    assert s.tracker.tolerance_ms == 5.0  # nothing resolved yet: the seed's rule
    s.resolve(engine, control_frequency_hz=30.0, execute_steps=10)
    assert s.tracker.tolerance_ms == pytest.approx(1000.0 / 30.0)
    s.re_resolve(control_frequency_hz=100.0, execute_steps=10)
    assert s.tracker.tolerance_ms == pytest.approx(10.0)


def test_force_and_stale_fingerprint_re_measure(tmp_path, engine):
    path = tmp_path / "calibration.json"
    session(path, []).resolve(engine, control_frequency_hz=30.0, execute_steps=10)
    lines: list[str] = []
    forced = session(path, lines, force=True).resolve(engine, control_frequency_hz=30.0, execute_steps=10)
    assert not forced.cache_hit and forced.stale_reasons == ["calibrate_force is set"]
    assert any("cache stale (calibrate_force is set)" in line for line in lines)
    document = json.loads(path.read_text())
    document["hardware_fingerprint"]["gpu_name"] = "NVIDIA A10G"
    path.write_text(json.dumps(document))
    lines = []
    stale = session(path, lines).resolve(engine, control_frequency_hz=30.0, execute_steps=10)
    assert not stale.cache_hit
    assert any("cache stale (fingerprint mismatch (gpu_name 'NVIDIA A10G' -> " in line for line in lines)
    assert json.loads(path.read_text())["hardware_fingerprint"]["gpu_name"] != "NVIDIA A10G"
    # Timings measured with another runtime (a provider / dtype switch) do not describe this engine.
    document = json.loads(path.read_text())
    key = stale.key
    assert (document["entries"][key]["provider"], document["entries"][key]["variant"]) == (
        "CPUExecutionProvider", "fp32")
    document["entries"][key]["provider"] = "CUDAExecutionProvider"
    path.write_text(json.dumps(document))
    lines = []
    switched = session(path, lines).resolve(engine, control_frequency_hz=30.0, execute_steps=10)
    assert not switched.cache_hit
    assert switched.stale_reasons == ["measured with CUDAExecutionProvider fp32, the engine runs "
                                      "CPUExecutionProvider fp32"]


def test_explicit_override_logged_once_and_live_re_resolve(tmp_path, engine):
    path = tmp_path / "calibration.json"
    session(path, []).resolve(engine, control_frequency_hz=30.0, execute_steps=10)
    lines: list[str] = []
    s = session(path, lines, explicit={"chunk_size": 40})
    res = s.resolve(engine, control_frequency_hz=30.0, execute_steps=10)
    assert res.chunk_size == 40 and res.sources["chunk_size"] == "explicit"
    before = runs(engine)
    fast = s.re_resolve(control_frequency_hz=5000.0, execute_steps=1)  # 0.2 ms per chunk: nothing fits
    assert runs(engine) == before  # re-resolved from the cached measurement
    assert fast.nfe == 1 and not fast.nfe_fits and fast.chunk_size == 40  # explicit still wins
    back = s.re_resolve(control_frequency_hz=30.0, execute_steps=10)
    assert back.nfe == 10
    ignored = [line for line in lines if line.startswith("[auto-calibrate] ignoring")]
    assert ignored == ["[auto-calibrate] ignoring cached chunk_size=50 because chunk_size=40 was set explicitly"]
    assert sum("No NFE fits budget — falling back to NFE=1" in line for line in lines) == 1


def test_learned_latency_is_persisted_and_used_on_the_next_start(tmp_path, engine):
    path = tmp_path / "calibration.json"
    lines: list[str] = []
    s = session(path, lines)
    first = s.resolve(engine, control_frequency_hz=30.0, execute_steps=10)
    assert s.state == f"measured in {first.measure_s:.1f} s; warming 0/30"
    s.record_actuation_lag(80.0)
    updates = [u for u in (s.record_loop_latency(20.0) for _ in range(45)) if u is not None]
    assert updates == [100.0]
    assert s.state == f"measured in {first.measure_s:.1f} s; learned 100.0 ms"
    s.flush()
    entry = json.loads(path.read_text())["entries"][s.key]
    assert entry["latency_compensation_ms"] == 100.0 and entry["latency_source"] == "learned"
    # on record as its two parts: p95 observation-to-publish + the actuation lag
    assert (entry["obs_to_publish_p95_ms"], entry["actuation_lag_ms"]) == (20.0, 80.0)
    assert entry["updated_at"] >= entry["measured_at"]
    restarted = session(path, []).resolve(engine, control_frequency_hz=30.0, execute_steps=10)
    assert restarted.cache_hit and restarted.latency_compensation_ms == 100.0
    assert restarted.latency_source == "learned"


def test_explicit_latency_disables_learning(tmp_path, engine):
    lines: list[str] = []
    s = session(tmp_path / "calibration.json", lines, explicit={"latency_compensation_ms": 50.0})
    res = s.resolve(engine, control_frequency_hz=30.0, execute_steps=10)
    assert res.latency_compensation_ms == 50.0 and res.latency_source == "explicit"
    assert all(s.record_loop_latency(20.0) is None for _ in range(100))
    assert lines[0] == ("[auto-calibrate] latency_compensation_ms=50.0 was set explicitly; "
                        "passive latency learning is off")


def test_a_corrupt_cache_costs_a_measurement_not_a_crash(tmp_path, engine):
    path = tmp_path / "calibration.json"
    path.write_text("\x00\x01 not json")
    lines: list[str] = []
    res = session(path, lines).resolve(engine, control_frequency_hz=30.0, execute_steps=10)
    assert not res.cache_hit and (tmp_path / "calibration.json.corrupt").exists()
    assert any("is corrupt" in line and "calibration.json.corrupt" in line for line in lines)
    assert res.key in json.loads(path.read_text())["entries"]


@pytest.mark.parametrize(("damage", "reason"), [
    (lambda e: [e["nfe"], e["chunk_size"]], "entry is a JSON array, expected an object"),
    (lambda e: {**e, "prefix_ms": None}, "prefix_ms=None is not a number"),
    (lambda e: {**e, "preprocess_ms": "fast"}, "preprocess_ms='fast' is not a number"),
    (lambda e: {**e, "expert_step_ms": float("nan")}, "expert_step_ms=nan is not finite"),
    (lambda e: {**e, "expert_step_ms": -3}, "expert_step_ms=-3 is out of range (must be > 0)"),
    (lambda e: {**e, "measured_at": "2999-01-01T00:00:00.000000Z"}, "measured_at 2999-01-01T00:00:00.000000Z is in the future"),
    (lambda e: {**e, "latency_compensation_ms": float("inf")}, "latency_compensation_ms=inf is not finite"),
    (lambda e: {**e, "provider": 7}, "provider=7 is not a name"),
    (lambda e: {**e, "measurement_quality": {**e["measurement_quality"], "quality_score": "good"}},
     "measurement_quality.quality_score='good' is not a number"),
])
def test_a_malformed_or_impossible_entry_is_stale_logged_re_measured_and_overwritten(tmp_path, engine, damage,
                                                                                     reason):
    """Issue 13 items 8-9: such entries crashed resolve (AttributeError / TypeError / ValueError)
    or were taken as cache hits (NaN -> NFE 1 with the chunk halved, -3 -> "-28.9 ms <= budget",
    2999 never expires)."""
    from reflex_ros.calibration.cache import entry_problem

    path = tmp_path / "calibration.json"
    key = session(path, []).resolve(engine, control_frequency_hz=30.0, execute_steps=10).key
    document = json.loads(path.read_text())
    document["entries"][key] = damage(document["entries"][key])
    path.write_text(json.dumps(document))
    lines: list[str] = []
    before = runs(engine)
    res = session(path, lines).resolve(engine, control_frequency_hz=30.0, execute_steps=10)
    assert not res.cache_hit and runs(engine) > before  # measured again
    assert len(res.stale_reasons) == 1 and res.stale_reasons[0].startswith(f"malformed entry ({reason}"), \
        res.stale_reasons
    assert any(line.startswith(f"[auto-calibrate] cache stale (malformed entry ({reason}") and "re-measuring" in line
               for line in lines), lines
    assert (res.nfe, res.chunk_size) == (10, 50)  # what the tiny export gets from a sound measurement
    entry = json.loads(path.read_text())["entries"][key]
    assert entry_problem(entry) is None and entry["source"] == "measured"


def test_re_resolve_before_resolve_is_a_clear_error(tmp_path):
    from reflex_ros.engine.types import ReflexError

    with pytest.raises(ReflexError, match="before resolve"):
        session(tmp_path / "c.json", []).re_resolve(control_frequency_hz=30.0, execute_steps=10)


def test_calibration_package_never_imports_rclpy():
    code = ("import sys\n"
            "import reflex_ros.calibration.session, reflex_ros.calibration.doctor, reflex_ros.calibration.cache\n"
            "import reflex_ros.calibration.actuation_lag, reflex_ros.calibration.tracker\n"
            "import reflex_ros.replay.bag_reader, reflex_ros.apps.calibrate, reflex_ros.calibration.live\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('rclpy', 'torch'))\n"
            "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_lerobot_export_is_measured_with_its_own_state_and_action_sizes(tmp_path, smolvla_export):
    """A LeRobot policy needs exactly its state size (its normalizer is per joint) and samples
    noise at its padded action width, not the robot's action size: the calibrator's synthetic
    call must be shaped like the node's, or configure fails on every real checkpoint."""
    from reflex_ros.engine.loader import load_engine

    eng = load_engine(smolvla_export)
    try:
        info = eng.info
        assert info.state_dim and info.state_dim < info.max_state_dim  # the case that broke
        assert info.action_width > info.action_dim
        resolution = session(tmp_path / "c.json", []).resolve(eng, control_frequency_hz=30.0, execute_steps=10)
        assert resolution.state.startswith("measured in")
        assert synthetic_observation(info).state.shape == (info.state_dim,)
    finally:
        eng.close()
