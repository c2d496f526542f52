"""The node with auto_calibrate on: first start measures and writes the cache, a second start
hits it without measuring, the loop latency is learned live into the parameter (and the
cache), and an explicitly set latency_compensation_ms is never overwritten."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from _ros_harness import RosHarness, wait_for

from reflex_ros.engine.bundle import load_bundle
from reflex_ros.ros.runner import PolicyNodeProcess

HZ = 30.0


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("calib") / "calibration.json"


def _node(export: Path, cache: Path, name: str) -> PolicyNodeProcess:
    return PolicyNodeProcess(export, embodiment="so100", auto_calibrate=True, node_name=name,
                             parameters={"calibration_cache": str(cache), "execute_steps": 1},
                             log=lambda line: None)


def test_first_start_measures_learns_latency_and_persists(tiny_export: Path, cache: Path) -> None:
    key = f"so100::{load_bundle(tiny_export).model_hash}"
    with _node(tiny_export, cache, "reflex_calib_a") as node:
        assert any("[auto-calibrate] no calibration for" in line for line in node.lines)
        assert any("[auto-calibrate] wrote" in line for line in node.lines)
        entry = json.loads(cache.read_text())["entries"][key]
        assert entry["latency_source"] == "cold_start"
        robot = RosHarness(node_fqn=node.fqn)
        try:
            assert robot.get_params("latency_compensation_ms", "nfe") == [60.0, entry["nfe"]]  # cold start
            robot.feed(True, rate_hz=HZ)
            learned = wait_for(lambda: (v := robot.get_params("latency_compensation_ms")[0]) != 60.0 and v,
                               180, "a learned latency_compensation_ms", poll_s=0.5)
            assert 0 < learned < 1000
            k = math.ceil(learned * HZ / 1000 - 1e-6)
            chunk = wait_for(lambda: next((r.msg for r in reversed(robot.chunks)
                                           if abs(r.msg.latency_compensation_ms - learned) < 1e-3), None),
                             60, "a chunk using the learned latency")
            assert chunk.skipped_steps == k
            wait_for(lambda: json.loads(cache.read_text())["entries"][key]["latency_source"] == "learned",
                     60, "the learned latency in the cache")
            diag = robot.latest_diagnostics(after_ns=robot.now_ns())
            assert float(diag["latency_compensation_ms"]) == pytest.approx(
                robot.get_params("latency_compensation_ms")[0], abs=1e-3)
            assert diag["calibration_state"].startswith("measured in")
        finally:
            robot.close()


def test_second_start_hits_the_cache_and_explicit_latency_wins(tiny_export: Path, cache: Path) -> None:
    key = f"so100::{load_bundle(tiny_export).model_hash}"
    stored = json.loads(cache.read_text())["entries"][key]
    assert stored["latency_source"] == "learned"
    with _node(tiny_export, cache, "reflex_calib_b") as node:
        assert any("[auto-calibrate] cache hit" in line for line in node.lines)
        assert not any("measuring" in line for line in node.lines)
        robot = RosHarness(node_fqn=node.fqn)
        try:
            start = robot.get_params("latency_compensation_ms")[0]
            assert start == pytest.approx(stored["latency_compensation_ms"], abs=0.05)
            assert robot.set_params(latency_compensation_ms=45.0) == [(True, "")]  # a user pins it
            robot.feed(True, rate_hz=HZ)
            chunks = robot.wait_chunks(60, timeout_s=180)
            assert chunks[-1].msg.latency_compensation_ms == pytest.approx(45.0)
            assert robot.get_params("latency_compensation_ms") == [45.0]
            # the tracker did learn a value meanwhile, and the node refused to apply it
            assert node.wait_for_log("was set explicitly; not applying the learned", timeout_s=120)
            assert robot.get_params("latency_compensation_ms") == [45.0]
        finally:
            robot.close()


def test_a_malformed_cache_entry_costs_a_measurement_not_a_failed_configure(tiny_export: Path,
                                                                            tmp_path: Path) -> None:
    """Issue 13 item 8: an entry that is a JSON array made configure fail with AttributeError."""
    from reflex_ros.calibration.cache import entry_problem, format_time, utc_now
    from reflex_ros.calibration.fingerprint import collect_fingerprint, reflex_version

    key = f"so100::{load_bundle(tiny_export).model_hash}"
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"schema_version": 1, "reflex_version": reflex_version(),
                                "calibration_date": format_time(utc_now()),
                                "hardware_fingerprint": collect_fingerprint(), "entries": {key: [10, 50, 60.0]}}))
    with _node(tiny_export, path, "reflex_calib_bad") as node:
        assert node.state() == "active"
        stale = [line for line in node.lines if "[auto-calibrate] cache stale" in line]
        assert stale and "malformed entry (entry is a JSON array, expected an object)" in stale[0]
        assert any("[auto-calibrate] wrote" in line for line in node.lines)
    assert entry_problem(json.loads(path.read_text())["entries"][key]) is None  # overwritten with a good one
