"""pi0's numpy processor: newline-terminated prompt, centred resize-with-pad, padded state."""

from __future__ import annotations

import numpy as np

from reflex_ros.policies.lerobot.processor import LeRobotProcessor


class Pi0Processor(LeRobotProcessor):
    """LeRobot pi0's preprocessing (``Pi0NewLineProcessor`` + PaliGemma tokenizer, max_length
    padding) and its ``_preprocess_images`` / ``prepare_state``."""

    base_output_names = ("images", "image_masks", "lang_tokens", "lang_masks", "state")

    def build_prompt(self, task: str, normalized_state: np.ndarray) -> str:
        """PaliGemma expects the prompt to end with a newline; LeRobot adds one if missing."""
        return task if task.endswith("\n") else task + "\n"
