"""Policy families, keyed by ``model_type``.

``reflex_config.json``'s ``model_type`` (and a LeRobot checkpoint's ``config.json`` ``type``)
selects the family; export, predict, the runtimes and bench all dispatch through
:func:`get_family`. Family packages are imported on first use, so looking one up costs one
import, and the ONNX serving path still never imports torch (a family imports torch only in
its model code).

Adding a family: a package under ``policies/`` whose ``__init__`` exposes ``FAMILY`` (see
``base.py``), plus one line here.
"""

from __future__ import annotations

import importlib

from reflex_ros.engine.types import ExportError

#: model_type -> the package that implements it
FAMILIES: dict[str, str] = {
    "reflex_ros_flow_vla": "reflex_ros.policies.reference",
    "pi0": "reflex_ros.policies.pi0",
    "pi05": "reflex_ros.policies.pi05",
    "smolvla": "reflex_ros.policies.smolvla",
}

#: the reference model's type (its presets: tiny, small, pi0)
REFERENCE = "reflex_ros_flow_vla"

#: formats users ask about that no family loads yet (named in errors and the README)
NOT_SUPPORTED: dict[str, str] = {
    "pi0fast": "pi0-FAST (autoregressive FAST action tokens)",
    "pi0_fast": "pi0-FAST (autoregressive FAST action tokens)",
    "groot": "GR00T N1.x",
    "act": "ACT", "diffusion": "Diffusion Policy", "vqbet": "VQ-BeT", "tdmpc": "TD-MPC",
}


def get_family(model_type: str):
    """The family object for ``model_type``; an ExportError naming the supported ones if none."""
    module = FAMILIES.get(str(model_type))
    if module is None:
        hint = f" ({NOT_SUPPORTED[model_type]} is not supported yet)" if model_type in NOT_SUPPORTED else ""
        raise ExportError(
            f"model type {model_type!r} is not supported{hint}; supported: {', '.join(sorted(FAMILIES))}"
        )
    return importlib.import_module(module).FAMILY
