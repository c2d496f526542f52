"""Fingerprint parsing and matching. The nvidia-smi text below is verbatim output of the lent
H100 machine (NVML on that host returned the same fields)."""

from __future__ import annotations

import pytest

from reflex_ros.calibration.fingerprint import gpu_compute_capability, matches, parse_nvidia_smi

H100_QUERY = "GPU-e5d40f5a-1535-f059-ee04-7aff0a2408ed, NVIDIA H100 80GB HBM3, 580.159.04, 9.0\n"
H100_BANNER = """Sat Nov 21 05:22:21 2026
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 580.159.04             Driver Version: 580.159.04     CUDA Version: 13.0     |
+-----------------------------------------+------------------------+----------------------+
"""


def test_parse_real_h100_output():
    fp = parse_nvidia_smi(H100_QUERY, H100_BANNER)
    assert fp == {
        "gpu_uuid": "GPU-e5d40f5a-1535-f059-ee04-7aff0a2408ed", "gpu_name": "NVIDIA H100 80GB HBM3",
        "driver_version_major": 580, "driver_version_minor": 159, "cuda_version_major": 13,
        "cuda_version_minor": 0, "compute_capability": "9.0",
    }
    assert gpu_compute_capability(fp) == (9, 0)
    assert gpu_compute_capability({"compute_capability": "none"}) is None


def test_cuda_visible_devices_selects_the_gpu():
    two = H100_QUERY + "GPU-1111, NVIDIA L4, 580.159.04, 8.9\n"
    assert parse_nvidia_smi(two, H100_BANNER, "1")["gpu_name"] == "NVIDIA L4"
    assert parse_nvidia_smi(two, H100_BANNER, "GPU-1111")["compute_capability"] == "8.9"
    assert parse_nvidia_smi(two, H100_BANNER, "5") is None  # no such GPU: treated as a CPU host
    assert parse_nvidia_smi("", H100_BANNER) is None
    assert parse_nvidia_smi(H100_QUERY, "no banner")["cuda_version_major"] == 0


@pytest.mark.parametrize(
    ("cached_change", "ok", "reason"),
    [
        ({}, True, "match"),
        ({"driver_version_minor": 172}, False, "driver_version_minor 172 -> 159"),
        ({"gpu_uuid": "GPU-other"}, False, "gpu_uuid 'GPU-other' -> 'GPU-e5d40f5a"),
        ({"ram_gb": 125}, True, "match"),
        ({"cpu_count": None}, False, "cpu_count missing from the cached fingerprint"),
    ],
)
def test_matches(cached_change, ok, reason):
    current = {**parse_nvidia_smi(H100_QUERY, H100_BANNER), "cpu_count": 16, "ram_gb": 126}
    cached = dict(current)
    for key, value in cached_change.items():
        if value is None:
            cached.pop(key)
        else:
            cached[key] = value
    got_ok, got_reason = matches(cached, current)
    assert got_ok is ok and got_reason.startswith(reason)
    assert matches(None, current) == (False, "no fingerprint in the cache")
