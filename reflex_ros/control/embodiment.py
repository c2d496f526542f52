"""Embodiment presets: what a robot is, independent of the policy that drives it.

A preset (``config/embodiments/NAME.yaml``) gives joint names, safety limits, control rate,
chunk shape, action mode and the cold-start latency compensation: the contract between the
control layer and one robot. The node uses it for parameter defaults (explicit parameters
win), the calibrator as the bottom rung of its override ladder, bag replay and the demo to
know the robot. ROS-free.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from reflex_ros.engine.types import ReflexError
from reflex_ros.vocab import ACTION_MODES

_PACKAGE = "reflex_ros"


class EmbodimentError(ReflexError):
    """An embodiment preset is unknown, unreadable, or inconsistent."""


@dataclass(frozen=True)
class Embodiment:
    """One robot's control contract. Per-joint lists are in ``joint_names`` order.

    max_delta_per_step: the largest position change (rad or m) allowed between consecutive
        control steps, i.e. a velocity limit times 1/control_frequency_hz.
    latency_compensation_ms: cold-start value before calibration learns the real loop.
    """

    name: str
    joint_names: tuple[str, ...]
    position_lower: tuple[float, ...]
    position_upper: tuple[float, ...]
    max_delta_per_step: tuple[float, ...]
    control_frequency_hz: float
    chunk_size: int
    execute_steps: int
    action_mode: str
    latency_compensation_ms: float
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def embodiment_search_dirs() -> list[Path]:
    """Where presets are looked up, in order.

    The source tree first (editable installs, tests), then every ``share/reflex_ros`` of
    the ament prefixes (colcon install) and of this interpreter's prefix (pip data_files).
    ``AMENT_PREFIX_PATH`` is read directly so this works without ament_index_python.
    """
    dirs = [Path(__file__).resolve().parents[2] / "config" / "embodiments"]
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    prefixes += [sys.prefix]
    for prefix in prefixes:
        dirs.append(Path(prefix) / "share" / _PACKAGE / "config" / "embodiments")
    seen: set[Path] = set()
    unique = []
    for d in dirs:
        if d not in seen:
            seen.add(d)
            unique.append(d)
    return unique


def available_embodiments() -> list[str]:
    """Preset names found in the search dirs (sorted)."""
    names: set[str] = set()
    for d in embodiment_search_dirs():
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.yaml"))
    return sorted(names)


def _looks_like_path(name_or_path: str) -> bool:
    return name_or_path.endswith((".yaml", ".yml")) or os.sep in name_or_path or "/" in name_or_path


def find_embodiment_file(name_or_path: str) -> Path:
    """Resolve a preset name (``so100``) or a yaml path to a file."""
    if _looks_like_path(name_or_path):
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise EmbodimentError(f"embodiment file {str(path)!r} does not exist")
        return path
    for d in embodiment_search_dirs():
        candidate = d / f"{name_or_path}.yaml"
        if candidate.is_file():
            return candidate
    raise EmbodimentError(
        f"unknown embodiment {name_or_path!r}; available: {', '.join(available_embodiments()) or 'none'} "
        f"(or pass a path to a yaml file)"
    )


def _float_list(data: dict, key: str, n: int, where: str) -> tuple[float, ...]:
    values = data.get(key)
    if not isinstance(values, list) or len(values) != n:
        raise EmbodimentError(f"{where}: {key} must be a list of {n} numbers (one per joint)")
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise EmbodimentError(f"{where}: {key} must hold numbers: {exc}") from None
    if not all(math.isfinite(v) for v in out):
        raise EmbodimentError(f"{where}: {key} must be finite, got {list(out)}")
    return out


def embodiment_from_dict(data: dict[str, Any], where: str = "<dict>") -> Embodiment:
    """Validate a preset mapping; every error names the field and the file."""
    required = ("name", "joint_names", "position_lower", "position_upper", "max_delta_per_step",
                "control_frequency_hz", "chunk_size", "execute_steps", "action_mode",
                "latency_compensation_ms")
    missing = [k for k in required if k not in data]
    if missing:
        raise EmbodimentError(f"{where}: missing fields {missing}")
    joints = data["joint_names"]
    if not isinstance(joints, list) or not joints or not all(isinstance(j, str) and j for j in joints):
        raise EmbodimentError(f"{where}: joint_names must be a non-empty list of strings")
    if len(set(joints)) != len(joints):
        raise EmbodimentError(f"{where}: joint_names has duplicates: {joints}")
    n = len(joints)
    lower = _float_list(data, "position_lower", n, where)
    upper = _float_list(data, "position_upper", n, where)
    bad = [j for j, lo, hi in zip(joints, lower, upper, strict=True) if not lo < hi]
    if bad:
        raise EmbodimentError(f"{where}: position_lower must be < position_upper for joints {bad}")
    delta = _float_list(data, "max_delta_per_step", n, where)
    if any(d <= 0 for d in delta):
        raise EmbodimentError(f"{where}: max_delta_per_step must be > 0, got {list(delta)}")
    freq = float(data["control_frequency_hz"])
    if not (0 < freq <= 10_000):
        raise EmbodimentError(f"{where}: control_frequency_hz must be in (0, 10000], got {freq}")
    chunk, execute = int(data["chunk_size"]), int(data["execute_steps"])
    if chunk < 1 or not 1 <= execute <= chunk:
        raise EmbodimentError(
            f"{where}: need chunk_size >= 1 and 1 <= execute_steps <= chunk_size, got {chunk}, {execute}"
        )
    mode = str(data["action_mode"])
    if mode not in ACTION_MODES:
        raise EmbodimentError(f"{where}: action_mode must be one of {ACTION_MODES}, got {mode!r}")
    latency = float(data["latency_compensation_ms"])
    if not (0 <= latency < 10_000):
        raise EmbodimentError(f"{where}: latency_compensation_ms must be in [0, 10000), got {latency}")
    return Embodiment(
        name=str(data["name"]), joint_names=tuple(joints), position_lower=lower,
        position_upper=upper, max_delta_per_step=delta, control_frequency_hz=freq,
        chunk_size=chunk, execute_steps=execute, action_mode=mode,
        latency_compensation_ms=latency, description=str(data.get("description", "")),
    )


def load_embodiment(name_or_path: str) -> Embodiment:
    """Load a preset by name (``franka``, ``so100``, ``ur5``) or from a yaml path."""
    path = find_embodiment_file(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise EmbodimentError(f"cannot read embodiment file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise EmbodimentError(f"{path}: expected a mapping at the top level")
    return embodiment_from_dict(data, where=str(path))
