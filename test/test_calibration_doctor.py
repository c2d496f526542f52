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
