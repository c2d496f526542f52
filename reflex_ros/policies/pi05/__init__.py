"""LeRobot pi0.5: pi0's backbone, the state as discretized prompt text, AdaRMS time conditioning."""

from reflex_ros.policies.lerobot.family import LeRobotFamily

FAMILY = LeRobotFamily("pi05", "LeRobot pi0.5 (PaliGemma + AdaRMS Gemma expert, state as tokens)")
