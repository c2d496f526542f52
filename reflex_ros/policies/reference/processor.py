"""The reference family's processor: Observation -> model input arrays (numpy only).

Both runtimes call it, so the ONNX and torch engines reject bad input with the same message
and see identical inputs. Torch-free on purpose: the ONNX serving path must not import torch.
Cameras arrive at any size and are stretched to the square model input here (bilinear, half-
pixel centres); normalisation to [-1, 1] happens inside the model graph.
"""

from __future__ import annotations

import numpy as np

from reflex_ros.engine.observation import camera_images, checked_state
from reflex_ros.engine.schedule import check_cfg_beta
from reflex_ros.engine.types import Observation, ObservationError
from reflex_ros.policies.base import TensorSpec
from reflex_ros.policies.imaging import resize_rgb
from reflex_ros.policies.reference.config import PolicyConfig
from reflex_ros.policies.reference.tokenizer import cfg_prompts, tokenize

BATCH = "batch"


class ReferenceProcessor:
    """See the module docstring; implements :class:`~reflex_ros.policies.base.Processor`."""

    supports_cfg = True
    state_dim = None  # any length up to max_state_dim, zero-padded (pi0 style)
    optional_cameras: tuple[str, ...] = ()

    def __init__(self, cfg: PolicyConfig) -> None:
        self.cfg = cfg
        self.camera_names = tuple(f"camera{i}" for i in range(cfg.num_cameras))
        self.image_size = cfg.image_size
        self.chunk_size = cfg.chunk_size
        self.action_dim = cfg.action_dim
        self.action_width = cfg.action_dim
        self.max_state_dim = cfg.max_state_dim
        self.max_lang_tokens = cfg.max_lang_tokens

    def input_specs(self) -> list[TensorSpec]:
        c = self.cfg
        return [
            ("images", "uint8", (BATCH, c.num_cameras, c.image_size, c.image_size, 3)),
            ("lang_tokens", "int64", (BATCH, c.max_lang_tokens)),
            ("lang_masks", "bool", (BATCH, c.max_lang_tokens)),
            ("state", "float32", (BATCH, c.max_state_dim)),
        ]

    def prepare(self, obs: Observation, cfg_beta: float | None = None) -> dict[str, np.ndarray]:
        """``images`` uint8 [B,N,S,S,3], ``lang_tokens`` int64 [B,L], ``lang_masks`` bool [B,L],
        ``state`` float32 [B,max_state_dim] (zero-padded). B=1, or B=2 ``[cond, uncond]`` when
        ``cfg_beta`` is not None (same images and state in both slots, RECAP prompts)."""
        check_cfg_beta(cfg_beta)
        cfg = self.cfg
        frames = camera_images(obs, self.camera_names)
        images = np.stack([resize_rgb(img, cfg.image_size) for img in frames.values()])[None]
        state = np.zeros((1, cfg.max_state_dim), dtype=np.float32)
        raw = checked_state(obs.state, cfg.max_state_dim)
        state[0, : raw.shape[0]] = raw
        if not isinstance(obs.instruction, str):
            raise ObservationError(f"observation.instruction must be a str, got {type(obs.instruction).__name__}")
        L = cfg.max_lang_tokens
        if cfg_beta is None:
            ids, mask = tokenize(obs.instruction, L)
            return {"images": images, "lang_tokens": ids[None], "lang_masks": mask[None], "state": state}
        cond, uncond = cfg_prompts(obs.instruction, L)
        (ic, mc), (iu, mu) = tokenize(cond, L), tokenize(uncond, L)
        return {
            "images": np.ascontiguousarray(np.repeat(images, 2, axis=0)),
            "lang_tokens": np.stack([ic, iu]),
            "lang_masks": np.stack([mc, mu]),
            "state": np.repeat(state, 2, axis=0),
        }

    def postprocess(self, x: np.ndarray) -> np.ndarray:
        """The reference model's actions are already what the robot gets."""
        return np.ascontiguousarray(np.asarray(x, dtype=np.float32).reshape(self.chunk_size, self.action_dim))

    def normalize_actions(self, actions: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`postprocess` for ``(rows, action_dim)`` robot actions: the
        identity (the reference model samples the robot's actions directly)."""
        a = np.asarray(actions, dtype=np.float32)
        if a.ndim != 2 or a.shape[1] != self.action_dim:
            raise ObservationError(f"actions must have shape (rows, {self.action_dim}), got {a.shape}")
        return np.ascontiguousarray(a)


def prepare_inputs(obs: Observation, cfg: PolicyConfig, cfg_beta: float | None = None) -> dict[str, np.ndarray]:
    """:meth:`ReferenceProcessor.prepare` for a config (tests, bench)."""
    return ReferenceProcessor(cfg).prepare(obs, cfg_beta)
