"""What this host is, as far as inference latency is concerned.

A calibration measured on one GPU / driver / CUDA stack says nothing about another, so the
cache stores the fingerprint of the host that measured it and :func:`matches` decides whether
a cached measurement still describes this machine. Driver *patch* releases are ignored (they
do not move kernel timings in practice, and re-measuring after every security patch would
make the cache useless); a major or minor bump is a new stack.

Collection never imports a GPU library by force: NVML (``pynvml``) when installed, else
``nvidia-smi``, else a CPU host (``gpu_uuid`` "none"). No torch, no rclpy.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from typing import Any

NO_GPU = "none"
NVIDIA_SMI_TIMEOUT_S = 10.0
RAM_TOLERANCE_GB = 1  # MemTotal shifts by a few hundred MB across kernel updates

# The seed's hardware_fingerprint keys, plus compute_capability ("9.0", or "none"), which the
# resolver needs for the fp8 rule (sm_89+) and which is a pure function of the GPU.
FINGERPRINT_KEYS: tuple[str, ...] = (
    "gpu_uuid",
    "gpu_name",
    "driver_version_major",
    "driver_version_minor",
    "cuda_version_major",
    "cuda_version_minor",
    "cpu_count",
    "ram_gb",
    "compute_capability",
)

# Compared in this order; the first difference becomes the reason a user reads.
# (compute_capability is not compared: it follows from the GPU name.)
_COMPARED: tuple[str, ...] = tuple(k for k in FINGERPRINT_KEYS if k != "compute_capability")


def reflex_version() -> str:
    """The installed reflex_ros version (a version change invalidates measurements)."""
    import reflex_ros

    version = getattr(reflex_ros, "__version__", None)
    if version is None:  # imported as a namespace package (generated msgs shadowing the sources)
        from importlib import metadata

        try:
            version = metadata.version("reflex_ros")
        except metadata.PackageNotFoundError:
            version = "0+unknown"
    return str(version)


def split_version(text: str) -> tuple[int, int]:
    """``"535.129.03"`` -> ``(535, 129)``; ``"12.2"`` -> ``(12, 2)``; junk -> ``(0, 0)``.

    The patch component is dropped on purpose (see the module docstring).
    """
    parts = re.findall(r"\d+", str(text))
    major = int(parts[0]) if parts else 0
    minor = int(parts[1]) if len(parts) > 1 else 0
    return major, minor


def cpu_count() -> int:
    """CPUs this process may run on (the cgroup / affinity view, not the socket count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def ram_gb() -> int:
    """Physical memory in GiB, rounded to the nearest integer."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0
    return int(round(total / 2**30))


def _visible_gpu_selector() -> str | None:
    """The first entry of CUDA_VISIBLE_DEVICES (an index or a UUID), the GPU a runtime uses."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    first = value.split(",")[0].strip()
    return first or "-1"  # CUDA_VISIBLE_DEVICES="" hides every GPU


def parse_nvidia_smi(query_csv: str, banner: str, selector: str | None = None) -> dict[str, Any] | None:
    """GPU facts from ``nvidia-smi --query-gpu=uuid,name,driver_version,compute_cap
    --format=csv,noheader`` and the plain ``nvidia-smi`` banner (which carries "CUDA Version").

    ``selector`` is a CUDA_VISIBLE_DEVICES entry (index or UUID prefix); None picks GPU 0.
    Returns None when no GPU row is usable.
    """
    rows = [[c.strip() for c in line.split(",")] for line in query_csv.strip().splitlines() if line.strip()]
    rows = [r for r in rows if len(r) >= 3]
    if not rows:
        return None
    row = rows[0]
    if selector is not None:
        if selector.isdigit() or selector.startswith("-"):
            index = int(selector)
            if index < 0 or index >= len(rows):
                return None
            row = rows[index]
        else:
            matching = [r for r in rows if r[0].startswith(selector)]
            if not matching:
                return None
            row = matching[0]
    uuid, name, driver = row[0], row[1], row[2]
    compute = row[3] if len(row) > 3 and re.match(r"^\d+\.\d+$", row[3]) else NO_GPU
    match = re.search(r"CUDA Version\s*:?\s*(\d+)\.(\d+)", banner)
    cuda = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    driver_major, driver_minor = split_version(driver)
    return {
        "gpu_uuid": uuid,
        "gpu_name": name,
        "driver_version_major": driver_major,
        "driver_version_minor": driver_minor,
        "cuda_version_major": cuda[0],
        "cuda_version_minor": cuda[1],
        "compute_capability": compute,
    }


def _gpu_from_nvml(selector: str | None) -> dict[str, Any] | None:
    try:
        import pynvml  # nvidia-ml-py; optional
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver: a CPU host with the package installed
        return None
    try:
        count = pynvml.nvmlDeviceGetCount()
        if count == 0:
            return None
        if selector is None:
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        elif selector.isdigit() or selector.startswith("-"):
            if not 0 <= int(selector) < count:
                return None
            handle = pynvml.nvmlDeviceGetHandleByIndex(int(selector))
        else:
            handle = pynvml.nvmlDeviceGetHandleByUUID(selector)

        def text(value: Any) -> str:
            return value.decode() if isinstance(value, bytes) else str(value)

        driver_major, driver_minor = split_version(text(pynvml.nvmlSystemGetDriverVersion()))
        cuda = int(pynvml.nvmlSystemGetCudaDriverVersion())  # e.g. 12020 for 12.2
        major_cc, minor_cc = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
        return {
            "gpu_uuid": text(pynvml.nvmlDeviceGetUUID(handle)),
            "gpu_name": text(pynvml.nvmlDeviceGetName(handle)),
            "driver_version_major": driver_major,
            "driver_version_minor": driver_minor,
            "cuda_version_major": cuda // 1000,
            "cuda_version_minor": (cuda % 1000) // 10,
            "compute_capability": f"{major_cc}.{minor_cc}",
        }
    except Exception:
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def _gpu_from_nvidia_smi(selector: str | None) -> dict[str, Any] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        query = subprocess.run(
            [exe, "--query-gpu=uuid,name,driver_version,compute_cap", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=False,
        )
        if query.returncode != 0:
            # Old drivers do not know compute_cap; retry without it.
            query = subprocess.run(
                [exe, "--query-gpu=uuid,name,driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=False,
            )
        banner = subprocess.run([exe], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if query.returncode != 0:
        return None
    return parse_nvidia_smi(query.stdout, banner.stdout, selector)


def cpu_only_gpu_fields() -> dict[str, Any]:
    """The GPU part of a fingerprint on a host without a (visible) NVIDIA GPU."""
    return {
        "gpu_uuid": NO_GPU,
        "gpu_name": NO_GPU,
        "driver_version_major": 0,
        "driver_version_minor": 0,
        "cuda_version_major": 0,
        "cuda_version_minor": 0,
        "compute_capability": NO_GPU,
    }


def collect_fingerprint() -> dict[str, Any]:
    """This host's fingerprint, keys in :data:`FINGERPRINT_KEYS` order."""
    selector = _visible_gpu_selector()
    gpu = None
    if selector != "-1":
        gpu = _gpu_from_nvml(selector) or _gpu_from_nvidia_smi(selector)
    fields = gpu or cpu_only_gpu_fields()
    fields["cpu_count"] = cpu_count()
    fields["ram_gb"] = ram_gb()
    return {key: fields[key] for key in FINGERPRINT_KEYS}


def matches(cached: Mapping[str, Any] | None, current: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether a cached fingerprint still describes this host, and why not.

    Compares GPU uuid and name, driver major.minor, CUDA major.minor, cpu_count and ram_gb
    (within 1 GiB). Keys missing from the cached side count as a mismatch: a fingerprint we
    cannot compare cannot vouch for a measurement. Returns ``(True, "match")`` or
    ``(False, "gpu_name 'NVIDIA A10G' -> 'none'")``.
    """
    if not isinstance(cached, Mapping):
        return False, "no fingerprint in the cache"
    for key in _COMPARED:
        if key not in cached:
            return False, f"{key} missing from the cached fingerprint"
        old, new = cached[key], current.get(key)
        if key == "ram_gb":
            try:
                if abs(int(old) - int(new)) <= RAM_TOLERANCE_GB:
                    continue
            except (TypeError, ValueError):
                pass
        elif str(old) == str(new):
            continue
        return False, f"{key} {old!r} -> {new!r}"
    return True, "match"


def gpu_compute_capability(fingerprint: Mapping[str, Any]) -> tuple[int, int] | None:
    """``(9, 0)`` for sm_90, None on CPU hosts or when unknown."""
    value = str(fingerprint.get("compute_capability", NO_GPU))
    match = re.match(r"^(\d+)\.(\d+)$", value)
    return (int(match.group(1)), int(match.group(2))) if match else None
