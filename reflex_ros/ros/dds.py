"""The Fast DDS profile for camera-sized messages, and the environment that applies it.

With Fast DDS's built-in defaults a 640x480 rgb8 frame (922 kB) does not fit the shared-memory
transport's 512 kB segment, so it goes over UDP as ~15 fragments of 64 kB; with best-effort
(sensor-data) QoS one lost fragment loses the frame, and the kernel's default socket buffer
(~208 kB) drops most of them. Measured here: 0.6 Hz received of 30 Hz sent at 640x480, 0.1 Hz
at 1280x720 (``benchmarks/image_delivery.py --profile none``).

``config/fastdds.xml`` makes the shared-memory transport carry whole frames (a 32 MiB
segment) and keeps UDPv4, with larger socket buffers, for discovery and other hosts. Fast
DDS reads it when a participant is created, from ``FASTDDS_DEFAULT_PROFILES_FILE`` (Fast DDS
>= 2.x also reads the older ``FASTRTPS_DEFAULT_PROFILES_FILE``). Both ends need it: the
*publisher's* participant decides which transport a sample takes, so the camera driver must
run with the same variable (see the README).

:func:`dds_environment` sets the variable for child processes (``reflex-ros run``, ``demo``,
``sim``) unless the user already set one of the two; ``REFLEX_FASTDDS_PROFILE=none`` turns
it off, ``REFLEX_FASTDDS_PROFILE=/path.xml`` picks another file. Standard library only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

PROFILE_NAME = "fastdds.xml"
PROFILE_VARS = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
OVERRIDE_VAR = "REFLEX_FASTDDS_PROFILE"  # "none" = do not apply one; a path = use that file


def default_profile_path() -> Path | None:
    """config/fastdds.xml from the source tree, else from the installed share directory."""
    candidates = [Path(__file__).resolve().parents[2] / "config" / PROFILE_NAME]
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p] + [sys.prefix]
    candidates += [Path(p) / "share" / "reflex_ros" / "config" / PROFILE_NAME for p in prefixes]
    return next((c for c in candidates if c.is_file()), None)


def profile_in_use(env: Mapping[str, str]) -> str | None:
    """The profile file ``env`` makes Fast DDS load (None: Fast DDS's built-in defaults)."""
    return next((env[v] for v in PROFILE_VARS if env.get(v)), None)


def dds_environment(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` plus ``FASTDDS_DEFAULT_PROFILES_FILE`` = our profile, unless ``env`` already
    names a profile (the user's wins) or ``REFLEX_FASTDDS_PROFILE=none``."""
    out = dict(env)
    if profile_in_use(out):
        return out
    choice = out.get(OVERRIDE_VAR, "").strip()
    if choice.lower() == "none":
        return out
    path = Path(choice).expanduser() if choice else default_profile_path()
    if path is not None and path.is_file():
        out["FASTDDS_DEFAULT_PROFILES_FILE"] = str(path.resolve())
    return out


__all__ = ["PROFILE_VARS", "dds_environment", "default_profile_path", "profile_in_use"]
