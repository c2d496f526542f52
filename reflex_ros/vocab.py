"""The project's vocabulary: every name that more than one layer speaks, defined once.

Engines, execution providers (and the aliases users type), precisions, export layouts,
action modes, the node's name and topic names, and the default calibration cache path. The
engine, the calibrator, the ROS layer, the CLI and the docs all import these, so a new
provider or precision is one edit here, never a hunt through four modules. Standard library
only: importing it costs nothing on any path (ONNX serving, ``--help``).
"""

from __future__ import annotations

# --------------------------------------------------------------------------- engines

ONNX = "onnx"
TORCH = "torch"
ENGINES: tuple[str, ...] = (ONNX, TORCH)

# --------------------------------------------------------------------------- providers

TRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
#: tried in this order when no provider is named
PROVIDER_LADDER: tuple[str, ...] = (TRT, CUDA, CPU)
#: what users may type instead of onnxruntime's names
PROVIDER_ALIASES: dict[str, str] = {"tensorrt": TRT, "trt": TRT, "cuda": CUDA, "cpu": CPU}
#: torch devices, the torch engine's "providers"
TORCH_DEVICES: tuple[str, ...] = ("cuda", "cpu")


def canonical_provider(name: str) -> str:
    """An onnxruntime provider name for ``name`` (an alias or the full name); unknown names
    are returned unchanged so the caller can report them with the list of valid ones."""
    return PROVIDER_ALIASES.get(name.lower(), name)


def torch_device_for(provider: str) -> str:
    """The torch device that corresponds to an ONNX provider choice (the calibrator speaks
    provider names; the torch engine speaks devices)."""
    return "cpu" if canonical_provider(provider) == CPU else "cuda"


# --------------------------------------------------------------------------- precisions

FP32, FP16, BF16, FP8, INT8 = "fp32", "fp16", "bf16", "fp8", "int8"
#: every precision a parameter or the calibrator may name
PRECISIONS: tuple[str, ...] = (FP32, FP16, BF16, INT8, FP8)
#: what the ONNX engine serves (fp16 through TensorRT's builder flag)
ONNX_PRECISIONS: tuple[str, ...] = (FP32, FP16)
#: what the torch engine serves
TORCH_PRECISIONS: tuple[str, ...] = (FP32, BF16, FP16)

# --------------------------------------------------------------------------- export layouts

DECOMPOSED = "decomposed"  # vlm_prefix.onnx once per chunk + expert_denoise.onnx per step
MONOLITHIC = "monolithic"  # model.onnx with the NFE loop unrolled
LAYOUTS: tuple[str, ...] = (DECOMPOSED, MONOLITHIC)

# --------------------------------------------------------------------------- actions

ABSOLUTE, DELTA = "absolute", "delta"
ACTION_MODES: tuple[str, ...] = (ABSOLUTE, DELTA)

# --------------------------------------------------------------------------- ROS names

NODE_NAME = "reflex_policy"
TRAJECTORY_TOPIC = "~/joint_trajectory"
ACTION_CHUNK_TOPIC = "~/action_chunk"
INSTRUCTION_TOPIC = "~/instruction"
DIAGNOSTICS_TOPIC = "/diagnostics"
JOINT_STATES_TOPIC = "/joint_states"
DEFAULT_CAMERA_TOPIC = "/camera/front/image_raw"
#: how chunks reach the controller: the ~/joint_trajectory topic, or FollowJointTrajectory goals
OUTPUT_TOPIC, OUTPUT_ACTION = "topic", "action"
OUTPUT_INTERFACES: tuple[str, ...] = (OUTPUT_TOPIC, OUTPUT_ACTION)
#: ros2_control's joint_trajectory_controller and its action (<controller>/follow_joint_trajectory)
DEFAULT_CONTROLLER = "joint_trajectory_controller"
FOLLOW_JOINT_TRAJECTORY = "follow_joint_trajectory"


def follow_joint_trajectory_action(controller: str) -> str:
    """``arm_controller`` -> ``arm_controller/follow_joint_trajectory`` (relative names resolve in
    the node's namespace; ``/arm_controller`` is absolute)."""
    return f"{controller.rstrip('/')}/{FOLLOW_JOINT_TRAJECTORY}"

# --------------------------------------------------------------------------- files

#: the calibration cache (seed 000's path)
DEFAULT_CALIBRATION_CACHE = "~/.reflex/calibration.json"
