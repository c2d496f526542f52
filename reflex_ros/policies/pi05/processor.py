"""pi0.5's numpy processor: the normalized state goes into the prompt as 256-level bins."""

from __future__ import annotations

import numpy as np

from reflex_ros.policies.lerobot.processor import LeRobotProcessor


def discretize_state(normalized: np.ndarray, bins: int = 256) -> np.ndarray:
    """openpi's state tokens: ``digitize(x, linspace(-1, 1, bins + 1)[:-1]) - 1``.

    Values below -1 give -1 and values at or above 1 give ``bins - 1``, exactly as LeRobot's
    ``Pi05PrepareStateTokenizerProcessorStep`` (float32 state against float64 edges)."""
    edges = np.linspace(-1.0, 1.0, bins + 1)[:-1]
    return np.digitize(np.asarray(normalized, dtype=np.float32), bins=edges) - 1


class Pi05Processor(LeRobotProcessor):
    """LeRobot pi0.5's preprocessing: normalize (QUANTILES by default) -> prompt
    ``Task: <task>, State: <bins>;\\nAction: `` -> PaliGemma tokenizer (max_length padding).

    The state reaches the model only through the prompt, so ``prepare`` has no ``state``.
    Supports RECAP CFG: ``cfg_beta`` gives the batch ``[task + "\\nAdvantage: positive", task]``.
    """

    supports_cfg = True
    base_output_names = ("images", "image_masks", "lang_tokens", "lang_masks")

    def build_prompt(self, task: str, normalized_state: np.ndarray) -> str:
        cleaned = task.strip().replace("_", " ").replace("\n", " ")
        state = " ".join(str(int(b)) for b in discretize_state(normalized_state, self.spec.state_bins))
        return f"Task: {cleaned}, State: {state};\nAction: "

    def extra_outputs(self, normalized_state: np.ndarray, slot_exists: np.ndarray) -> dict[str, np.ndarray]:
        return {}
