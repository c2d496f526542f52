"""LeRobot SmolVLA: truncated SmolVLM prefix, interleaved cross-/self-attention action expert."""

from reflex_ros.policies.lerobot.family import LeRobotFamily

FAMILY = LeRobotFamily("smolvla", "LeRobot SmolVLA (SmolVLM + interleaved action expert)")
