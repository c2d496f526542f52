"""The policy node's parameters, declared from one table.

One table (in the spirit of generate_parameter_library, without the code generator) gives
each parameter its type, default, description, range and whether a change needs a
reconfigure. From it the node declares every parameter with a ``ParameterDescriptor`` (what
rqt_reconfigure reads), validates live changes with a reason, and builds the immutable
:class:`LiveSettings` snapshot the control loop reads once per cycle.

Reconfigure-only parameters (export_dir, engine, camera_topics...) are accepted while the
node is unconfigured, so a failed configure can be fixed and retried; once configured they
are flagged read_only in their descriptor until cleanup.

Sentinels: ``nfe`` 0 = the export's default (or the calibrated value), ``chunk_size`` 0 =
every row the model produces, ``cfg_beta`` 0.0 = guidance off, ``provider`` "" = automatic,
``embodiment`` "" = none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType

from reflex_ros.calibration.embodiment import Embodiment

_TYPES = {
    bool: ParameterType.PARAMETER_BOOL,
    int: ParameterType.PARAMETER_INTEGER,
    float: ParameterType.PARAMETER_DOUBLE,
    str: ParameterType.PARAMETER_STRING,
    "str[]": ParameterType.PARAMETER_STRING_ARRAY,
    "float[]": ParameterType.PARAMETER_DOUBLE_ARRAY,
}

ENGINES = ("onnx", "torch")
DTYPES = ("fp32", "fp16", "bf16", "int8", "fp8")
ACTION_MODES = ("absolute", "delta")
DEFAULT_CALIBRATION_CACHE = "~/.reflex/calibration.json"


@dataclass(frozen=True)
class ParamSpec:
    """One parameter.

    kind: bool, int, float, str, "str[]" or "float[]".
    default: None for arrays without a default (declared statically typed, uninitialised).
    reconfigure_only: takes effect at configure; refused while configured.
    embodiment_field: the Embodiment attribute that supplies the default when
        ``embodiment`` is set and the parameter was not given explicitly.
    """

    name: str
    kind: Any
    default: Any
    description: str
    reconfigure_only: bool = False
    float_range: tuple[float, float] | None = None
    int_range: tuple[int, int] | None = None
    embodiment_field: str | None = None
    constraints: str = ""

    def descriptor(self, read_only: bool = False) -> ParameterDescriptor:
        desc = ParameterDescriptor(
            name=self.name, type=_TYPES[self.kind], read_only=read_only,
            description=self.description + (" [reconfigure-only: change while unconfigured]"
                                             if self.reconfigure_only else ""),
            additional_constraints=self.constraints,
        )
        if self.float_range is not None:
            desc.floating_point_range = [FloatingPointRange(
                from_value=float(self.float_range[0]), to_value=float(self.float_range[1]), step=0.0)]
        if self.int_range is not None:
            desc.integer_range = [IntegerRange(
                from_value=int(self.int_range[0]), to_value=int(self.int_range[1]), step=1)]
        return desc


PARAMS: tuple[ParamSpec, ...] = (
    # --- what to serve (reconfigure-only) ---
    ParamSpec("export_dir", str, "", "Export directory written by `reflex-ros export` "
              "(reflex_config.json + ONNX graphs + weights)", reconfigure_only=True),
    ParamSpec("engine", str, "onnx", "Runtime: onnx (ONNX Runtime, no torch) or torch",
              reconfigure_only=True, constraints="one of: onnx, torch"),
    ParamSpec("provider", str, "", "Execution provider/device; empty = automatic "
              "(ONNX: TensorRT > CUDA > CPU; torch: cuda if available)", reconfigure_only=True),
    ParamSpec("dtype", str, "fp32", "Compute precision", reconfigure_only=True,
              constraints="one of: " + ", ".join(DTYPES)),
    ParamSpec("cuda_graph", bool, False, "Capture the prefix + denoise loop as a CUDA Graph "
              "(torch engine on a GPU)", reconfigure_only=True),
    ParamSpec("intra_op_threads", int, 0, "ONNX Runtime intra-op threads; 0 = automatic: 1 on hosts "
              "with <= 4 cores (the ROS executor and the sensors need the others; ORT's spinning "
              "pool otherwise starves them), ONNX Runtime's default elsewhere",
              reconfigure_only=True, int_range=(0, 256)),
    ParamSpec("embodiment", str, "", "Embodiment preset name (franka, so100, ur5) or yaml path; "
              "supplies defaults for joint names, limits, rates and chunking. Explicit "
              "parameters override it", reconfigure_only=True),
    # --- robot interface (reconfigure-only) ---
    ParamSpec("joint_names", "str[]", None, "Joints the first action dims drive, in order; "
              "the state is read from JointState by these names", reconfigure_only=True,
              embodiment_field="joint_names"),
    ParamSpec("camera_topics", "str[]", ["/camera/front/image_raw"], "sensor_msgs/Image topics, "
              "one per model camera, in the export's camera order (sensor-data QoS)",
              reconfigure_only=True),
    ParamSpec("joint_states_topic", str, "/joint_states", "sensor_msgs/JointState topic (reliable QoS)",
              reconfigure_only=True),
    ParamSpec("action_mode", str, "absolute", "absolute joint positions, or deltas added to the "
              "observed state", reconfigure_only=True, embodiment_field="action_mode",
              constraints="one of: absolute, delta"),
    # --- control loop (live) ---
    ParamSpec("control_frequency_hz", float, 30.0, "Robot control rate; dt = 1/control_frequency_hz "
              "between trajectory points", float_range=(0.1, 1000.0),
              embodiment_field="control_frequency_hz"),
    ParamSpec("execute_steps", int, 10, "Control periods between published chunks",
              int_range=(1, 1000), embodiment_field="execute_steps"),
    ParamSpec("chunk_size", int, 0, "Model rows used per chunk before latency compensation; "
              "0 = all the export produces", int_range=(0, 1000), embodiment_field="chunk_size"),
    ParamSpec("nfe", int, 0, "Flow-matching denoise steps; 0 = the export's default "
              "(or the calibrated value). Only values the export supports are accepted",
              int_range=(0, 100)),
    ParamSpec("cfg_beta", float, 0.0, "Classifier-free guidance strength; 0.0 = off, "
              "otherwise >= 1.0 (1.0 = conditioned only)", float_range=(0.0, 20.0),
              constraints="0.0 (off) or >= 1.0"),
    ParamSpec("latency_compensation_ms", float, 0.0, "Leading actions covering this much time are "
              "dropped (k = ceil(L / dt)) and the trajectory is stamped t_obs + k*dt",
              float_range=(0.0, 5000.0), embodiment_field="latency_compensation_ms"),
    ParamSpec("instruction", str, "", "Language instruction (also set by the ~/instruction topic)"),
    # --- safety (live) ---
    ParamSpec("position_lower", "float[]", None, "Per-joint lower position limit (rad or m)",
              embodiment_field="position_lower"),
    ParamSpec("position_upper", "float[]", None, "Per-joint upper position limit (rad or m)",
              embodiment_field="position_upper"),
    ParamSpec("max_delta_per_step", "float[]", None, "Per-joint largest position change per "
              "control step (> 0)", embodiment_field="max_delta_per_step"),
    # --- observations (live) ---
    ParamSpec("max_observation_age_ms", float, 500.0, "Watchdog: no inference on an observation "
              "older than this; resumes by itself when fresh data returns",
              float_range=(1.0, 60000.0)),
    ParamSpec("sync_slop_ms", float, 25.0, "Approximate-time sync window: the stamps of one "
              "observation (all cameras + joint state) must lie within it",
              float_range=(0.0, 1000.0)),
    # --- auto-calibration (reconfigure-only) ---
    ParamSpec("auto_calibrate", bool, False, "Resolve nfe/chunk_size/latency compensation from a "
              "calibration cache (measuring on a miss) and learn latency from the live loop; "
              "false = exactly the configured values", reconfigure_only=True),
    ParamSpec("calibration_cache", str, DEFAULT_CALIBRATION_CACHE, "Calibration cache file",
              reconfigure_only=True),
    ParamSpec("calibrate_force", bool, False, "Re-measure even when the cache is fresh",
              reconfigure_only=True),
)

SPECS: dict[str, ParamSpec] = {p.name: p for p in PARAMS}
RECONFIGURE_ONLY: frozenset[str] = frozenset(p.name for p in PARAMS if p.reconfigure_only)
EMBODIMENT_BACKED: dict[str, str] = {p.name: p.embodiment_field for p in PARAMS if p.embodiment_field}
# Auto-calibration may set these when they were not given explicitly.
CALIBRATED: tuple[str, ...] = ("nfe", "chunk_size", "latency_compensation_ms")


def coerce_override(spec: ParamSpec, value: Any) -> Any:
    """Make a command-line override match the declared type where it is unambiguous.

    ``-p control_frequency_hz:=30`` arrives as an integer and ``position_lower:=[0, 1]`` as an
    integer array; rclpy would refuse to declare them and the node would die at start-up.
    """
    if spec.kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if spec.kind == "float[]" and isinstance(value, list | tuple) and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        return [float(v) for v in value]
    return value


def embodiment_defaults(emb: Embodiment) -> dict[str, Any]:
    """Parameter values an embodiment supplies, typed for rclpy."""
    out: dict[str, Any] = {}
    for name, field in EMBODIMENT_BACKED.items():
        value = getattr(emb, field)
        spec = SPECS[name]
        if spec.kind == "float[]":
            value = [float(v) for v in value]
        elif spec.kind == "str[]":
            value = [str(v) for v in value]
        elif spec.kind is float:
            value = float(value)
        elif spec.kind is int:
            value = int(value)
        out[name] = value
    return out


def _finite_list(name: str, value: Any) -> str | None:
    if not all(math.isfinite(v) for v in value):
        return f"{name} must be finite, got {list(value)}"
    return None


def check_value(name: str, value: Any) -> str | None:
    """Single-parameter rules beyond the descriptor ranges; returns the reason or None."""
    if name == "engine" and value not in ENGINES:
        return f"engine must be one of {ENGINES}, got {value!r}"
    if name == "dtype" and value not in DTYPES:
        return f"dtype must be one of {DTYPES}, got {value!r}"
    if name == "action_mode" and value not in ACTION_MODES:
        return f"action_mode must be one of {ACTION_MODES}, got {value!r}"
    if name == "cfg_beta" and not (value == 0.0 or value >= 1.0):
        return f"cfg_beta must be 0.0 (off) or >= 1.0, got {value}"
    if name in ("position_lower", "position_upper", "max_delta_per_step") and value is not None:
        if (reason := _finite_list(name, value)) is not None:
            return reason
        if name == "max_delta_per_step" and any(v <= 0 for v in value):
            return f"max_delta_per_step must be > 0 for every joint, got {list(value)}"
    if name == "joint_names" and value is not None:
        if any(not n for n in value):
            return "joint_names must not contain empty names"
        if len(set(value)) != len(value):
            return f"joint_names has duplicates: {list(value)}"
    if name == "camera_topics" and value is not None:
        if not value or any(not t for t in value):
            return "camera_topics must list at least one non-empty topic"
        if len(set(value)) != len(value):
            return f"camera_topics has duplicates: {list(value)}"
    return None


@dataclass(frozen=True)
class LiveSettings:
    """What one control cycle reads; swapped atomically when parameters change."""

    control_frequency_hz: float
    execute_steps: int
    chunk_size: int
    nfe: int
    cfg_beta: float
    latency_compensation_ms: float
    instruction: str
    position_lower: tuple[float, ...]
    position_upper: tuple[float, ...]
    max_delta_per_step: tuple[float, ...]
    max_observation_age_ms: float
    sync_slop_ms: float
    action_mode: str

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> LiveSettings:
        return cls(
            control_frequency_hz=float(values["control_frequency_hz"]),
            execute_steps=int(values["execute_steps"]),
            chunk_size=int(values["chunk_size"]),
            nfe=int(values["nfe"]),
            cfg_beta=float(values["cfg_beta"]),
            latency_compensation_ms=float(values["latency_compensation_ms"]),
            instruction=str(values["instruction"]),
            position_lower=tuple(values["position_lower"] or ()),
            position_upper=tuple(values["position_upper"] or ()),
            max_delta_per_step=tuple(values["max_delta_per_step"] or ()),
            max_observation_age_ms=float(values["max_observation_age_ms"]),
            sync_slop_ms=float(values["sync_slop_ms"]),
            action_mode=str(values["action_mode"]),
        )


def check_consistency(values: dict[str, Any], *, n_joints: int | None, engine_rows: int | None,
                      supported_nfe: tuple[int, ...] | None) -> str | None:
    """Cross-parameter rules. Engine-dependent ones apply once an engine is loaded."""
    from reflex_ros.ros.chunking import skipped_steps

    lower, upper, delta = values["position_lower"], values["position_upper"], values["max_delta_per_step"]
    if n_joints is not None:
        for name, arr in (("position_lower", lower), ("position_upper", upper),
                          ("max_delta_per_step", delta)):
            if arr is None or len(arr) != n_joints:
                got = "unset" if arr is None else f"{len(arr)} values"
                return f"{name} needs one value per joint ({n_joints} joints), got {got}"
    if lower is not None and upper is not None and len(lower) == len(upper):
        bad = [i for i, (lo, hi) in enumerate(zip(lower, upper, strict=True)) if not lo < hi]
        if bad:
            return f"position_lower must be < position_upper; violated at joint index {bad}"
    if supported_nfe is not None and values["nfe"] != 0 and values["nfe"] not in supported_nfe:
        return f"nfe {values['nfe']} is not supported by this export; supported: {list(supported_nfe)} (or 0 = default)"
    if engine_rows is not None:
        chunk = values["chunk_size"]
        if chunk > engine_rows:
            return f"chunk_size {chunk} exceeds the {engine_rows} rows the export produces"
        rows = chunk or engine_rows
        k = skipped_steps(values["latency_compensation_ms"], values["control_frequency_hz"])
        if k >= rows:
            return (f"latency_compensation_ms {values['latency_compensation_ms']} at "
                    f"{values['control_frequency_hz']} Hz skips {k} steps, but a chunk has only {rows} rows")
        if values["execute_steps"] > rows - k:
            return (f"execute_steps {values['execute_steps']} exceeds the {rows - k} points left per chunk "
                    f"after skipping {k}: the robot would run out of trajectory between chunks")
    return None
