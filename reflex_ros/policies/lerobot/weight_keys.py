"""State-dict key fix-ups LeRobot applies when it loads a checkpoint, on names only.

Checkpoints in the wild differ in small ways from the module tree LeRobot 0.6.1 builds:
keys saved without the ``model.`` prefix (openpi conversions), pi0's time MLP saved under
pi0.5's name or the other way round, pi0.5 checkpoints that still carry a ``state_proj``,
and exports that drop ``embed_tokens`` because it is tied to ``lm_head``. LeRobot repairs
these in ``_fix_pytorch_state_dict_keys`` / ``from_pretrained``; we repair them the same way
without reading any tensor, so the checkpoint can be inspected torch-free and the weights
loaded lazily later.
"""

from __future__ import annotations

from collections.abc import Mapping

#: (embed_tokens, lm_head) pairs that LeRobot ties when only the head is saved
TIED_EMBEDDINGS = {
    "pi0": (
        "model.paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight",
        "model.paligemma_with_expert.paligemma.lm_head.weight",
    ),
    "pi05": (
        "model.paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight",
        "model.paligemma_with_expert.paligemma.lm_head.weight",
    ),
    "smolvla": (
        "model.vlm_with_expert.vlm.model.text_model.embed_tokens.weight",
        "model.vlm_with_expert.vlm.lm_head.weight",
    ),
}

#: renamed prefixes per family: the name LeRobot 0.6.1 expects <- a name found in the wild
_RENAMES: dict[str, tuple[tuple[str, str], ...]] = {
    "pi0": (("model.time_mlp_in.", "model.action_time_mlp_in."), ("model.time_mlp_out.", "model.action_time_mlp_out.")),
    "pi05": (("model.action_time_mlp_in.", "model.time_mlp_in."), ("model.action_time_mlp_out.", "model.time_mlp_out.")),
    "smolvla": (),
}

#: keys LeRobot drops on load (pi0.5 has no state projection: its state is in the prompt)
_DROPPED: dict[str, tuple[str, ...]] = {"pi0": (), "pi05": ("model.state_proj.",), "smolvla": ()}


def fix_state_dict_keys(model_type: str, names: Mapping[str, tuple[int, ...]]) -> tuple[dict[str, str], list[str]]:
    """Map LeRobot-0.6.1 key -> key in the file, plus the notes on what was repaired.

    ``names`` maps each tensor name in ``model.safetensors`` to its shape. The result maps
    every name the 0.6.1 module tree uses to the file's tensor that fills it (a tied
    ``embed_tokens`` maps to ``lm_head``).
    """
    notes: list[str] = []
    mapping: dict[str, str] = {}
    unprefixed = 0
    for original in names:
        key = original if original.startswith("model.") else "model." + original
        unprefixed += key != original
        if any(key.startswith(p) for p in _DROPPED[model_type]):
            notes.append(f"dropped {original} (LeRobot ignores it for {model_type})")
            continue
        for old, new in _RENAMES[model_type]:
            if key.startswith(old):
                notes.append(f"renamed {original} -> {new}{key[len(old):]}")
                key = new + key[len(old):]
        mapping[key] = original
    if unprefixed:
        notes.append(f"added the 'model.' prefix to {unprefixed} keys")
    embed, head = TIED_EMBEDDINGS[model_type]
    if embed not in mapping and head in mapping:
        mapping[embed] = mapping[head]
        notes.append(f"tied {embed} to {head} (embed_tokens missing)")
    return mapping, notes
