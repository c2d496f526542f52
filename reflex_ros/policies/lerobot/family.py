"""LeRobot pi0 / pi0.5 / SmolVLA as registry families (``policies/__init__.py``).

One class serves the three: what differs (spec builder, processor, model) is looked up by
``model_type`` in ``families.py``. Export reads the user's checkpoint (config.json,
model.safetensors, the processor files with their statistics, the tokenizer from the local
HF cache), and writes into the export everything serving needs: the model weights in our
own names (``policy.safetensors``), ``policy_config.json`` (the family spec, the
normalization statistics and the tokenizer's identity) and the tokenizer files
(``tokenizer/``). Serving then never touches the checkpoint, the cache or the network.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from reflex_ros.engine.observation import camera_images
from reflex_ros.engine.types import ExportError, Observation, ReflexError
from reflex_ros.policies.base import ExportSource
from reflex_ros.policies.lerobot.families import model_class, processor_class
from reflex_ros.policies.lerobot.spec import FamilySpec

WEIGHTS_FILE = "policy.safetensors"
POLICY_CONFIG_FILE = "policy_config.json"
TOKENIZER_DIR = "tokenizer"
#: LeRobot names the image features its ``empty_cameras`` option adds ``...empty_camera_<i>``
EMPTY_CAMERA = "empty_camera_"
#: bump when policy_config.json's layout changes
POLICY_CONFIG_VERSION = 1


class ObservationProcessor:
    """The family processor behind the engine's ``prepare(observation, cfg_beta)``.

    The LeRobot processors take ``(images by camera key, state, task)``, LeRobot's own raw
    observation; the engines hand over an :class:`Observation`. Camera checks (unknown or
    malformed images) are the engine's shared ones, so every family words them alike."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.supports_cfg = bool(inner.supports_cfg)
        for name in ("camera_names", "image_size", "chunk_size", "action_dim", "action_width",
                     "max_state_dim", "state_dim", "max_lang_tokens"):
            setattr(self, name, getattr(inner, name))
        # LeRobot's `empty_cameras` add image features no robot has (always masked)
        self.optional_cameras = tuple(k for k in self.camera_names if EMPTY_CAMERA in k.rsplit(".", 1)[-1])

    @property
    def spec(self) -> FamilySpec:
        return self.inner.spec

    def input_specs(self) -> list[tuple[str, str, tuple[int | str, ...]]]:
        return self.inner.input_specs()

    def prepare(self, obs: Observation, cfg_beta: float | None = None,
                device_images: bool = False) -> dict[str, np.ndarray]:
        """The model inputs; ``device_images``: raw uint8 frames instead of ``images``
        (``LeRobotProcessor.prepare``), for the torch engine's graphs."""
        frames = camera_images(obs, self.camera_names, allow_missing=True)
        present = {k: v for k, v in frames.items() if v is not None}
        return self.inner.prepare(present, obs.state, obs.instruction, cfg_beta, device_images=device_images)

    def device_image_step(self, device: Any) -> Any:
        """The family's image step in torch (``images_torch.DeviceImages``)."""
        return self.inner.device_image_step(device)

    def postprocess(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.inner.postprocess(x), dtype=np.float32)

    def normalize_actions(self, actions: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.inner.normalize_actions(actions), dtype=np.float32)


def _stats_json(stats: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, dict[str, list]]:
    return {key: {name: np.asarray(v, dtype=np.float32).tolist() for name, v in sorted(d.items())}
            for key, d in sorted(stats.items())}


def _stats_arrays(doc: Mapping[str, Mapping[str, list]]) -> dict[str, dict[str, np.ndarray]]:
    return {key: {name: np.asarray(v, dtype=np.float32) for name, v in d.items()} for key, d in doc.items()}


def _digest(directory: Path) -> str:
    """sha256 over a directory's files (name + bytes), so the model hash tracks the tokenizer."""
    h = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        h.update(path.relative_to(directory).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


class LeRobotFamily:
    """:class:`~reflex_ros.policies.base.Family` for one LeRobot ``type``."""

    def __init__(self, model_type: str, description: str) -> None:
        self.model_type = model_type
        self.description = description

    # -- serving (torch-free processor, torch model) --------------------------------------
    def _spec(self, policy_config: Mapping[str, Any]) -> FamilySpec:
        if policy_config.get("version") != POLICY_CONFIG_VERSION:
            raise ExportError(f"{POLICY_CONFIG_FILE} version {policy_config.get('version')!r} is not "
                              f"{POLICY_CONFIG_VERSION} (written by another reflex_ros version)")
        return FamilySpec.from_dict(policy_config["spec"])

    def processor(self, export_dir: Path, policy_config: Mapping[str, Any]) -> ObservationProcessor:
        spec = self._spec(policy_config)
        stats = _stats_arrays(policy_config.get("stats", {}))
        tokenizer_dir = Path(export_dir) / policy_config.get("tokenizer_dir", TOKENIZER_DIR)
        return ObservationProcessor(processor_class(self.model_type)(spec, stats, str(tokenizer_dir)))

    def load_model(self, export_dir: Path, policy_config: Mapping[str, Any], *, device: Any, dtype: Any) -> Any:
        import torch
        from safetensors.torch import load_file

        from reflex_ros.engine.precision import resolve_dtype

        spec = self._spec(policy_config)
        with torch.device("meta"):
            model = model_class(self.model_type)(spec)
        path = Path(export_dir) / WEIGHTS_FILE
        tensors = load_file(str(path), device="cpu")
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise ExportError(f"{path} does not match {POLICY_CONFIG_FILE}: missing tensors {missing[:5]}, "
                              f"unexpected {unexpected[:5]} (files from different exports?)")
        for name, shape in expected.items():
            if tuple(tensors[name].shape) != shape:
                raise ExportError(f"{path}: tensor {name} has shape {tuple(tensors[name].shape)}; the spec "
                                  f"expects {shape}")
        model = model.to_empty(device=device)
        model.load_state_dict(tensors, strict=True)
        model = model.to(resolve_dtype(dtype))
        self._restore_constants(model, spec, device)
        return model.eval().requires_grad_(False)

    def _restore_constants(self, model: Any, spec: FamilySpec, device: Any) -> None:
        """Non-persistent buffers (RoPE frequencies, time-embedding scales, position ids: the
        constants a model computes at construction) are lost by ``to_empty`` and would be
        rounded by ``.to(bf16)``. Put back a fresh CPU twin's, in their own dtype."""
        persistent = set(model.state_dict())
        owners = {name: (mod, leaf) for mod_name, mod in model.named_modules()
                  for leaf in list(mod._buffers) if (name := f"{mod_name}.{leaf}".lstrip(".")) not in persistent}
        if not owners:
            return
        fresh = dict(model_class(self.model_type)(spec).named_buffers())
        for name, (mod, leaf) in owners.items():
            mod._buffers[leaf] = fresh[name].to(device)

    def fast_path(self, model: Any, fp8: bool = False) -> Any | None:
        """The fused CUDA-graph path (``lerobot/fused.py``) where it covers ``model``, else None
        (the torch engine then captures the model's own prefix + velocity). ``fp8``: e4m3 MLP
        GEMMs (the engine's ``fp8`` precision; it checks the GPU first)."""
        from reflex_ros.policies.lerobot.fused import LeRobotFastPath, supports

        ok, _ = supports(model)
        return LeRobotFastPath(model, fp8=fp8) if ok else None

    # -- export -----------------------------------------------------------------------------
    def export_source(self, source: str, **_: Any) -> ExportSource:
        import torch

        from reflex_ros.policies.lerobot.checkpoint import load_lerobot_checkpoint
        from reflex_ros.policies.lerobot.tokenizer import LeRobotTokenizer

        try:
            ckpt = load_lerobot_checkpoint(source)
            tokenizer = LeRobotTokenizer.from_pretrained(ckpt.spec.tokenizer_hub_id)
        except ReflexError as exc:
            raise ExportError(str(exc)) from None
        if ckpt.model_type != self.model_type:
            raise ExportError(f"{source} is a {ckpt.model_type} checkpoint, not {self.model_type}")
        spec = ckpt.spec
        processor = ObservationProcessor(processor_class(self.model_type)(spec, ckpt.stats, tokenizer))
        with torch.device("cpu"):
            model = model_class(self.model_type)(spec, ckpt.load_state_dict())
        model = model.float().eval().requires_grad_(False)
        policy_config = {
            "version": POLICY_CONFIG_VERSION,
            "model_type": self.model_type,
            "spec": spec.to_dict(),
            "stats": _stats_json(ckpt.stats),
            "tokenizer_dir": TOKENIZER_DIR,
            "tokenizer_hub_id": spec.tokenizer_hub_id,
            "checkpoint_notes": list(ckpt.notes),
        }

        def write(directory: Path) -> None:
            from safetensors.torch import save_file

            directory = Path(directory)
            tok_dir = directory / TOKENIZER_DIR
            tokenizer.save(tok_dir)
            doc = {**policy_config, "tokenizer_sha256": _digest(tok_dir)}
            tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
            save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt", "model_type": self.model_type})
            (directory / POLICY_CONFIG_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")

        return ExportSource(
            model_type=self.model_type,
            model=model,
            processor=processor,
            policy_config=policy_config,
            write=write,
            label=f"{self.model_type} checkpoint {Path(source)}",
            export_command=f"reflex-ros export {source}",
            extra_config={"assets": [TOKENIZER_DIR], "num_inference_steps": int(spec.num_inference_steps)},
        )
