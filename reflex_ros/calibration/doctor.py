"""``reflex-ros doctor``: what this host is and what the calibration cache says about it.

``--show-calibration`` prints every cache entry with whether the host fingerprint still
matches and, per entry, why it is stale (or "fresh"); ``--format json`` gives the same for
CI. The doctor only *reads*: a corrupt cache is reported (exit 1), never moved aside, so
running it cannot change what a node will find.

Exit codes: 0 the cache is readable (or absent: "No calibration cache found at PATH"),
1 the cache is corrupt or unreadable, 2 usage errors (argparse).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from reflex_ros.vocab import DEFAULT_CALIBRATION_CACHE


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="show this host's fingerprint and the auto-calibration cache",
        description="Show this host's hardware fingerprint and, with --show-calibration, every "
                    "calibration cache entry with its fingerprint match and staleness reason.",
    )
    parser.add_argument("--show-calibration", action="store_true",
                        help="list every entry of the calibration cache with its staleness")
    parser.add_argument("--format", choices=("text", "json"), default="text", help="output format (json for CI)")
    parser.add_argument("--calibration-cache", default=None, metavar="PATH",
                        help=f"cache file (default {DEFAULT_CALIBRATION_CACHE})")
    parser.set_defaults(func=run_doctor)


def calibration_report(path: str | Path | None, now: datetime | None = None,
                       fingerprint: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything ``--show-calibration`` shows, as plain data (the JSON output)."""
    from reflex_ros.calibration.cache import (
        read_cache_file,
        resolve_cache_path,
        split_entry_key,
        staleness_reasons,
        utc_now,
    )
    from reflex_ros.calibration.fingerprint import collect_fingerprint, matches, reflex_version

    cache_path = resolve_cache_path(path)
    current = fingerprint if fingerprint is not None else collect_fingerprint()
    version = reflex_version()
    result = read_cache_file(cache_path)
    report: dict[str, Any] = {
        "path": str(cache_path),
        "status": result.status,
        "error": result.error,
        "current_fingerprint": current,
        "current_reflex_version": version,
    }
    if result.status != "ok" or result.document is None:
        report["entries"] = []
        return report
    document = result.document
    ok, why = matches(document.get("hardware_fingerprint"), current)
    report.update({
        "schema_version": document.get("schema_version"),
        "reflex_version": document.get("reflex_version"),
        "calibration_date": document.get("calibration_date"),
        "hardware_fingerprint": document.get("hardware_fingerprint"),
        "fingerprint_match": ok,
        "fingerprint_reason": why,
    })
    entries = []
    when = now or utc_now()
    for key, entry in sorted(document["entries"].items()):
        embodiment, model_hash = split_entry_key(key)
        reasons = staleness_reasons(document, entry, current, version, now=when)
        entries.append({
            "key": key,
            "embodiment": embodiment,
            "model_hash": model_hash,
            "fresh": not reasons,
            "stale_reasons": reasons,
            **latency_breakdown(entry),
            "entry": entry,
        })
    report["entries"] = entries
    return report


def latency_breakdown(entry: Any) -> dict[str, Any]:
    """Why latency_compensation_ms is what it is: its source and, when learned, its two parts
    (``obs_to_publish_p95_ms + actuation_lag_ms``; None where not on record)."""
    entry = entry if isinstance(entry, dict) else {}
    return {
        "latency_compensation_ms": entry.get("latency_compensation_ms"),
        "latency_source": entry.get("latency_source"),
        "obs_to_publish_p95_ms": entry.get("obs_to_publish_p95_ms"),
        "actuation_lag_ms": entry.get("actuation_lag_ms"),
    }


def _latency_text(entry: dict[str, Any]) -> str:
    """``latency 195.7 ms (learned) = obs->publish p95 130.7 ms + actuation lag 65.0 ms``."""
    parts = latency_breakdown(entry)
    lat, source = parts["latency_compensation_ms"], parts["latency_source"] or "?"
    text = f"latency {lat:.1f} ms ({source})" if isinstance(lat, int | float) else f"latency {lat} ({source})"
    o2p, lag = parts["obs_to_publish_p95_ms"], parts["actuation_lag_ms"]
    if isinstance(o2p, int | float):
        lag_text = f"{lag:.1f} ms" if isinstance(lag, int | float) else "not estimated"
        return f"{text} = obs->publish p95 {o2p:.1f} ms + actuation lag {lag_text}"
    if source == "learned":
        return f"{text}; its parts are not on record (learned before they were kept)"
    if source == "cold_start":
        return f"{text}: the embodiment's starting value; obs->publish and actuation lag not learned yet"
    return text


def _fmt_fingerprint(fp: dict[str, Any] | None) -> str:
    if not isinstance(fp, dict):
        return "?"
    gpu = fp.get("gpu_name", "?")
    if gpu == "none":
        gpu = "no GPU"
    else:
        gpu = (f"{gpu} (sm {fp.get('compute_capability', '?')}, driver {fp.get('driver_version_major')}."
               f"{fp.get('driver_version_minor')}, CUDA {fp.get('cuda_version_major')}.{fp.get('cuda_version_minor')})")
    return f"{gpu}, {fp.get('cpu_count', '?')} CPUs, {fp.get('ram_gb', '?')} GiB RAM"


def format_report_text(report: dict[str, Any]) -> str:
    """The human form of :func:`calibration_report`."""
    lines = []
    path = report["path"]
    if report["status"] == "absent":
        return (f"No calibration cache found at {path}\n"
                "  (start the node with auto_calibrate:=true, or run `reflex-ros calibrate --bag ...`)")
    if report["status"] == "corrupt":
        return (f"Calibration cache {path} is CORRUPT: {report['error']}\n"
                "  A node with auto_calibrate moves it aside to *.corrupt and re-measures; "
                "the doctor leaves it untouched.")
    lines.append(f"Calibration cache: {path}")
    lines.append(f"  schema_version {report['schema_version']}, written by reflex_ros {report['reflex_version']} "
                 f"(this is {report['current_reflex_version']}), last calibration {report['calibration_date']}")
    lines.append(f"  cached host:  {_fmt_fingerprint(report['hardware_fingerprint'])}")
    lines.append(f"  this host:    {_fmt_fingerprint(report['current_fingerprint'])}")
    lines.append("  fingerprint:  " + ("match" if report["fingerprint_match"] else
                                      f"MISMATCH ({report['fingerprint_reason']})"))
    entries = report["entries"]
    lines.append(f"  {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}:")
    for item in entries:
        status = "fresh" if item["fresh"] else "STALE: " + "; ".join(item["stale_reasons"])
        lines.append(f"  {item['key']}  [{status}]")
        entry = item["entry"]
        if not isinstance(entry, dict):
            continue
        lat = entry.get("latency_compensation_ms")
        lat_text = f"{lat:.1f}" if isinstance(lat, int | float) else str(lat)
        lines.append(
            f"      nfe {entry.get('nfe')}  chunk_size {entry.get('chunk_size')}  latency_compensation_ms "
            f"{lat_text} ({entry.get('latency_source', '?')})  provider {entry.get('provider')}  "
            f"variant {entry.get('variant')}"
        )
        lines.append(f"      {_latency_text(entry)}")
        quality = entry.get("measurement_quality")
        if isinstance(quality, dict):
            lines.append(
                f"      measured {entry.get('measured_at', '?')} (source {entry.get('source', '?')}): "
                f"median {quality.get('median_ms')} ms, p99 {quality.get('p99_ms')} ms, "
                f"expert step {entry.get('expert_step_ms', '?')} ms, prefix {entry.get('prefix_ms', '?')} ms, "
                f"{quality.get('n_outliers_dropped')}/{quality.get('measurement_iters')} outliers dropped, "
                f"quality {quality.get('quality_score')}"
            )
    return "\n".join(lines)


def run_doctor(args: argparse.Namespace) -> int:
    report = calibration_report(args.calibration_cache)
    if args.format == "json":
        print(json.dumps(report, indent=2, default=str))
    elif args.show_calibration:
        print(format_report_text(report))
    else:
        from reflex_ros.calibration.session import onnx_providers

        print(f"host:        {_fmt_fingerprint(report['current_fingerprint'])}")
        print(f"reflex_ros:  {report['current_reflex_version']}")
        print(f"onnxruntime: {', '.join(onnx_providers())}")
        fresh = sum(1 for e in report["entries"] if e["fresh"])
        state = {"absent": "none yet", "corrupt": f"CORRUPT ({report['error']})"}.get(
            report["status"], f"{len(report['entries'])} entries, {fresh} fresh")
        print(f"calibration: {report['path']}: {state} (details: --show-calibration)")
    sys.stdout.flush()
    return 1 if report["status"] == "corrupt" else 0
