"""The flow-matching time embedding (openpi's ``create_sinusoidal_pos_embedding``).

Angles reach ``2*pi / min_period`` (about 1571 at LeRobot's 4e-3), where float32 would lose
about 1e-4 of the sine; LeRobot computes them in float64 and casts the result to float32, so
we do too (ONNX Sin/Cos run on doubles on the CPU provider).
"""

from __future__ import annotations

import math

import torch

from reflex_ros.policies.lerobot.fixed_buffers import FixedDtypeBuffers


class SinusoidalTimeEmbedding(FixedDtypeBuffers):
    """``t [B] -> [sin(2 pi t / period), cos(2 pi t / period)]`` float32 ``[B, dim]`` (the
    float64 scales survive a cast of the model: :class:`FixedDtypeBuffers`)."""

    def __init__(self, dim: int, min_period: float, max_period: float) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"time embedding width {dim} must be even")
        fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64)
        period = min_period * (max_period / min_period) ** fraction
        self.register_buffer("scale", 1.0 / period * 2 * math.pi, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = self.scale[None, :] * t.to(torch.float64)[:, None]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).to(torch.float32)
