"""The family spec: everything a model or processor needs, read once from a checkpoint.

A LeRobot checkpoint spreads its facts over ``config.json``, the processor JSONs, the
safetensors shapes and (for sizes LeRobot takes from a hub config) the backbone repo. The
spec gathers them into one JSON-serializable dataclass, so an export stores it and serving
never re-reads the original checkpoint, the HF cache or the network. Torch-free.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

#: the model types this package implements
MODEL_TYPES = ("pi0", "pi05", "smolvla")


@dataclass
class VisionArch:
    """A SigLIP-style vision tower (PaliGemma's, or SmolVLM's NaViT variant)."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    patch_size: int
    #: side of the image the position table was trained for (patches per side * patch size)
    image_size: int
    layer_norm_eps: float = 1e-6


@dataclass
class DecoderArch:
    """A Gemma or Llama decoder stack (the VLM's language model, or the action expert)."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    vocab_size: int = 0


@dataclass
class FamilySpec:
    """One LeRobot policy's static facts (pi0, pi0.5 or SmolVLA), JSON round-trippable.

    Sizes come from the safetensors shapes (real checkpoints agree with their config; tiny
    test checkpoints do not), the rest from ``config.json`` and the processor JSONs.
    """

    model_type: str
    #: image feature keys in LeRobot's order (``config.image_features``), incl. empty cameras
    camera_keys: list[str]
    state_dim: int
    action_dim: int
    chunk_size: int
    max_state_dim: int
    max_action_dim: int
    #: model input resolution (height, width)
    image_hw: tuple[int, int]
    tokenizer_max_length: int
    num_inference_steps: int
    tokenizer_hub_id: str
    #: what LeRobot pads prompts to ("max_length" or "longest"); we always pad to max length
    tokenizer_padding: str
    state_key: str = "observation.state"
    action_key: str = "action"
    #: feature type ("VISUAL"/"STATE"/"ACTION") -> normalization mode, from the processors
    norm_map: dict[str, str] = field(default_factory=dict)
    norm_eps: float = 1e-8
    #: cameras LeRobot fills with a masked -1 image when absent (``empty_camera_<i>`` keys)
    empty_cameras: int = 0
    min_period: float = 4e-3
    max_period: float = 4.0
    vision: VisionArch | None = None
    vlm: DecoderArch | None = None
    expert: DecoderArch | None = None
    #: pi0.5: the expert's norms are AdaRMS driven by the time MLP
    expert_adarms: bool = False
    #: pi0.5: state bins in the prompt
    state_bins: int = 256
    # --- SmolVLA only ---
    backbone_hub_id: str = ""
    pixel_shuffle_factor: int = 0
    attention_mode: str = ""
    self_attn_every_n_layers: int = -1
    #: per VLM layer, the expert layer that runs alongside it (-1: none, hidden passes through)
    expert_layer_map: list[int] = field(default_factory=list)
    #: per VLM layer, whether the expert cross-attends (re-projects the VLM's K/V) there
    cross_attn_layers: list[bool] = field(default_factory=list)
    add_image_special_tokens: bool = False
    #: [fake_image_token, global_image_token] ids embedded around each image when enabled
    image_special_token_ids: list[int] = field(default_factory=list)
    #: anything else worth recording (e.g. unused config flags), JSON values only
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.image_hw = (int(self.image_hw[0]), int(self.image_hw[1]))

    @property
    def num_cameras(self) -> int:
        """Image slots the model always has (static shapes): one per camera key."""
        return len(self.camera_keys)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (tuples become lists), the inverse of :meth:`from_dict`."""
        data = dataclasses.asdict(self)
        data["image_hw"] = list(self.image_hw)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FamilySpec:
        """Rebuild a spec written by :meth:`to_dict`; unknown keys are an error (a newer export)."""
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown FamilySpec keys {unknown} (written by a newer reflex_ros?)")
        if data.get("vision") is not None:
            data["vision"] = VisionArch(**data["vision"])
        for key in ("vlm", "expert"):
            if data.get(key) is not None:
                data[key] = DecoderArch(**data[key])
        return cls(**data)
