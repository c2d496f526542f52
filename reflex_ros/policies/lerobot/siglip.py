"""SigLIP vision tower (PaliGemma's, and SmolVLM's NaViT-style variant), torch.

Patch convolution + learned position table, pre-norm encoder layers with LayerNorm and
biased projections, GELU-tanh MLP, and the post-LayerNorm. SmolVLM indexes the position
table by bucketing each patch's fractional coordinate (so an input smaller than the table
reuses coarse positions); for the fixed input size we compute those indices once with the
same float32 ops and keep them as a buffer, which also keeps the graph static for ONNX.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from reflex_ros.policies.lerobot.spec import VisionArch


def navit_position_ids(image_hw: tuple[int, int], patch: int, table_side: int) -> torch.Tensor:
    """SmolVLM's patch position ids for a full (unmasked) ``image_hw`` input ``[1, N]``:
    ``bucketize(i / n_patches, arange(1/side, 1, 1/side), right=True)`` per axis."""
    n_h, n_w = image_hw[0] // patch, image_hw[1] // patch
    boundaries = torch.arange(1 / table_side, 1.0, 1 / table_side)

    def axis(n: int) -> torch.Tensor:
        step = 1.0 / torch.tensor([n])
        coords = torch.arange(n, dtype=torch.float32)[None, :] * step[:, None]
        coords = torch.clamp(coords, max=(1.0 - 1e-6)).to(torch.float32)
        return torch.bucketize(coords, boundaries, right=True)[0]

    ids = axis(n_h)[:, None] * table_side + axis(n_w)[None, :]
    return ids.reshape(1, -1).to(torch.int64)


class _Embeddings(nn.Module):
    def __init__(self, arch: VisionArch) -> None:
        super().__init__()
        self.patch_embedding = nn.Conv2d(3, arch.hidden_size, arch.patch_size, stride=arch.patch_size)
        side = arch.image_size // arch.patch_size
        self.position_embedding = nn.Embedding(side * side, arch.hidden_size)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.heads = heads
        self.head_dim = dim // heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, s, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) * (self.head_dim**-0.5)
        out = torch.matmul(torch.softmax(scores.to(torch.float32), dim=-1).to(v.dtype), v)
        return self.out_proj(out.transpose(1, 2).reshape(b, s, d))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class _EncoderLayer(nn.Module):
    def __init__(self, arch: VisionArch) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(arch.hidden_size, eps=arch.layer_norm_eps)
        self.self_attn = _Attention(arch.hidden_size, arch.num_heads)
        self.layer_norm2 = nn.LayerNorm(arch.hidden_size, eps=arch.layer_norm_eps)
        self.mlp = _Mlp(arch.hidden_size, arch.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class _Encoder(nn.Module):
    def __init__(self, arch: VisionArch) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_EncoderLayer(arch) for _ in range(arch.num_layers))


class SiglipVisionTower(nn.Module):
    """``pixels [N, 3, H, W]`` in [-1, 1] -> ``[N, (H/p) * (W/p), hidden]``.

    ``position_ids``: SmolVLM's bucketed ids (:func:`navit_position_ids`); None means the
    table row per patch in order (PaliGemma, whose input matches the table)."""

    def __init__(self, arch: VisionArch, position_ids: torch.Tensor | None = None) -> None:
        super().__init__()
        self.embeddings = _Embeddings(arch)
        self.encoder = _Encoder(arch)
        self.post_layernorm = nn.LayerNorm(arch.hidden_size, eps=arch.layer_norm_eps)
        if position_ids is None:
            side = arch.image_size // arch.patch_size
            position_ids = torch.arange(side * side, dtype=torch.int64)[None]
        self.register_buffer("position_ids", position_ids, persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.embeddings.patch_embedding(pixels).flatten(2).transpose(1, 2)
        x = x + self.embeddings.position_embedding(self.position_ids)
        for layer in self.encoder.layers:
            x = layer(x)
        return self.post_layernorm(x)
