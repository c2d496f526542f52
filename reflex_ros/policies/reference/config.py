"""Policy architecture config and size presets.

One dataclass describes every dimension of the pi0-style policy, so the model, the exporter,
the runtimes and the ROS layer all read the same numbers (image size, cameras, chunk shape)
from one place. It round-trips through JSON (``policy_config.json`` next to the weights) so an
export is self-describing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

#: the byte tokenizer needs ids 0..258 (pad, bos, eos, 256 bytes); see tokenizer.py
MIN_VOCAB_SIZE = 259


@dataclass
class PolicyConfig:
    """All dimensions of a :class:`~reflex_ros.engine.model.FlowPolicy`.

    The action expert has its own width and MLP size but shares the prefix transformer's
    depth, head count, KV head count and head dim: expert layer ``l`` attends to the K/V that
    prefix layer ``l`` produced, so their attention geometry must match (as in pi0).
    """

    preset: str = "custom"
    # vision (SigLIP-like ViT)
    image_size: int = 64
    patch_size: int = 16
    num_cameras: int = 1
    vision_width: int = 64
    vision_depth: int = 2
    vision_heads: int = 4
    vision_mlp_dim: int = 128
    # prefix LM (Gemma-like)
    width: int = 64
    depth: int = 2
    num_heads: int = 4
    num_kv_heads: int = 1
    head_dim: int = 16
    mlp_dim: int = 128
    # action expert (Gemma-300M-like); depth/heads shared with the prefix
    expert_width: int = 48
    expert_mlp_dim: int = 96
    # inputs / outputs
    vocab_size: int = 260
    max_lang_tokens: int = 32
    max_state_dim: int = 8
    action_dim: int = 8
    chunk_size: int = 50
    seed: int = 0
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        self.validate()

    # -- derived sizes -------------------------------------------------------------------
    @property
    def patches_per_image(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_image_tokens(self) -> int:
        return self.num_cameras * self.patches_per_image

    @property
    def prefix_len(self) -> int:
        """Prefix tokens: image tokens, language tokens, one state token."""
        return self.num_image_tokens + self.max_lang_tokens + 1

    @property
    def expert_depth(self) -> int:
        return self.depth

    def validate(self) -> None:
        """Raise ValueError naming the field when the dimensions cannot build a model."""
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"PolicyConfig({self.preset}): {msg}")

        for f in fields(self):
            if f.name in ("preset", "rope_theta", "seed"):
                continue
            need(int(getattr(self, f.name)) > 0, f"{f.name} must be > 0, got {getattr(self, f.name)}")
        need(self.image_size % self.patch_size == 0,
             f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})")
        need(self.vision_width % self.vision_heads == 0,
             f"vision_width ({self.vision_width}) must be divisible by vision_heads ({self.vision_heads})")
        need(self.num_heads % self.num_kv_heads == 0,
             f"num_heads ({self.num_heads}) must be divisible by num_kv_heads ({self.num_kv_heads})")
        need(self.head_dim % 2 == 0, f"head_dim must be even for RoPE, got {self.head_dim}")
        need(self.expert_width % 2 == 0, f"expert_width must be even (time embedding), got {self.expert_width}")
        need(self.vocab_size >= MIN_VOCAB_SIZE,
             f"vocab_size must be >= {MIN_VOCAB_SIZE} for the byte tokenizer, got {self.vocab_size}")
        need(self.max_lang_tokens >= 2, f"max_lang_tokens must be >= 2 (bos + eos), got {self.max_lang_tokens}")

    # -- JSON ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (plain ints/floats/str)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PolicyConfig:
        """Build from :meth:`to_dict` output; unknown keys raise so a typo is not silent."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"PolicyConfig: unknown keys {unknown}; expected a subset of {sorted(known)}")
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            kind = known[name].type
            if kind in ("int", int):
                kwargs[name] = int(value)
            elif kind in ("float", float):
                kwargs[name] = float(value)
            else:
                kwargs[name] = str(value)
        return cls(**kwargs)

    def replace(self, **overrides: Any) -> PolicyConfig:
        return dataclasses.replace(self, **overrides)


PRESETS: dict[str, PolicyConfig] = {
    # < 2 M parameters: unit tests, CPU demo, parity exports in seconds.
    "tiny": PolicyConfig(
        preset="tiny", image_size=64, patch_size=16, num_cameras=1,
        vision_width=64, vision_depth=2, vision_heads=4, vision_mlp_dim=128,
        width=64, depth=2, num_heads=4, num_kv_heads=1, head_dim=16, mlp_dim=128,
        expert_width=48, expert_mlp_dim=96,
        vocab_size=260, max_lang_tokens=32, max_state_dim=8, action_dim=8, chunk_size=50,
    ),
    # tens of M parameters at the real input geometry (2 x 224px, 48 tokens, 50 x 32 chunk).
    "small": PolicyConfig(
        preset="small", image_size=224, patch_size=14, num_cameras=2,
        vision_width=384, vision_depth=6, vision_heads=6, vision_mlp_dim=1536,
        width=512, depth=6, num_heads=8, num_kv_heads=1, head_dim=64, mlp_dim=2048,
        expert_width=256, expert_mlp_dim=1024,
        vocab_size=512, max_lang_tokens=48, max_state_dim=32, action_dim=32, chunk_size=50,
    ),
    # Published pi0 dimensions: SigLIP-So400m vision, Gemma-2B prefix, Gemma-300M expert.
    "pi0": PolicyConfig(
        preset="pi0", image_size=224, patch_size=14, num_cameras=2,
        vision_width=1152, vision_depth=27, vision_heads=16, vision_mlp_dim=4304,
        width=2048, depth=18, num_heads=8, num_kv_heads=1, head_dim=256, mlp_dim=16384,
        expert_width=1024, expert_mlp_dim=4096,
        vocab_size=257152, max_lang_tokens=48, max_state_dim=32, action_dim=32, chunk_size=50,
    ),
}


def get_preset(name: str, **overrides: Any) -> PolicyConfig:
    """A copy of preset ``name`` with ``overrides`` applied (e.g. ``num_cameras=2``).

    Overrides whose value is None are ignored, so CLI flags can be passed straight through.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    clean = {k: v for k, v in overrides.items() if v is not None}
    known = {f.name for f in fields(PolicyConfig)}
    unknown = sorted(set(clean) - known)
    if unknown:
        raise ValueError(f"unknown PolicyConfig fields {unknown}")
    return dataclasses.replace(PRESETS[name], **clean)
