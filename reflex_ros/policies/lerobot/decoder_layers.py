"""Decoder-layer parts for the Gemma (pi0, pi0.5) and Llama (SmolVLA) stacks.

The modules are named like the checkpoint's (``input_layernorm``, ``self_attn.q_proj``,
``mlp.gate_proj``, ...) so weights load by a prefix map, but the forward logic lives in the
family models: LeRobot runs these layers in ways a stock decoder does not (the VLM fills a
cache that the expert reads, SmolVLA's expert re-projects the VLM's keys and values,
pi0.5's norms are time-conditioned). The norm variants:

- Gemma RMSNorm scales by ``(1 + w)`` (weights stored as offsets from 1);
- pi0.5's AdaRMSNorm has no weight: a ``dense`` layer maps the time embedding to
  ``(scale, shift, gate)``, output ``norm(x) * (1 + scale) + shift``, and the gate scales
  the residual branch;
- Llama RMSNorm scales by ``w``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


def _rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.to(torch.float32)
    return x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)


class GemmaRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (_rms(x, self.eps) * (1.0 + self.weight.to(torch.float32))).to(x.dtype)


class AdaRMSNorm(nn.Module):
    """pi0.5's time-conditioned norm; returns ``(normed, gate)``."""

    def __init__(self, dim: int, cond_dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.dense = nn.Linear(cond_dim, 3 * dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale, shift, gate = self.dense(cond)[:, None, :].chunk(3, dim=-1)
        normed = _rms(x, self.eps) * (1.0 + scale.to(torch.float32)) + shift.to(torch.float32)
        return normed.to(x.dtype), gate.to(x.dtype)


class LlamaRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * _rms(x, self.eps).to(x.dtype)


class GatedMLP(nn.Module):
    """``down(act(gate(x)) * up(x))``: GELU-tanh for Gemma, SiLU for Llama."""

    def __init__(self, dim: int, hidden: int, activation: str) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gate_proj(x)
        g = F.gelu(g, approximate="tanh") if self.activation == "gelu_tanh" else F.silu(g)
        return self.down_proj(g * self.up_proj(x))


class AttentionProjections(nn.Module):
    """q/k/v/o projections without bias; any of them may be left out.

    ``kv_in`` lets SmolVLA's cross-attention layers project the VLM's keys/values (a
    different width) instead of the layer's own hidden states."""

    def __init__(
        self, dim: int, heads: int, kv_heads: int, head_dim: int, kv_in: int | None = None,
        with_q: bool = True, with_o: bool = True,
    ) -> None:
        super().__init__()
        kv_in = dim if kv_in is None else kv_in
        if with_q:
            self.q_proj = nn.Linear(dim, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(kv_in, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(kv_in, kv_heads * head_dim, bias=False)
        if with_o:
            self.o_proj = nn.Linear(heads * head_dim, dim, bias=False)
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        #: query heads per key/value head (a Python int: static for tracing)
        self.groups = heads // kv_heads

    @staticmethod
    def split_heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
        """``[B, S, H * D] -> [B, H, S, D]``."""
        b, s, _ = x.shape
        return x.reshape(b, s, -1, head_dim).transpose(1, 2)


class DecoderLayer(nn.Module):
    """One Gemma/Llama decoder layer's parameters.

    ``kv_only`` keeps just what produces a layer's keys and values (its input norm and
    k/v projections): the last VLM layer's attention output, MLP and the final norm never
    reach the actions, because only the VLM's KV cache is used."""

    def __init__(
        self,
        dim: int,
        mlp_dim: int,
        heads: int,
        kv_heads: int,
        head_dim: int,
        eps: float,
        norm: str,
        activation: str,
        cond_dim: int | None = None,
        kv_in: int | None = None,
        kv_only: bool = False,
    ) -> None:
        super().__init__()

        def make_norm() -> nn.Module:
            if norm == "gemma":
                return GemmaRMSNorm(dim, eps)
            if norm == "adarms":
                return AdaRMSNorm(dim, int(cond_dim or dim), eps)
            return LlamaRMSNorm(dim, eps)

        self.input_layernorm = make_norm()
        self.self_attn = AttentionProjections(
            dim, heads, kv_heads, head_dim, kv_in=kv_in, with_q=not kv_only, with_o=not kv_only
        )
        if not kv_only:
            self.post_attention_layernorm = make_norm()
            self.mlp = GatedMLP(dim, mlp_dim, activation)
