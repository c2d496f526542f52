"""SmolVLA's numpy processor: top-left resize-with-pad, newline prompt, padded state."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from reflex_ros.policies.lerobot.processor import LeRobotProcessor


class SmolVLAProcessor(LeRobotProcessor):
    """LeRobot SmolVLA's preprocessing (``NewLineTaskProcessorStep`` + SmolVLM tokenizer) and
    its ``prepare_images`` / ``prepare_state``.

    LeRobot pads SmolVLA prompts to the longest in the batch; we pad to
    ``tokenizer_max_length`` (masked, so the actions do not change). A missing camera gets a
    masked -1 image only for the first ``empty_cameras`` absent cameras; any further one is
    dropped, which for us is a masked slot. With ``add_image_special_tokens`` the special
    tokens around an image exist exactly for the slots LeRobot has, hence the extra
    ``image_slot_masks`` input in that mode.
    """

    image_pad = "top_left"

    def build_prompt(self, task: str, normalized_state: np.ndarray) -> str:
        return task if task.endswith("\n") else task + "\n"

    @property
    def output_names(self) -> tuple[str, ...]:
        names = ("images", "image_masks", "lang_tokens", "lang_masks", "state")
        return (*names, "image_slot_masks") if self.spec.add_image_special_tokens else names

    def slot_exists(self, present: Sequence[bool]) -> np.ndarray:
        out = np.asarray(present, dtype=bool).copy()
        missing = np.flatnonzero(~out)
        out[missing[: self.spec.empty_cameras]] = True
        return out
