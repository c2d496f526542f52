"""Rotary position embeddings, in the two flavours the LeRobot families use.

Both rotate the two halves of each head (``[x1 cos - x2 sin, x2 cos + x1 sin]``); they differ
in how the angle is formed, and we keep each family's float32 arithmetic so positions in
the hundreds rotate identically:

- Gemma (pi0, pi0.5; transformers' ``GemmaRotaryEmbedding``): ``pos * inv_freq`` with
  ``inv_freq = 1 / theta ** (arange(0, d, 2) / d)``;
- SmolVLA (its own ``apply_rope``): ``pos / timescale`` with
  ``timescale = theta ** ((2 / d) * arange(d / 2))`` and theta fixed at 10000.

Angles are built from int64 position tensors with tensor ops only, so the ONNX exporter
traces them (no Python control flow on values).
"""

from __future__ import annotations

import torch

from reflex_ros.policies.lerobot.fixed_buffers import FixedDtypeBuffers


class RotaryEmbedding(FixedDtypeBuffers):
    """cos/sin tables for integer positions, and their application to q/k (the float32
    frequencies survive a cast of the model: :class:`FixedDtypeBuffers`)."""

    def __init__(self, head_dim: int, theta: float, style: str) -> None:
        super().__init__()
        if style not in ("gemma", "smolvla"):
            raise ValueError(f"unknown RoPE style {style!r}")
        self.style = style
        half = head_dim // 2
        if style == "gemma":
            freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float32) / head_dim))
        else:
            freq = theta ** ((2.0 / head_dim) * torch.arange(half, dtype=torch.float32))
        self.register_buffer("freq", freq.to(torch.float32), persistent=False)

    def angles(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)`` of shape ``[B, S, head_dim // 2]`` for int positions ``[B, S]``."""
        pos = positions.to(torch.float32)[..., None]
        radians = pos * self.freq if self.style == "gemma" else pos / self.freq
        return torch.cos(radians), torch.sin(radians)

    @staticmethod
    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate ``x [B, H, S, D]`` by per-position ``cos/sin [B, S, D/2]``."""
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        c, s = cos[:, None], sin[:, None]
        # the tables are float32; a bf16/fp16 model keeps its own dtype (a no-op in float32)
        return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)
