"""Spec fields every LeRobot family reads the same way (torch-free).

Cameras, dimensions, the tokenizer step and the normalization mapping come from
``config.json`` and the processor JSONs; each family's ``config.py`` adds its architecture
(read from the weight shapes) on top. Features LeRobot supports but we do not implement are
refused here with the key that turns them on.
"""

from __future__ import annotations

import json
from typing import Any

from reflex_ros.policies.lerobot.checkpoint import CheckpointFacts
from reflex_ros.policies.lerobot.errors import CheckpointError, HubFileNotFoundError
from reflex_ros.policies.lerobot.hub_cache import resolve_repo_dir

EMPTY_CAMERA_PREFIX = "observation.images.empty_camera_"


def _feature_shape(features: dict[str, Any], key: str, where: str) -> list[int]:
    if key not in features:
        raise CheckpointError(f"config.json {where} has no {key!r} (it has {sorted(features)})")
    return list(features[key].get("shape") or [])


def camera_keys(facts: CheckpointFacts) -> list[str]:
    """LeRobot's ``config.image_features`` order, plus the ``empty_camera_<i>`` keys its
    ``validate_features`` adds for ``empty_cameras`` (saved configs usually have them already)."""
    features = facts.cfg("input_features") or {}
    keys = [k for k, ft in features.items() if str(ft.get("type", "")).upper() == "VISUAL"]
    for i in range(int(facts.cfg("empty_cameras", 0) or 0)):
        key = f"{EMPTY_CAMERA_PREFIX}{i}"
        if key not in keys:
            keys.append(key)
    if not keys:
        raise CheckpointError("config.json input_features has no VISUAL feature (a camera)")
    return keys


def refuse_unsupported(facts: CheckpointFacts) -> None:
    """Raise for LeRobot options that change the math and that we do not implement."""
    for key in ("use_relative_actions", "adapt_to_pi_aloha", "use_delta_joint_actions_aloha"):
        if facts.cfg(key):
            raise CheckpointError(f"config.json sets {key}: true, which reflex_ros does not implement")
    for registry, post in (("relative_actions_processor", False), ("absolute_actions_processor", True)):
        step = facts.step(registry, post=post)
        if step and step.get("enabled"):
            raise CheckpointError(
                f"{'post' if post else 'pre'}processor step {registry} has enabled: true (relative actions), "
                "which reflex_ros does not implement"
            )
    rename = (facts.step("rename_observations_processor") or {}).get("rename_map") or {}
    if rename:
        raise CheckpointError(
            f"preprocessor rename_observations_processor has a non-empty rename_map {rename}; feed the "
            "model's own feature keys instead (this is not applied)"
        )


def common_fields(facts: CheckpointFacts, num_steps_key: str) -> dict[str, Any]:
    """The FamilySpec fields shared by pi0, pi0.5 and SmolVLA."""
    refuse_unsupported(facts)
    inputs = facts.cfg("input_features") or {}
    outputs = facts.cfg("output_features") or {}
    state_shape = _feature_shape(inputs, "observation.state", "input_features")
    action_shape = _feature_shape(outputs, "action", "output_features")
    tok = facts.step("tokenizer_processor")
    if tok is None:
        raise CheckpointError("the preprocessor has no tokenizer_processor step")
    if tok.get("padding_side", "right") != "right" or tok.get("truncation", True) is not True:
        raise CheckpointError(
            f"tokenizer_processor padding_side={tok.get('padding_side')!r} truncation={tok.get('truncation')!r}: "
            "only right padding with truncation is supported"
        )
    normalizer = facts.step("normalizer_processor")
    unnormalizer = facts.step("unnormalizer_processor", post=True)
    if normalizer is None or unnormalizer is None:
        raise CheckpointError("the checkpoint's processors lack normalizer_processor / unnormalizer_processor")
    norm_map = {str(k).upper(): str(v).upper() for k, v in (normalizer.get("norm_map") or {}).items()}
    post_map = {str(k).upper(): str(v).upper() for k, v in (unnormalizer.get("norm_map") or {}).items()}
    if post_map.get("ACTION", "IDENTITY") != norm_map.get("ACTION", post_map.get("ACTION", "IDENTITY")):
        raise CheckpointError(f"normalizer and unnormalizer disagree on ACTION: {norm_map} vs {post_map}")
    norm_map.setdefault("ACTION", post_map.get("ACTION", "IDENTITY"))
    if norm_map.get("VISUAL", "IDENTITY") != "IDENTITY":
        raise CheckpointError(f"norm_map VISUAL={norm_map['VISUAL']!r}: only IDENTITY is supported for images")
    steps = facts.cfg(num_steps_key)
    if steps is None:
        raise CheckpointError(f"config.json has no {num_steps_key!r}")
    return {
        "camera_keys": camera_keys(facts),
        "state_dim": int(state_shape[0]),
        "action_dim": int(action_shape[0]),
        "chunk_size": int(facts.cfg("chunk_size")),
        "max_state_dim": int(facts.cfg("max_state_dim")),
        "max_action_dim": int(facts.cfg("max_action_dim")),
        "tokenizer_max_length": int(tok.get("max_length", facts.cfg("tokenizer_max_length"))),
        "num_inference_steps": int(steps),
        "tokenizer_hub_id": str(tok.get("tokenizer_name") or ""),
        "tokenizer_padding": str(tok.get("padding", "max_length")),
        "norm_map": norm_map,
        "norm_eps": float(normalizer.get("eps", 1e-8)),
        "empty_cameras": int(facts.cfg("empty_cameras", 0) or 0),
        "min_period": float(facts.cfg("min_period", 4e-3)),
        "max_period": float(facts.cfg("max_period", 4.0)),
    }


def check_dim(facts: CheckpointFacts, key: str, axis: int, expected: int, what: str) -> None:
    """A config value must match the weight that consumes it (an inconsistent checkpoint
    otherwise fails deep inside a matmul, or not at all)."""
    got = facts.shape(key)[axis]
    if got != expected:
        raise CheckpointError(f"{what} is {expected} in config.json but weight {key!r} has {got} (shape {facts.shape(key)})")


def read_hub_config(repo_id: str) -> dict[str, Any] | None:
    """``config.json`` of a cached hub repo, or None when the repo or file is not cached."""
    try:
        directory = resolve_repo_dir(repo_id, required=("config.json",))
    except HubFileNotFoundError:
        return None
    return json.loads((directory / "config.json").read_text())
