"""Observation -> model input arrays (numpy only, used by both runtimes).

Validation lives here, once, so the ONNX and torch engines reject bad input with the same
message, and neither ever hands a malformed tensor to onnxruntime or torch (where the error
would surface as a stack trace from deep inside). Torch-free on purpose: the ONNX serving
path must not import torch.
"""

from __future__ import annotations

import numpy as np

from reflex_ros.engine.config import PolicyConfig
from reflex_ros.engine.schedule import check_cfg_beta
from reflex_ros.engine.tokenizer import cfg_prompts, tokenize
from reflex_ros.engine.types import Observation, ObservationError


def _check_images(images: object, cfg: PolicyConfig) -> np.ndarray:
    if not isinstance(images, (list, tuple)):
        raise ObservationError(
            f"observation.images must be a list of {cfg.num_cameras} camera image(s), got {type(images).__name__}"
        )
    if len(images) != cfg.num_cameras:
        raise ObservationError(
            f"observation.images has {len(images)} image(s); the model expects {cfg.num_cameras} "
            "(one per camera, in the export's camera order)"
        )
    expected = (cfg.image_size, cfg.image_size, 3)
    for i, img in enumerate(images):
        if not isinstance(img, np.ndarray):
            raise ObservationError(f"observation.images[{i}] must be a numpy array, got {type(img).__name__}")
        if img.dtype != np.uint8:
            raise ObservationError(
                f"observation.images[{i}] has dtype {img.dtype}; expected uint8 RGB {expected}"
            )
        if img.shape != expected:
            raise ObservationError(
                f"observation.images[{i}] has shape {img.shape}; expected {expected} uint8 RGB "
                f"(resize to {cfg.image_size}x{cfg.image_size} before inference)"
            )
    return np.stack(images)[None]  # [1, N, H, W, 3]


def _check_state(state: object, cfg: PolicyConfig) -> np.ndarray:
    if not isinstance(state, np.ndarray):
        raise ObservationError(f"observation.state must be a numpy float32 array, got {type(state).__name__}")
    if state.dtype.kind != "f":
        raise ObservationError(f"observation.state has dtype {state.dtype}; expected float32")
    if state.ndim != 1:
        raise ObservationError(f"observation.state has shape {state.shape}; expected (state_dim,) 1-D")
    if state.shape[0] > cfg.max_state_dim:
        raise ObservationError(
            f"observation.state has {state.shape[0]} values; the model takes at most "
            f"max_state_dim={cfg.max_state_dim}"
        )
    bad = np.flatnonzero(~np.isfinite(state))
    if bad.size:
        raise ObservationError(
            f"observation.state[{int(bad[0])}] is {state[bad[0]]}; all state values must be finite"
        )
    out = np.zeros((1, cfg.max_state_dim), dtype=np.float32)
    out[0, : state.shape[0]] = state
    return out


def prepare_inputs(obs: Observation, cfg: PolicyConfig, cfg_beta: float | None = None) -> dict[str, np.ndarray]:
    """Validate ``obs`` and build the model inputs.

    Returns ``images`` uint8 [B,N,H,W,3], ``lang_tokens`` int64 [B,L], ``lang_mask`` bool
    [B,L], ``state`` float32 [B,max_state_dim] (zero-padded). B=1, or B=2 ``[cond, uncond]``
    when ``cfg_beta`` is not None (same images and state in both slots, RECAP prompts).
    """
    check_cfg_beta(cfg_beta)
    if not isinstance(obs, Observation):
        raise ObservationError(f"expected an Observation, got {type(obs).__name__}")
    images = _check_images(obs.images, cfg)
    state = _check_state(obs.state, cfg)
    if not isinstance(obs.instruction, str):
        raise ObservationError(f"observation.instruction must be a str, got {type(obs.instruction).__name__}")
    L = cfg.max_lang_tokens
    if cfg_beta is None:
        ids, mask = tokenize(obs.instruction, L)
        return {"images": images, "lang_tokens": ids[None], "lang_mask": mask[None], "state": state}
    cond, uncond = cfg_prompts(obs.instruction, L)
    (ic, mc), (iu, mu) = tokenize(cond, L), tokenize(uncond, L)
    return {
        "images": np.ascontiguousarray(np.repeat(images, 2, axis=0)),
        "lang_tokens": np.stack([ic, iu]),
        "lang_mask": np.stack([mc, mu]),
        "state": np.repeat(state, 2, axis=0),
    }


def validate_noise(noise: object, chunk_size: int, action_dim: int) -> np.ndarray:
    """Accept ``(C, A)`` or ``(1, C, A)`` finite floats; return float32 ``(1, C, A)``."""
    expected = (chunk_size, action_dim)
    if not isinstance(noise, np.ndarray):
        raise ObservationError(f"noise must be a numpy float32 array of shape {expected}, got {type(noise).__name__}")
    if noise.dtype.kind != "f":
        raise ObservationError(f"noise has dtype {noise.dtype}; expected float32 of shape {expected}")
    if noise.shape not in (expected, (1, *expected)):
        raise ObservationError(f"noise has shape {noise.shape}; expected {expected} (chunk_size, action_dim)")
    if not np.all(np.isfinite(noise)):
        raise ObservationError("noise contains NaN or inf; all values must be finite")
    return np.ascontiguousarray(noise, dtype=np.float32).reshape(1, *expected)


def make_noise(
    seed_or_rng: int | np.random.Generator | None, chunk_size: int, action_dim: int
) -> np.ndarray:
    """Standard-normal float32 ``(1, C, A)`` noise, the x(t=1) of the flow."""
    rng = seed_or_rng if isinstance(seed_or_rng, np.random.Generator) else np.random.default_rng(seed_or_rng)
    return rng.standard_normal((1, chunk_size, action_dim), dtype=np.float32)
