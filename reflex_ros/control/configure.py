"""Configure, ROS-free: from parameter values (and the engine they load) to the loop's settings.

The node's ``on_configure`` is these steps in order, with calibration between them when it is
on (``calibration/live.py``): :func:`with_embodiment`, :func:`check_required`,
:func:`engine_options` (load the engine), :func:`fit_engine`, :func:`check_ready`. Every
failure is a :class:`ConfigureError` whose message is the one line the user sees.
"""

from __future__ import annotations

import json
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
    joints = out["joint_names"]
    for limit, what in ((info.action_dim, "action_dim"), (info.max_state_dim, "max_state_dim")):
        if len(joints) > limit:
            raise ConfigureError(f"{len(joints)} joint_names {list(joints)} but the export's {what} is {limit}")
    if info.state_dim and len(joints) != info.state_dim:
        raise ConfigureError(f"the policy's state has {info.state_dim} values (normalized per joint) but "
                             f"joint_names lists {len(joints)}: {list(joints)}; give exactly the joints it was "
                             "trained on, in its state order")
    out["camera_names"] = camera_mapping(out["camera_topics"], out["camera_names"] or [], info)
    if out["chunk_size"] > info.chunk_size and "chunk_size" not in explicit:
        warn(f"embodiment chunk_size {out['chunk_size']} exceeds the export's {info.chunk_size} rows; "
             f"using {info.chunk_size}")
        out["chunk_size"] = info.chunk_size
    return out


def positional_cameras(info: EngineInfo) -> bool:
    """Whether the export's cameras are unnamed (``camera0``, ``camera1``...: the reference
    family), so feeding them by position is their definition rather than a guess."""
    return tuple(info.camera_names) == tuple(f"camera{i}" for i in range(info.num_cameras))


def camera_mapping(topics: list[str], names: list[str], info: EngineInfo) -> list[str]:
    """The model camera each topic feeds (``camera_names``), checked against the export.

    Named cameras are never matched by position: a LeRobot policy's ``observation.images.top``
    fed the wrist camera acts on the wrong view without any error. So an export with named
    cameras needs ``camera_names``; every name must be one of the export's, and every camera
    the model needs (all but LeRobot's empty cameras) must have a topic."""
    cams = list(info.camera_names)
    if not names:
        if not positional_cameras(info):
            raise ConfigureError(f"this export's cameras are named {cams}: set camera_names (parallel to "
                                 f"camera_topics {list(topics)}) to say which topic feeds which, e.g. "
                                 f"-p camera_names:={json.dumps(cams[:len(topics)])}")
        if len(topics) != len(cams):
            raise ConfigureError(f"the export expects {len(cams)} camera(s) but camera_topics lists "
                                 f"{len(topics)}: {list(topics)}")
        return cams
    if len(names) != len(topics):
        raise ConfigureError(f"camera_names has {len(names)} entries but camera_topics {len(topics)}: "
                             "they are parallel lists (topic i feeds camera i)")
    unknown = [n for n in names if n not in cams]
    if unknown:
        raise ConfigureError(f"camera_names {unknown} are not cameras of this export; its cameras are {cams}")
    missing = [c for c in cams if c not in names and c not in info.optional_cameras]
    if missing:
        raise ConfigureError(f"the policy's camera(s) {missing} have no topic: add them to camera_names and "
                             f"camera_topics (the export's cameras are {cams})")
    return list(names)


def check_ready(values: Mapping[str, Any], info: EngineInfo) -> None:
    """The final values against each other and the loaded engine."""
    reason = check_consistency(values, n_joints=len(values["joint_names"]), engine_rows=info.chunk_size,
                               supported_nfe=tuple(info.supported_nfe))
    if reason is not None:
        raise ConfigureError(reason)
