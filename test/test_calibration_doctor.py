"""`reflex-ros doctor --show-calibration`: text and JSON, absent and corrupt caches (the
doctor only reads: it never moves a corrupt cache aside)."""

from __future__ import annotations

import argparse
import json
from datetime import timedelta

from reflex_ros.calibration import doctor
from reflex_ros.calibration.cache import CalibrationCache, format_time, utc_now
from reflex_ros.calibration.fingerprint import collect_fingerprint, reflex_version


def run(argv: list[str], capsys) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="reflex-ros")
    doctor.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    code = args.func(args)
    return code, capsys.readouterr().out


def an_entry(**overrides) -> dict:
    entry = {"chunk_size": 50, "nfe": 10, "latency_compensation_ms": 60.0, "provider": "CPUExecutionProvider",
             "variant": "fp32", "measurement_quality": {"warmup_iters": 10, "measurement_iters": 100,
                                                        "median_ms": 3.1, "p99_ms": 4.2, "n_outliers_dropped": 2,
                                                        "quality_score": 0.72},
             "expert_step_ms": 0.25, "prefix_ms": 0.6, "source": "measured", "latency_source": "cold_start"}
    entry.update(overrides)
    return entry


def populated_cache(tmp_path):
    path = tmp_path / "calibration.json"
    cache = CalibrationCache(path)
    fp, version = collect_fingerprint(), reflex_version()
    cache.put_entry("so100::aaaa", an_entry(latency_compensation_ms=83.2, latency_source="learned"), fp, version)
    old = format_time(utc_now() - timedelta(days=45))
    cache.put_entry("franka::bbbb", an_entry(measured_at=old, source="bag:lab.mcap"), fp, version)
    return path


def test_absent_cache(tmp_path, capsys):
    path = tmp_path / "nowhere.json"
    code, out = run(["doctor", "--show-calibration", "--calibration-cache", str(path)], capsys)
    assert code == 0 and out.startswith(f"No calibration cache found at {path}")
    code, out = run(["doctor", "--show-calibration", "--format", "json", "--calibration-cache", str(path)], capsys)
    report = json.loads(out)
    assert code == 0 and report["status"] == "absent" and report["entries"] == []


def test_text_lists_every_entry_with_match_and_staleness(tmp_path, capsys):
    path = populated_cache(tmp_path)
    code, out = run(["doctor", "--show-calibration", "--calibration-cache", str(path)], capsys)
    assert code == 0
    assert f"Calibration cache: {path}" in out and "fingerprint:  match" in out and "2 entries:" in out
    assert "so100::aaaa  [fresh]" in out
    assert "latency_compensation_ms 83.2 (learned)" in out
    assert "franka::bbbb  [STALE: older than 30 days (45.0 days" in out
    assert "source bag:lab.mcap" in out


def test_json_for_ci(tmp_path, capsys):
    path = populated_cache(tmp_path)
    document = json.loads(path.read_text())
    document["hardware_fingerprint"]["gpu_name"] = "NVIDIA A10G"  # measured on another host
    path.write_text(json.dumps(document))
    code, out = run(["doctor", "--show-calibration", "--format", "json", "--calibration-cache", str(path)], capsys)
    report = json.loads(out)
    assert code == 0 and report["status"] == "ok" and report["schema_version"] == 1
    assert report["fingerprint_match"] is False and report["fingerprint_reason"].startswith("gpu_name 'NVIDIA A10G'")
    by_key = {e["key"]: e for e in report["entries"]}
    assert set(by_key) == {"so100::aaaa", "franka::bbbb"}
    assert by_key["so100::aaaa"]["embodiment"] == "so100" and by_key["so100::aaaa"]["model_hash"] == "aaaa"
    assert not by_key["so100::aaaa"]["fresh"]
    assert by_key["so100::aaaa"]["stale_reasons"][0].startswith("fingerprint mismatch (gpu_name")
    assert len(by_key["franka::bbbb"]["stale_reasons"]) == 2  # mismatch + age
    assert by_key["franka::bbbb"]["entry"]["source"] == "bag:lab.mcap"


def test_corrupt_cache_is_reported_and_left_alone(tmp_path, capsys):
    path = tmp_path / "calibration.json"
    path.write_text('{"schema_version": 1, "entries": ')
    code, out = run(["doctor", "--show-calibration", "--calibration-cache", str(path)], capsys)
    assert code == 1
    assert f"Calibration cache {path} is CORRUPT: not valid JSON" in out
    code, out = run(["doctor", "--format", "json", "--calibration-cache", str(path)], capsys)
    assert code == 1 and json.loads(out)["status"] == "corrupt"
    assert path.read_text() == '{"schema_version": 1, "entries": '
    assert not list(tmp_path.glob("*.corrupt*"))


def test_plain_doctor_summarises_the_host(tmp_path, capsys):
    path = populated_cache(tmp_path)
    code, out = run(["doctor", "--calibration-cache", str(path)], capsys)
    assert code == 0
    assert "onnxruntime: " in out and "CPUExecutionProvider" in out
    assert f"calibration: {path}: 2 entries, 1 fresh" in out


def test_the_lag_and_the_obs_to_publish_part_are_shown(tmp_path, capsys):
    """A learned latency_compensation_ms is shown with its two parts (text and JSON); a cold
    start says they are not learned yet; a bag without a lag estimate says so."""
    path = tmp_path / "calibration.json"
    cache = CalibrationCache(path)
    fp, version = collect_fingerprint(), reflex_version()
    cache.put_entry("so100::learned", an_entry(latency_compensation_ms=195.7, latency_source="learned",
                                               obs_to_publish_p95_ms=130.7, actuation_lag_ms=65.0), fp, version)
    cache.put_entry("so100::cold", an_entry(), fp, version)
    cache.put_entry("so100::nolag", an_entry(latency_compensation_ms=31.0, latency_source="learned",
                                             obs_to_publish_p95_ms=31.0, actuation_lag_ms=None), fp, version)
    code, out = run(["doctor", "--show-calibration", "--calibration-cache", str(path)], capsys)
    assert code == 0
    assert "latency 195.7 ms (learned) = obs->publish p95 130.7 ms + actuation lag 65.0 ms" in out
    assert "latency 60.0 ms (cold_start): the embodiment's starting value" in out
    assert "latency 31.0 ms (learned) = obs->publish p95 31.0 ms + actuation lag not estimated" in out
    code, out = run(["doctor", "--show-calibration", "--format", "json", "--calibration-cache", str(path)], capsys)
    entries = {e["key"]: e for e in json.loads(out)["entries"]}
    learned = entries["so100::learned"]
    assert (learned["latency_compensation_ms"], learned["obs_to_publish_p95_ms"], learned["actuation_lag_ms"]) == (
        195.7, 130.7, 65.0)
    assert learned["entry"]["actuation_lag_ms"] == 65.0 and learned["latency_source"] == "learned"
    assert entries["so100::cold"]["actuation_lag_ms"] is None and entries["so100::cold"]["obs_to_publish_p95_ms"] is None
    # the seed's schema fields are untouched
    assert {"chunk_size", "nfe", "latency_compensation_ms", "provider", "variant", "measurement_quality"} <= set(
        learned["entry"])
