"""The calibration cache: schema v1 round trip, staleness rules, corruption, real concurrent
writer processes and a writer killed mid-write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import pytest

from reflex_ros.calibration.cache import (
    SCHEMA_VERSION,
    CacheWriteError,
    CalibrationCache,
    default_cache_path,
    entry_key,
    format_time,
    parse_time,
    read_cache_file,
    staleness_reasons,
    utc_now,
)
from reflex_ros.calibration.fingerprint import collect_fingerprint, matches, parse_nvidia_smi, split_version

FP = {
    "gpu_uuid": "GPU-0f1e2d3c", "gpu_name": "NVIDIA A10G", "driver_version_major": 535,
    "driver_version_minor": 129, "cuda_version_major": 12, "cuda_version_minor": 2, "cpu_count": 8,
    "ram_gb": 32, "compute_capability": "8.6",
}
VERSION = "0.1.0"


def an_entry(**overrides) -> dict:
    entry = {
        "chunk_size": 50, "nfe": 4, "latency_compensation_ms": 42.5, "provider": "TensorrtExecutionProvider",
        "variant": "fp16",
        "measurement_quality": {"warmup_iters": 10, "measurement_iters": 100, "median_ms": 38.2, "p99_ms": 47.1,
                                "n_outliers_dropped": 10, "quality_score": 0.94},
        "expert_step_ms": 3.1, "prefix_ms": 12.0, "source": "measured", "latency_source": "cold_start",
    }
    entry.update(overrides)
    return entry


def test_round_trip_schema_v1(tmp_path):
    cache = CalibrationCache(tmp_path / "sub" / "calibration.json")
    cache.put_entry(entry_key("franka", "abc123"), an_entry(), FP, VERSION)
    text = (tmp_path / "sub" / "calibration.json").read_text()
    assert text.lstrip().startswith('{\n  "schema_version": 1,')
    result = cache.load()
    assert result.status == "ok"
    doc = result.document
    assert list(doc)[:5] == ["schema_version", "reflex_version", "calibration_date", "hardware_fingerprint", "entries"]
    assert doc["schema_version"] == SCHEMA_VERSION and doc["reflex_version"] == VERSION
    assert doc["hardware_fingerprint"] == FP
    entry = doc["entries"]["franka::abc123"]
    assert {k: entry[k] for k in an_entry()} == an_entry()
    assert parse_time(entry["measured_at"]) is not None and entry["updated_at"] == entry["measured_at"]
    assert parse_time(doc["calibration_date"]) == parse_time(entry["measured_at"])
    # A second entry coexists; patching one leaves the other alone and keeps measured_at.
    cache.put_entry("so100::abc123", an_entry(nfe=10), FP, VERSION)
    assert cache.patch_entry("franka::abc123", {"latency_compensation_ms": 83.2, "latency_source": "learned"})
    doc = cache.load().document
    assert doc["entries"]["franka::abc123"]["latency_compensation_ms"] == 83.2
    assert doc["entries"]["franka::abc123"]["measured_at"] == entry["measured_at"]
    assert doc["entries"]["so100::abc123"]["nfe"] == 10
    assert not cache.patch_entry("ur5::nothing", {"nfe": 1})
    assert default_cache_path() == Path("~/.reflex/calibration.json").expanduser()


def test_timestamps_use_the_seed_format():
    when = utc_now()
    text = format_time(when)
    assert text.endswith("Z") and len(text) == len("2026-04-25T16:30:00.000000Z")
    assert parse_time(text) == when.replace(microsecond=when.microsecond)
    assert parse_time("2026-04-25T16:30:00.000000Z").year == 2026
    assert parse_time("yesterday") is None


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({}, None),
        ({"force": True}, "calibrate_force is set"),
        ({"fp": {"gpu_name": "NVIDIA H100"}}, "fingerprint mismatch (gpu_name 'NVIDIA A10G' -> 'NVIDIA H100')"),
        ({"fp": {"gpu_uuid": "GPU-other"}}, "fingerprint mismatch (gpu_uuid"),
        ({"fp": {"driver_version_major": 550}}, "fingerprint mismatch (driver_version_major 535 -> 550)"),
        ({"fp": {"driver_version_minor": 154}}, "fingerprint mismatch (driver_version_minor 129 -> 154)"),
        ({"fp": {"cuda_version_minor": 4}}, "fingerprint mismatch (cuda_version_minor 2 -> 4)"),
        ({"fp": {"cpu_count": 16}}, "fingerprint mismatch (cpu_count 8 -> 16)"),
        ({"fp": {"ram_gb": 31}}, None),  # MemTotal rounding wobble is not a new host
        ({"fp": {"ram_gb": 64}}, "fingerprint mismatch (ram_gb 32 -> 64)"),
        ({"version": "0.2.0"}, "reflex_ros version changed (0.1.0 -> 0.2.0)"),
        ({"age_days": 29.5}, None),
        ({"age_days": 31}, "older than 30 days (31.0 days"),
        ({"entry": {"expert_step_ms": None}}, "entry lacks expert_step_ms"),
        ({"entry": {"nfe": 0}}, "malformed entry (nfe=0 is not a positive integer)"),
        ({"entry": {"measured_at": "2999-01-01T00:00:00Z"}}, "malformed entry (measured_at 2999-01-01T00:00:00.000000Z "
                                                            "is in the future"),
        ({"entry": {"prefix_ms": float("nan")}}, "malformed entry (prefix_ms=nan is not finite)"),
        ({"entry": {"latency_source": "guessed"}}, "malformed entry (latency_source='guessed' is not one of"),
    ],
)
def test_staleness_rules(change, expected):
    now = utc_now()
    measured = now - timedelta(days=change.get("age_days", 1))
    document = {"schema_version": 1, "reflex_version": VERSION, "calibration_date": format_time(measured),
                "hardware_fingerprint": FP, "entries": {}}
    entry = an_entry(measured_at=format_time(measured))
    for key, value in change.get("entry", {}).items():
        if value is None:
            entry.pop(key)
        else:
            entry[key] = value
    current = {**FP, **change.get("fp", {})}
    reasons = staleness_reasons(document, entry, current, change.get("version", VERSION), now=now,
                                force=change.get("force", False))
    if expected is None:
        assert reasons == []
    else:
        assert len(reasons) == 1 and reasons[0].startswith(expected), reasons


def test_driver_patch_is_ignored():
    assert split_version("535.129.03") == split_version("535.129.05") == (535, 129)
    assert split_version("12.2") == (12, 2) and split_version("garbage") == (0, 0)
    smi = "GPU-aaaa, NVIDIA A10G, 535.129.05, 8.6\n"
    fp = parse_nvidia_smi(smi, "| NVIDIA-SMI 535.129.05   Driver Version: 535.129.05   CUDA Version: 12.2 |")
    assert matches(FP, {**fp, "gpu_uuid": FP["gpu_uuid"], "cpu_count": 8, "ram_gb": 32}) == (True, "match")


def test_this_host_fingerprint_is_complete():
    fp = collect_fingerprint()
    assert set(fp) >= {"gpu_uuid", "gpu_name", "driver_version_major", "driver_version_minor",
                       "cuda_version_major", "cuda_version_minor", "cpu_count", "ram_gb"}
    assert fp["cpu_count"] >= 1 and fp["ram_gb"] >= 1
    assert matches(fp, collect_fingerprint()) == (True, "match")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # every GPU hidden -> a CPU host
    out = subprocess.run([sys.executable, "-c", "import json; from reflex_ros.calibration.fingerprint import "
                          "collect_fingerprint as c; print(json.dumps(c()))"], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert json.loads(out)["gpu_uuid"] == "none"


def test_corrupt_file_is_moved_aside_never_overwritten(tmp_path):
    path = tmp_path / "calibration.json"
    warnings: list[str] = []
    cache = CalibrationCache(path, warn=warnings.append)
    path.write_text("{ this is not json")
    result = cache.load()
    assert result.status == "corrupt" and "not valid JSON" in result.error
    assert result.moved_to == tmp_path / "calibration.json.corrupt"
    assert (tmp_path / "calibration.json.corrupt").read_text() == "{ this is not json"
    assert not path.exists()
    assert len(warnings) == 1 and str(path) in warnings[0] and "calibration.json.corrupt" in warnings[0]
    # A second corruption lands next to the first, which stays intact.
    path.write_text(json.dumps({"schema_version": 7, "entries": {}}))
    cache.put_entry("so100::h", an_entry(), FP, VERSION)  # a writer also copes: moves aside, starts fresh
    assert (tmp_path / "calibration.json.corrupt").read_text() == "{ this is not json"
    assert "schema_version" in (tmp_path / "calibration.json.corrupt.1").read_text()
    assert "schema_version is 7, expected 1" in warnings[-1]
    assert list(cache.load().document["entries"]) == ["so100::h"]
    # Binary garbage and a wrong top-level type are corrupt too.
    for raw in (b"\xff\xfe\x00garbage", b"[1, 2, 3]"):
        path.write_bytes(raw)
        assert cache.load().status == "corrupt"
    assert sorted(p.name for p in tmp_path.glob("calibration.json.corrupt*")) == [
        "calibration.json.corrupt", "calibration.json.corrupt.1", "calibration.json.corrupt.2",
        "calibration.json.corrupt.3"]


def test_unwritable_location_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cache = CalibrationCache(blocker / "calibration.json", warn=lambda _: None)
    with pytest.raises(CacheWriteError, match="a_file/calibration.json.lock.*--calibration-cache"):
        cache.put_entry("so100::h", an_entry(), FP, VERSION)
    assert cache.load().status == "absent"


WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from reflex_ros.calibration.cache import CalibrationCache
    path, name, count, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    while not go.exists():
        time.sleep(0.005)
    cache = CalibrationCache(path)
    fp = {json_fp}
    entry = {json_entry}
    for i in range(count):
        cache.put_entry(f"{{name}}::{{i}}", entry, fp, "0.1.0")
    print("done", name)
""")


def test_two_writer_processes_both_entries_survive(tmp_path):
    path = tmp_path / "calibration.json"
    go = tmp_path / "go"
    script = WRITER.format(json_fp=repr(FP), json_entry=repr(an_entry()))
    count = 15
    procs = [subprocess.Popen([sys.executable, "-c", script, str(path), name, str(count), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in ("franka", "so100")]
    try:
        go.write_text("go")
        outputs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], outputs
    entries = read_cache_file(path).document["entries"]
    assert sorted(entries) == sorted(f"{n}::{i}" for n in ("franka", "so100") for i in range(count))
    assert not list(tmp_path.glob(".calibration.json.*.tmp"))


KILLED_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from reflex_ros.calibration.cache import CalibrationCache
    path, marker = sys.argv[1], Path(sys.argv[2])
    def stall(tmp):
        marker.write_text(str(tmp))
        time.sleep(120)
    cache = CalibrationCache(path, after_temp_written=stall)
    cache.put_entry("so100::new", {json_entry}, {json_fp}, "0.1.0")
""")


def test_writer_killed_mid_write_leaves_old_content(tmp_path):
    path = tmp_path / "calibration.json"
    CalibrationCache(path).put_entry("franka::old", an_entry(), FP, VERSION)
    before = path.read_bytes()
    marker = tmp_path / "temp_written"
    script = KILLED_WRITER.format(json_fp=repr(FP), json_entry=repr(an_entry(nfe=10)))
    proc = subprocess.Popen([sys.executable, "-c", script, str(path), str(marker)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert marker.exists(), proc.communicate(timeout=5)
        temp = Path(marker.read_text())
        assert temp.exists() and "so100::new" in temp.read_text()  # the new content was fully written...
        os.kill(proc.pid, signal.SIGKILL)  # ...and the writer dies before the rename
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert path.read_bytes() == before
    assert list(read_cache_file(path).document["entries"]) == ["franka::old"]
    # The lock died with the writer; the next writer proceeds and sweeps the orphaned temp file.
    CalibrationCache(path).put_entry("ur5::next", an_entry(), FP, VERSION)
    assert sorted(read_cache_file(path).document["entries"]) == ["franka::old", "ur5::next"]
    assert not temp.exists()


def test_a_directory_path_is_never_moved(tmp_path):
    warnings: list[str] = []
    directory = tmp_path / "reflex"
    directory.mkdir()
    cache = CalibrationCache(directory, warn=warnings.append)
    assert cache.load().status == "corrupt"
    assert directory.is_dir() and not list(tmp_path.glob("*.corrupt*"))
    assert "is a directory, expected a JSON file" in warnings[0]
    with pytest.raises(CacheWriteError, match="cannot write calibration cache"):
        cache.put_entry("so100::h", an_entry(), FP, VERSION)
    assert directory.is_dir()


def test_foreign_host_entries_are_dropped_on_write(tmp_path):
    warnings: list[str] = []
    cache = CalibrationCache(tmp_path / "calibration.json", warn=warnings.append)
    cache.put_entry("franka::a", an_entry(), FP, VERSION)
    other_host = {**FP, "gpu_name": "NVIDIA H100", "gpu_uuid": "GPU-9"}
    cache.put_entry("so100::b", an_entry(), other_host, VERSION)
    doc = cache.load().document
    assert list(doc["entries"]) == ["so100::b"] and doc["hardware_fingerprint"] == other_host
    assert "dropping 1 cached entry measured on another host/version" in warnings[-1]
    assert "franka::a" in warnings[-1]
