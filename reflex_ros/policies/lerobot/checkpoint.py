"""Read a LeRobot checkpoint directory torch-free: config, processors, stats, tensor shapes.

The layout is what LeRobot's ``save_pretrained`` writes (and what ``lerobot/<policy>_base``
downloads as): ``config.json``, ``model.safetensors``, ``policy_preprocessor*.json`` /
``policy_postprocessor*.json`` and their normalizer ``*.safetensors``. The processor files
are found by glob, because the step index in their names depends on the pipeline. Weights
are not read here (only their names and shapes); :meth:`LeRobotCheckpoint.load_state_dict`
reads them when a torch model is built.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reflex_ros.policies.lerobot.errors import CheckpointError
from reflex_ros.policies.lerobot.normalization import FeatureNormalizer, feature_stats
from reflex_ros.policies.lerobot.spec import MODEL_TYPES, FamilySpec
from reflex_ros.policies.lerobot.weight_keys import fix_state_dict_keys

#: processor steps we know; anything else is refused rather than silently skipped
KNOWN_PRE_STEPS = {
    "rename_observations_processor",
    "to_batch_processor",
    "pi0_new_line_processor",
    "smolvla_new_line_processor",
    "newline_task_processor",
    "tokenizer_processor",
    "device_processor",
    "relative_actions_processor",
    "normalizer_processor",
    "pi05_prepare_state_tokenizer_processor_step",
}
KNOWN_POST_STEPS = {"unnormalizer_processor", "absolute_actions_processor", "device_processor"}


@dataclass
class CheckpointFacts:
    """What a family's spec builder reads: the raw files, with key lookups that fail clearly."""

    path: Path
    config: dict[str, Any]
    pre_steps: list[dict[str, Any]]
    post_steps: list[dict[str, Any]]
    #: LeRobot-0.6.1 tensor name -> shape (after the key fix-ups)
    shapes: dict[str, tuple[int, ...]]
    #: LeRobot-0.6.1 tensor name -> name in model.safetensors
    key_map: dict[str, str] = field(default_factory=dict)
    #: what the key fix-ups repaired
    key_notes: list[str] = field(default_factory=list)

    def shape(self, key: str) -> tuple[int, ...]:
        """Shape of weight ``key``; a missing weight is a CheckpointError naming it."""
        if key not in self.shapes:
            raise CheckpointError(f"{self.path / 'model.safetensors'} has no weight {key!r}")
        return self.shapes[key]

    def layer_count(self, prefix: str) -> int:
        """Number of ``<prefix><i>.`` layers present (they must be numbered 0..n-1)."""
        pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
        indices = {int(m.group(1)) for key in self.shapes if (m := pattern.match(key))}
        if not indices:
            raise CheckpointError(f"{self.path / 'model.safetensors'} has no layers under {prefix!r}")
        if indices != set(range(len(indices))):
            raise CheckpointError(f"layers under {prefix!r} are not numbered 0..n-1: {sorted(indices)}")
        return len(indices)

    def step(self, name: str, post: bool = False) -> dict[str, Any] | None:
        """The config of the first processor step registered as ``name``, or None."""
        for s in self.post_steps if post else self.pre_steps:
            if s.get("registry_name") == name:
                return s.get("config") or {}
        return None

    def cfg(self, key: str, default: Any = None) -> Any:
        return self.config.get(key, default)


@dataclass
class LeRobotCheckpoint:
    """A checkpoint, read without torch: config, spec, normalization, weight names and shapes."""

    path: Path
    config: dict[str, Any]
    spec: FamilySpec
    #: feature key -> {stat name -> float32 array} (pre- and post-processor stats merged)
    stats: dict[str, dict[str, np.ndarray]]
    state_normalizer: FeatureNormalizer
    action_normalizer: FeatureNormalizer
    #: LeRobot-0.6.1 tensor name -> shape
    tensor_shapes: dict[str, tuple[int, ...]]
    #: LeRobot-0.6.1 tensor name -> name in model.safetensors
    key_map: dict[str, str]
    #: what the key fix-ups repaired (for logs)
    notes: list[str] = field(default_factory=list)

    @property
    def model_type(self) -> str:
        return self.spec.model_type

    def load_state_dict(self, names: list[str] | None = None) -> dict[str, Any]:
        """Torch tensors for ``names`` (default: all), keyed by the LeRobot-0.6.1 names.

        Imports torch (only here): the rest of this class is torch-free."""
        from safetensors import safe_open

        wanted = list(self.key_map) if names is None else list(names)
        missing = [n for n in wanted if n not in self.key_map]
        if missing:
            raise CheckpointError(f"{self.path / 'model.safetensors'} has no weight {missing[0]!r}")
        out = {}
        with safe_open(str(self.path / "model.safetensors"), framework="pt") as f:
            for name in wanted:
                out[name] = f.get_tensor(self.key_map[name])
        return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc


def _find_one(directory: Path, pattern: str, what: str) -> Path:
    """The file matching ``pattern`` (the plain name preferred when there are several)."""
    found = sorted(directory.glob(pattern))
    if not found:
        raise CheckpointError(
            f"{directory} has no {what} ({pattern}); LeRobot >= 0.4 saves one next to model.safetensors "
            "(older checkpoints need LeRobot's migrate_policy_normalization)"
        )
    plain = [p for p in found if p.name == pattern.replace("*", "")]
    if len(found) > 1 and not plain:
        raise CheckpointError(f"{directory} has several {what} files: {[p.name for p in found]}")
    return plain[0] if plain else found[0]


def _load_stats(directory: Path, steps: list[dict[str, Any]], registry: str, glob: str) -> dict[str, np.ndarray]:
    """Flat ``{"<feature>.<stat>": array}`` of a (un)normalizer step: its ``state_file`` when
    named and present, else the file that matches ``glob``."""
    from safetensors.numpy import load_file

    step = next((s for s in steps if s.get("registry_name") == registry), None)
    if step is None:
        return {}
    path = directory / step["state_file"] if step.get("state_file") else None
    if path is None or not path.is_file():
        path = _find_one(directory, glob, f"{registry} statistics")
    return {k: np.asarray(v, dtype=np.float32) for k, v in load_file(str(path)).items()}


def read_facts(path: str | os.PathLike[str]) -> CheckpointFacts:
    """Config, processor steps and (fixed-up) tensor shapes of a checkpoint directory."""
    from safetensors import safe_open

    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory (a LeRobot checkpoint is a folder)")
    config = _read_json(directory / "config.json")
    model_type = config.get("type")
    if model_type not in MODEL_TYPES:
        raise CheckpointError(
            f"{directory / 'config.json'}: 'type' is {model_type!r}; supported LeRobot types: {', '.join(MODEL_TYPES)}"
        )
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{directory} has no model.safetensors")
    with safe_open(str(weights), framework="numpy") as f:
        raw_shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    key_map, notes = fix_state_dict_keys(model_type, raw_shapes)
    shapes = {k: raw_shapes[v] for k, v in key_map.items()}
    pre = _read_json(_find_one(directory, "policy_preprocessor*.json", "preprocessor config"))
    post = _read_json(_find_one(directory, "policy_postprocessor*.json", "postprocessor config"))
    return CheckpointFacts(
        directory, config, list(pre.get("steps", [])), list(post.get("steps", [])), shapes, key_map, notes
    )


def load_lerobot_checkpoint(
    path: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None
) -> LeRobotCheckpoint:
    """Read a LeRobot pi0 / pi0.5 / SmolVLA checkpoint directory (no torch, no weights read).

    ``overrides``: FamilySpec fields to force (e.g. a vision head count a hub config cannot
    tell). Raises :class:`CheckpointError` naming the key for anything unsupported or
    inconsistent, and HubFileNotFoundError when a backbone config LeRobot reads from the hub
    is not cached.
    """
    facts = read_facts(path)
    directory = facts.path
    for s in facts.pre_steps:
        if s.get("registry_name") not in KNOWN_PRE_STEPS:
            raise CheckpointError(f"preprocessor step {s.get('registry_name')!r} is not supported (known: {sorted(KNOWN_PRE_STEPS)})")
    for s in facts.post_steps:
        if s.get("registry_name") not in KNOWN_POST_STEPS:
            raise CheckpointError(f"postprocessor step {s.get('registry_name')!r} is not supported (known: {sorted(KNOWN_POST_STEPS)})")
    builder = _spec_builder(facts.config["type"])
    spec = builder(facts)
    if overrides:
        data = spec.to_dict()
        data.update(overrides)
        spec = FamilySpec.from_dict(data)

    flat = _load_stats(directory, facts.pre_steps, "normalizer_processor", "policy_preprocessor_step_*_normalizer_processor.safetensors")
    flat_post = _load_stats(directory, facts.post_steps, "unnormalizer_processor", "policy_postprocessor_step_*_unnormalizer_processor.safetensors")
    stats: dict[str, dict[str, np.ndarray]] = {}
    for source in (flat, flat_post):
        for key in {k.rsplit(".", 1)[0] for k in source}:
            stats.setdefault(key, {}).update(feature_stats(source, key))
    state_norm = FeatureNormalizer(
        spec.state_key, spec.norm_map.get("STATE", "IDENTITY"), feature_stats(flat, spec.state_key), spec.norm_eps
    )
    action_norm = FeatureNormalizer(
        spec.action_key, spec.norm_map.get("ACTION", "IDENTITY"), feature_stats(flat_post, spec.action_key), spec.norm_eps
    )
    return LeRobotCheckpoint(
        path=directory,
        config=facts.config,
        spec=spec,
        stats=stats,
        state_normalizer=state_norm,
        action_normalizer=action_norm,
        tensor_shapes=facts.shapes,
        key_map=facts.key_map,
        notes=facts.key_notes,
    )


def _spec_builder(model_type: str) -> Callable[[CheckpointFacts], FamilySpec]:
    """The family's torch-free spec builder (imported lazily: one family per call)."""
    if model_type == "pi0":
        from reflex_ros.policies.pi0.config import build_pi0_spec

        return build_pi0_spec
    if model_type == "pi05":
        from reflex_ros.policies.pi05.config import build_pi05_spec

        return build_pi05_spec
    from reflex_ros.policies.smolvla.config import build_smolvla_spec

    return build_smolvla_spec
