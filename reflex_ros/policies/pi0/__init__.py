"""LeRobot pi0: PaliGemma (SigLIP + Gemma) prefix, Gemma action expert with a state token."""

from reflex_ros.policies.lerobot.family import LeRobotFamily

FAMILY = LeRobotFamily("pi0", "LeRobot pi0 (PaliGemma + Gemma action expert)")
