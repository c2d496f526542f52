"""Configure, ROS-free: from parameter values (and the engine they load) to the loop's settings.

The node's ``on_configure`` is these steps in order, with calibration between them when it is
on (``calibration/live.py``): :func:`with_embodiment`, :func:`check_required`,
:func:`engine_options` (load the engine), :func:`fit_engine`, :func:`check_ready`. Every
failure is a :class:`ConfigureError` whose message is the one line the user sees.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from typing import Any

from reflex_ros.control.embodiment import available_embodiments, load_embodiment
from reflex_ros.control.params import PARAMS, check_consistency, embodiment_defaults
from reflex_ros.engine.types import EngineInfo, ReflexError
from reflex_ros.vocab import ONNX

SMALL_HOST_CPUS = 4  # intra_op_threads 0 -> 1 thread at or below this many cores


class ConfigureError(ReflexError):
    """configure cannot succeed; the message is the one log line the user sees."""


def with_embodiment(values: Mapping[str, Any], explicit: Collection[str]) -> dict[str, Any]:
    """``values`` with the embodiment's defaults for every parameter not given explicitly."""
    out = dict(values)
    if out["embodiment"]:
        defaults = embodiment_defaults(load_embodiment(out["embodiment"]))
        out.update({k: v for k, v in defaults.items() if k not in explicit})
    return out


def check_required(values: Mapping[str, Any]) -> None:
    """What configure needs before an engine is loaded."""
    if not values["export_dir"]:
        raise ConfigureError("export_dir is empty: pass -p export_dir:=DIR (a `reflex-ros export` directory)")
    joints = values["joint_names"]
    if not joints:
        raise ConfigureError(f"joint_names is not set: pass -p joint_names:=[...] or an embodiment "
                             f"(available: {', '.join(available_embodiments())})")
    for spec in PARAMS:
        if spec.per_joint and values[spec.name] is None:
            raise ConfigureError(f"{spec.name} is not set: give one value per joint or an embodiment")
    if (reason := check_consistency(values, n_joints=len(joints), engine_rows=None, supported_nfe=None)):
        raise ConfigureError(reason)


def engine_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """``load_engine`` keyword arguments (intra_op_threads 0 = 1 thread on small hosts: the ROS
    executor and the sensors need the other cores, and ORT's spinning pool starves them)."""
    options: dict[str, Any] = {"engine": values["engine"], "provider": values["provider"] or None,
                               "dtype": values["dtype"], "cuda_graph": bool(values["cuda_graph"])}
    threads = values["intra_op_threads"] or (1 if (os.cpu_count() or 1) <= SMALL_HOST_CPUS else 0)
    if values["engine"] == ONNX and threads:
        options["intra_op_threads"] = threads
    return options


def fit_engine(values: Mapping[str, Any], info: EngineInfo, explicit: Collection[str],
               warn: Callable[[str], Any]) -> dict[str, Any]:
    """Check the robot against the export; an embodiment chunk_size longer than the export's is
    shortened (with a warning) unless it was given explicitly."""
    out = dict(values)
    joints, cameras = out["joint_names"], out["camera_topics"]
    for limit, what in ((info.action_dim, "action_dim"), (info.max_state_dim, "max_state_dim")):
        if len(joints) > limit:
            raise ConfigureError(f"{len(joints)} joint_names {list(joints)} but the export's {what} is {limit}")
    if len(cameras) != info.num_cameras:
        raise ConfigureError(f"the export expects {info.num_cameras} camera(s) but camera_topics lists "
                             f"{len(cameras)}: {list(cameras)}")
    if out["chunk_size"] > info.chunk_size and "chunk_size" not in explicit:
        warn(f"embodiment chunk_size {out['chunk_size']} exceeds the export's {info.chunk_size} rows; "
             f"using {info.chunk_size}")
        out["chunk_size"] = info.chunk_size
    return out


def check_ready(values: Mapping[str, Any], info: EngineInfo) -> None:
    """The final values against each other and the loaded engine."""
    reason = check_consistency(values, n_joints=len(values["joint_names"]), engine_rows=info.chunk_size,
                               supported_nfe=tuple(info.supported_nfe))
    if reason is not None:
        raise ConfigureError(reason)
