"""The numpy pre/post-processor shared by the LeRobot families (never imports torch).

It replays LeRobot's inference call path for one observation:
``prepare_observation_for_inference`` (uint8 -> float32 / 255) -> ``policy_preprocessor``
(normalize, prompt template, tokenize) -> the policy's own ``prepare_images`` /
``prepare_state`` (resize-with-pad, [-1, 1], missing cameras, zero-padding) and, after the
sampler, ``predict_action_chunk``'s un-padding -> ``policy_postprocessor`` (un-normalize).

Static shapes (for ONNX) are the one deliberate difference from LeRobot: every camera key
always has an image slot and prompts are always padded to ``tokenizer_max_length``. LeRobot
puts present cameras first and then its masked empty images; we order slots the same way,
so a slot LeRobot drops altogether is simply a masked one. Masked tokens are invisible to
every other token (attention masks, and positions come from a cumulative sum of the mask),
so the actions are the same; the parity tests prove it on fixtures recorded by LeRobot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from reflex_ros.engine.types import ObservationError, UsageError, frame_name
from reflex_ros.policies.lerobot.errors import CheckpointError
from reflex_ros.policies.lerobot.images import RESIZE_WITH_PAD, fit_size
from reflex_ros.policies.lerobot.normalization import FeatureNormalizer
from reflex_ros.policies.lerobot.spec import FamilySpec
from reflex_ros.policies.lerobot.tokenizer import LeRobotTokenizer

#: RECAP's advantage indicator (pi*0.6): the conditioned prompt is ``task + ADVANTAGE_TAG``
ADVANTAGE_TAG = "\nAdvantage: positive"


class LeRobotProcessor:
    """numpy in, numpy out. Subclasses supply the prompt template and the image resize."""

    #: whether :meth:`prepare` builds the RECAP ``[cond, uncond]`` batch
    supports_cfg: bool = False
    #: prepare() outputs every family has; subclasses may add more
    base_output_names: tuple[str, ...] = ("images", "image_masks", "lang_tokens", "lang_masks")
    #: the family's resize-with-pad (``images.RESIZE_WITH_PAD``): pi0 / pi0.5 centred, SmolVLA top-left
    image_pad: str = "centered"

    def __init__(
        self,
        spec: FamilySpec,
        stats: Mapping[str, Mapping[str, np.ndarray]],
        tokenizer: LeRobotTokenizer | str | None = None,
    ) -> None:
        """``stats``: ``{feature key: {stat: array}}`` (a checkpoint's or an export's);
        ``tokenizer``: a tokenizer, a directory with its files, or None for the spec's hub id
        (looked up in the local HF cache only)."""
        self.spec = spec
        self.state_normalizer = FeatureNormalizer(
            spec.state_key, spec.norm_map.get("STATE", "IDENTITY"), stats.get(spec.state_key, {}), spec.norm_eps
        )
        self.action_normalizer = FeatureNormalizer(
            spec.action_key, spec.norm_map.get("ACTION", "IDENTITY"), stats.get(spec.action_key, {}), spec.norm_eps
        )
        if spec.state_dim > spec.max_state_dim or spec.action_dim > spec.max_action_dim:
            raise CheckpointError(
                f"state_dim {spec.state_dim} / action_dim {spec.action_dim} exceed max_state_dim "
                f"{spec.max_state_dim} / max_action_dim {spec.max_action_dim}"
            )
        if not isinstance(tokenizer, LeRobotTokenizer):
            tokenizer = LeRobotTokenizer.from_pretrained(tokenizer or spec.tokenizer_hub_id)
        self.tokenizer = tokenizer

    # ------------------------------------------------------------------ properties
    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(self.spec.camera_keys)

    @property
    def image_size(self) -> int:
        return int(self.spec.image_hw[0])

    @property
    def chunk_size(self) -> int:
        return self.spec.chunk_size

    @property
    def action_dim(self) -> int:
        return self.spec.action_dim

    @property
    def action_width(self) -> int:
        return self.spec.max_action_dim

    @property
    def max_state_dim(self) -> int:
        return self.spec.max_state_dim

    @property
    def state_dim(self) -> int:
        return self.spec.state_dim

    @property
    def max_lang_tokens(self) -> int:
        return self.spec.tokenizer_max_length

    @property
    def output_names(self) -> tuple[str, ...]:
        """Names of the arrays :meth:`prepare` returns."""
        return self.base_output_names

    def input_specs(self) -> list[tuple[str, str, tuple[int | str, ...]]]:
        """``(name, dtype, shape)`` of every :meth:`prepare` output, batch axis symbolic."""
        n, (h, w), length = self.spec.num_cameras, self.spec.image_hw, self.spec.tokenizer_max_length
        table: dict[str, tuple[str, tuple[int | str, ...]]] = {
            "images": ("float32", ("batch", n, 3, h, w)),
            "image_masks": ("bool", ("batch", n)),
            "image_slot_masks": ("bool", ("batch", n)),
            "lang_tokens": ("int64", ("batch", length)),
            "lang_masks": ("bool", ("batch", length)),
            "state": ("float32", ("batch", self.spec.max_state_dim)),
        }
        return [(name, *table[name]) for name in self.output_names]

    # ------------------------------------------------------------------ stages
    def resize_image(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 ``(H, W, 3)`` -> float32 ``(3, h, w)`` in [-1, 1], the family's resize-with-pad."""
        return RESIZE_WITH_PAD[self.image_pad][0](rgb, *self.spec.image_hw)

    def device_image_step(self, device: Any) -> Any:
        """The same step in torch on ``device`` (``images_torch.DeviceImages``), for the torch
        engine's graphs to run on :meth:`prepare`'s ``device_images=True`` frames. Imported
        here, lazily: the numpy path (ONNX serving) never loads torch."""
        from reflex_ros.policies.lerobot.images_torch import DeviceImages

        return DeviceImages(*self.spec.image_hw, self.image_pad, device)

    def build_prompt(self, task: str, normalized_state: np.ndarray) -> str:
        """The exact string LeRobot tokenizes (family-specific)."""
        raise NotImplementedError

    def slot_exists(self, present: Sequence[bool]) -> np.ndarray:
        """Per slot (present cameras first): whether LeRobot has that image at all.

        pi0/pi0.5 keep a masked -1 image for every missing camera; SmolVLA only for the
        first ``empty_cameras`` of them (overridden there)."""
        return np.ones(len(present), dtype=bool)

    def camera_frames(self, images: Mapping[str, np.ndarray]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """``(uint8 (H, W, 3) frames of the present cameras, masks bool [n], slot_exists bool [n])``.

        Present cameras come first in the model's camera order (slot ``i`` is ``frames[i]``),
        then the absent ones, as LeRobot's ``prepare_images`` orders them."""
        keys = self.spec.camera_keys
        unknown = sorted(set(images) - set(keys))
        if unknown:
            raise ObservationError(f"unknown camera key(s) {unknown}; this policy's cameras are {keys}")
        present = [k for k in keys if k in images and images[k] is not None]
        if not present:
            raise ObservationError(f"every camera is missing; at least one of {keys} is required")
        frames = []
        for key in present:
            rgb = np.asarray(images[key])
            if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or 0 in rgb.shape:
                raise ObservationError(f"camera {key!r}: expected uint8 (H, W, 3) RGB, got {rgb.dtype} {rgb.shape}")
            if 0 in fit_size(rgb.shape[0], rgb.shape[1], *self.spec.image_hw):
                raise ObservationError(f"camera {key!r}: a {rgb.shape[1]}x{rgb.shape[0]} frame cannot be fitted into "
                                       f"the model's {self.spec.image_hw[1]}x{self.spec.image_hw[0]} (its aspect "
                                       "ratio leaves a side of 0 pixels)")
            frames.append(rgb)
        masks = np.zeros(len(keys), dtype=bool)
        masks[: len(present)] = True
        return frames, masks, self.slot_exists([True] * len(present) + [False] * (len(keys) - len(present)))

    def model_images(self, images: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(images float32 [n, 3, h, w], masks bool [n], slot_exists bool [n])``: the
        :meth:`camera_frames` resized, with one masked -1 image per absent camera."""
        frames, masks, slots = self.camera_frames(images)
        h, w = self.spec.image_hw
        out = np.full((len(masks), 3, h, w), -1.0, dtype=np.float32)
        for slot, rgb in enumerate(frames):
            out[slot] = self.resize_image(rgb)
        return out, masks, slots

    def normalized_state(self, state: np.ndarray) -> np.ndarray:
        """Raw ``(state_dim,)`` -> normalized float32 ``(state_dim,)``."""
        state = np.asarray(state, dtype=np.float32)
        if state.shape != (self.spec.state_dim,):
            raise ObservationError(f"state must have shape ({self.spec.state_dim},), got {state.shape}")
        if not np.all(np.isfinite(state)):
            raise ObservationError("state has non-finite values")
        return self.state_normalizer.normalize(state)

    def padded_state(self, normalized: np.ndarray) -> np.ndarray:
        """Zero-pad to ``max_state_dim`` (LeRobot's ``pad_vector``)."""
        out = np.zeros(self.spec.max_state_dim, dtype=np.float32)
        out[: normalized.shape[-1]] = normalized
        return out

    def tokenize(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(ids int64 [B, L], mask bool [B, L])``, ``L = tokenizer_max_length``."""
        return self.tokenizer.encode(list(prompts), self.spec.tokenizer_max_length)

    def prompts(self, task: str, normalized_state: np.ndarray, cfg: bool = False) -> list[str]:
        """``[prompt]``, or ``[cond, uncond]`` with ``cfg`` (RECAP): cond is the task plus
        :data:`ADVANTAGE_TAG`, with the task shortened first when the full prompt would be
        truncated, so the tag always survives (otherwise cond == uncond and guidance silently
        does nothing)."""
        if not isinstance(task, str):
            raise ObservationError(f"task must be a str, got {type(task).__name__}")
        if not cfg:
            return [self.build_prompt(task, normalized_state)]
        limit = self.spec.tokenizer_max_length

        def cond(n: int) -> str:
            head = task if n >= len(task) else task[:n].rstrip()
            return self.build_prompt(head + ADVANTAGE_TAG, normalized_state)

        n = len(task)
        if self.tokenizer.count_tokens(cond(n)) > limit:
            lo, hi = 0, n  # longest task prefix whose conditioned prompt fits
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if self.tokenizer.count_tokens(cond(mid)) <= limit:
                    lo = mid
                else:
                    hi = mid - 1
            n = lo
            if self.tokenizer.count_tokens(cond(n)) > limit:
                raise UsageError(f"tokenizer_max_length {limit} is too short for the advantage tag")
        return [cond(n), self.build_prompt(task, normalized_state)]

    def extra_outputs(self, normalized_state: np.ndarray, slot_exists: np.ndarray) -> dict[str, np.ndarray]:
        """Family-specific arrays (one batch row); default: the padded state."""
        return {"state": self.padded_state(normalized_state)}

    # ------------------------------------------------------------------ API
    def prepare(
        self,
        images: Mapping[str, np.ndarray],
        state: np.ndarray,
        task: str,
        cfg_beta: float | None = None,
        device_images: bool = False,
    ) -> dict[str, np.ndarray]:
        """The model inputs with a leading batch axis: 1, or 2 = ``[cond, uncond]`` when
        ``cfg_beta`` is given (RECAP; only families with :attr:`supports_cfg`).

        ``device_images``: instead of ``images``, each present camera's uint8 frame as is,
        under :func:`~reflex_ros.engine.types.frame_name` of its slot (no batch axis), for
        the torch engine's graphs to resize on the GPU (:meth:`device_image_step`)."""
        if cfg_beta is not None and not self.supports_cfg:
            raise UsageError(f"{self.spec.model_type} does not support CFG (cfg_beta); pass cfg_beta=None")
        normalized = self.normalized_state(state)
        if device_images:
            frames, masks, slots = self.camera_frames(images)
            imgs = None
        else:
            imgs, masks, slots = self.model_images(images)
        ids, lang_masks = self.tokenize(self.prompts(task, normalized, cfg=cfg_beta is not None))
        batch = ids.shape[0]
        row: dict[str, np.ndarray] = {"images": imgs, "image_masks": masks, "image_slot_masks": slots}
        row.update(self.extra_outputs(normalized, slots))
        out = {"lang_tokens": ids, "lang_masks": lang_masks}
        for name in self.output_names:
            if name in out or (device_images and name == "images"):
                continue
            # batch 1: a view (no copy of two 512x512 images per inference)
            out[name] = row[name][None] if batch == 1 else np.repeat(row[name][None], batch, axis=0)
        names = [n for n in self.output_names if n in out]
        if device_images:
            out.update({frame_name(slot): np.ascontiguousarray(rgb) for slot, rgb in enumerate(frames)})
            names += [frame_name(slot) for slot in range(len(frames))]
        return {name: out[name] for name in names}

    def prepare_observation(self, obs: Any, cfg_beta: float | None = None) -> dict[str, np.ndarray]:
        """:meth:`prepare` for an :class:`~reflex_ros.engine.types.Observation` (images as a
        mapping by camera key, or a list in :attr:`camera_names` order)."""
        images = obs.images
        if not isinstance(images, Mapping):
            if len(images) != len(self.camera_names):
                raise ObservationError(f"expected {len(self.camera_names)} images, got {len(images)}")
            images = dict(zip(self.camera_names, images, strict=True))
        return self.prepare(images, obs.state, obs.instruction, cfg_beta)

    def postprocess(self, x: np.ndarray) -> np.ndarray:
        """Sampler output ``(..., chunk, max_action_dim)`` -> un-normalized float32
        ``(..., chunk, action_dim)`` (LeRobot un-pads, then the postprocessor un-normalizes)."""
        x = np.asarray(x, dtype=np.float32)
        if x.shape[-1] != self.spec.max_action_dim or x.shape[-2] != self.spec.chunk_size:
            raise ObservationError(
                f"expected (..., {self.spec.chunk_size}, {self.spec.max_action_dim}) from the sampler, got {x.shape}"
            )
        return self.action_normalizer.unnormalize(x[..., : self.spec.action_dim])

    def normalize_actions(self, actions: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`postprocess`: ``(..., rows, action_dim)`` robot actions ->
        the model's space ``(..., rows, max_action_dim)`` float32 (normalized as LeRobot's
        preprocessor normalizes training actions, zero-padded like ``pad_vector``)."""
        a = np.asarray(actions, dtype=np.float32)
        if a.ndim < 2 or a.shape[-1] != self.spec.action_dim:
            raise ObservationError(f"actions must have shape (..., rows, {self.spec.action_dim}), got {a.shape}")
        out = np.zeros((*a.shape[:-1], self.spec.max_action_dim), dtype=np.float32)
        out[..., : self.spec.action_dim] = self.action_normalizer.normalize(a)
        return out
