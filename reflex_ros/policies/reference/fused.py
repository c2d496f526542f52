"""Fused fast path of :class:`~reflex_ros.policies.reference.model.FlowPolicy` for the CUDA Graph engine.

The same math as ``FlowPolicy.prefix`` + the Euler loop over ``FlowPolicy.velocity``, rearranged for a GPU at batch
1-2, where the reference spends most of a chunk launching ~5000 kernels of a few
microseconds each (issue 6's profile: RoPE, concatenations, residual adds, softmax). The
parameters are the model's own (no copies, no renames); only the order of work changes:

- **one K/V buffer** ``[layers, B, S_pad, head_dim]`` laid out ``[prefix | action | pad]``,
  allocated once per captured plan. The prefix writes rows ``[0, P)`` of every layer, each
  denoising step overwrites its own rows ``[P, P+C)``; no ``torch.stack`` / ``torch.cat``.
  ``S_pad`` rounds up to :data:`KEY_ALIGN` keys; pad keys are masked by the key bias.
- **RoPE + K/V write** is one kernel per layer: it rotates q and k from the fused QKV
  projection with precomputed fp32 tables, writes q already folded to (token, head) rows
  and k, v straight into the K/V buffer.
- **attention** is one kernel per layer (QK^T, key bias, online softmax, PV), for the
  expert's 400 query rows and for the prefix's. For the expert's few rows the keys are split
  over several programs (flash-decoding) and the last program of each row block to finish
  merges the slices (an atomic arrival counter per row block, reset by that program; calls
  on one :class:`FusedOps` must therefore be stream-ordered, as graph replays are).
- the expert's o_proj input is padded to 64 rows, for which cuBLAS picks a faster kernel.
- **residual adds**: in the expert each one is fused with the RMSNorm after it (one kernel);
  in the prefix they ride in the GEMM epilogue (``x.addmm_(a, W.T)``: cuBLAS's beta = 1).
- **gated GELU** (``gelu_tanh(gate) * up``) is one kernel; in the vision tower, bias +
  residual + the next LayerNorm are one kernel and fc1 + bias + GELU one cuBLASLt call.
- the GEMMs stay cuBLAS (a Triton skinny GEMM for the expert's 50 rows was measured slower).
- the **time conditioning** of all NFE steps is one GEMM per chunk, and the action
  embedding + time MLP run at batch 1 even under CFG (both slots share x and t).
- under CFG the two slots share their images (``prepare_inputs`` repeats them), so the vision
  tower runs once.
- the Euler update (with the CFG combination) is one kernel per step.

The ops themselves live in :mod:`reflex_ros.engine.kernels` (building blocks any family's
fast path can use). Each has two backends: ``triton`` (CUDA) and ``torch`` (the same op
spelled in plain torch). The CPU tests run the whole fast path with the torch backend against the reference
at fp32, so the buffer layout, masking and bookkeeping are covered without a GPU; the GPU
proof checks each Triton kernel against the torch backend. Only multi-query attention
(``num_kv_heads == 1``, every preset) and power-of-two head dims take this path;
:func:`supports` says whether a config does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from reflex_ros.engine.kernels import KEY_ALIGN, MASKED, FusedOps, default_backend
from reflex_ros.engine.schedule import euler_schedule
from reflex_ros.policies.reference.config import PolicyConfig
from reflex_ros.policies.reference.model import FlowPolicy, patchify, rope_tables, time_embedding


def supports(cfg: PolicyConfig) -> bool:
    """Whether the fused path handles ``cfg`` (MQA, power-of-two head dim)."""
    d = cfg.head_dim
    return cfg.num_kv_heads == 1 and d >= 16 and d & (d - 1) == 0


def padded_keys(cfg: PolicyConfig) -> int:
    """``S_pad``: prefix + action keys rounded up to :data:`KEY_ALIGN`."""
    s = cfg.prefix_len + cfg.chunk_size
    return -(-s // KEY_ALIGN) * KEY_ALIGN


# ---------------------------------------------------------------------------------------
# the fast policy
# ---------------------------------------------------------------------------------------


@dataclass
class FusedBuffers:
    """Static per-plan state shared by the prefix and the denoise graphs.

    ``k``/``v`` [layers, B, S_pad, d]: rows [0, P) prefix (written by the prefix), [P, P+C)
    the action tokens (rewritten at every step), the rest zero pad. ``bias`` [B, S_pad] fp32:
    0 = attend, :data:`MASKED` = padded prefix token or pad row. ``cos``/``sin`` [B, C, d]
    fp32: the action tokens' RoPE (positions continue after the valid prefix). ``times``
    [nfe] fp32: the Euler schedule's t_i.
    """

    k: torch.Tensor
    v: torch.Tensor
    bias: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    times: torch.Tensor
    batch: int
    nfe: int


class FusedPolicy:
    """Prefix + the whole Euler loop of a :class:`FlowPolicy`, on fused ops (see module doc).

    ``shared_inputs``: under CFG both slots carry the same images, so :meth:`prefix` takes
    images with batch 1 and runs the vision tower once.
    """

    #: inputs that have batch 1 under CFG (both slots share the images: vision runs once)
    shared_inputs = ("images",)

    def __init__(self, model: FlowPolicy, backend: str | None = None) -> None:
        if not supports(model.cfg):
            raise ValueError(f"fused path needs num_kv_heads == 1 and a power-of-two head_dim; got "
                             f"num_kv_heads={model.cfg.num_kv_heads}, head_dim={model.cfg.head_dim}")
        self.model = model
        self.cfg = model.cfg
        self.ops = FusedOps(backend or default_backend(model.device))

    @property
    def backend(self) -> str:
        return self.ops.backend

    def allocate(self, batch: int, nfe: int) -> FusedBuffers:
        """Static buffers for one (batch, nfe) plan; call outside any graph capture."""
        cfg, m = self.cfg, self.model
        dev, dt = m.device, m.dtype
        S = padded_keys(cfg)
        P, C, d = cfg.prefix_len, cfg.chunk_size, cfg.head_dim
        k = torch.zeros((cfg.depth, batch, S, d), dtype=dt, device=dev)
        bias = torch.full((batch, S), MASKED, dtype=torch.float32, device=dev)
        bias[:, P:P + C] = 0.0
        times = torch.tensor([t for t, _ in euler_schedule(nfe)], dtype=torch.float32, device=dev)
        cos = torch.zeros((batch, C, d), dtype=torch.float32, device=dev)
        return FusedBuffers(k, torch.zeros_like(k), bias, cos, torch.zeros_like(cos), times, batch, nfe)

    # -- prefix ------------------------------------------------------------------------------
    def prefix(self, buf: FusedBuffers, images: torch.Tensor, lang_tokens: torch.Tensor,
               lang_masks: torch.Tensor, state: torch.Tensor) -> None:
        """Fill ``buf`` (prefix K/V of every layer, key bias, the action tokens' RoPE). The
        token layout is the model's own (:meth:`FlowPolicy.embed_prefix`); the arguments are
        the processor's arrays by name (uint8 images, batch 1 under CFG)."""
        cfg = self.cfg
        x, keep, positions = self.model.embed_prefix(self.vision(images), lang_tokens, lang_masks, state)
        B, P = keep.shape
        rope = rope_tables(positions, cfg.head_dim, cfg.rope_theta, torch.float32)
        cos, sin = rope.cos[:, :, 0], rope.sin[:, :, 0]
        buf.bias[:, :P].copy_(torch.where(keep, 0.0, MASKED))
        n_valid = keep.to(torch.int64).sum(dim=-1, keepdim=True)
        steps = torch.arange(cfg.chunk_size, device=keep.device, dtype=torch.int64)
        erope = rope_tables(n_valid + steps[None, :], cfg.head_dim, cfg.rope_theta, torch.float32)
        buf.cos.copy_(erope.cos[:, :, 0])
        buf.sin.copy_(erope.sin[:, :, 0])
        self._prefix_lm(buf, x.reshape(B * P, cfg.width), cos.contiguous(), sin.contiguous(), B, P)

    def _prefix_lm(self, buf: FusedBuffers, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   B: int, P: int) -> None:
        cfg, ops = self.cfg, self.ops
        H, d = cfg.num_heads, cfg.head_dim
        last = len(self.model.layers) - 1
        for i, layer in enumerate(self.model.layers):
            xn = F.rms_norm(x, (x.shape[-1],), layer.input_norm.weight, layer.input_norm.eps)
            qkv = torch.mm(xn, layer.qkv.weight.t())
            q = torch.empty((B, P * H, d), dtype=x.dtype, device=x.device)
            ops.rope_qkv(qkv, cos, sin, q, buf.k[i, :, :P], buf.v[i, :, :P], P, H)
            if i == last:  # the last layer's attention output and MLP feed nothing
                break
            o = ops.attention(q, buf.k[i], buf.v[i], buf.bias, P)
            x.addmm_(o.view(B * P, H * d), layer.o_proj.weight.t())
            self._mlp(layer, x)

    def _mlp(self, layer, x: torch.Tensor) -> None:
        xn = F.rms_norm(x, (x.shape[-1],), layer.post_norm.weight, layer.post_norm.eps)
        act = self.ops.gelu_mul(torch.mm(xn, layer.mlp.gate_up.weight.t()))
        x.addmm_(act, layer.mlp.down.weight.t())

    def vision(self, images_u8: torch.Tensor) -> torch.Tensor:
        """uint8 [B, N, H, W, 3] -> image tokens [B, N*patches, width]."""
        vis, ops = self.model.vision, self.ops
        vc = self.cfg
        B, N = images_u8.shape[:2]
        x = patchify(images_u8, vc.patch_size, vis.patch_embed.weight.dtype)
        x = vis.patch_embed(x) + vis.pos_emb
        BN, n, W = x.shape
        x = x.reshape(BN * n, W)
        blocks = vis.blocks
        b0 = blocks[0].ln1
        xn = F.layer_norm(x, (W,), b0.weight, b0.bias, b0.eps)
        for j, blk in enumerate(blocks):
            heads = blk.heads
            qkv = F.linear(xn, blk.qkv.weight, blk.qkv.bias).view(BN, n, 3, heads, W // heads).permute(2, 0, 3, 1, 4)
            o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape(BN * n, W)
            xn = ops.add_layernorm(x, torch.mm(o, blk.attn_proj.weight.t()), blk.attn_proj.bias, blk.ln2)
            y = torch.mm(ops.linear_gelu(xn, blk.fc1), blk.fc2.weight.t())
            nxt = blocks[j + 1].ln1 if j + 1 < len(blocks) else vis.post_ln
            xn = ops.add_layernorm(x, y, blk.fc2.bias, nxt)
        out = F.linear(xn, vis.proj.weight, vis.proj.bias)
        return out.view(B, N * n, out.shape[-1])

    # -- denoise -------------------------------------------------------------------------------
    def denoise(self, buf: FusedBuffers, noise: torch.Tensor, beta: torch.Tensor | None) -> torch.Tensor:
        """Euler from ``noise`` [1, C, A] to the actions [1, C, A] fp32 over ``buf.nfe`` steps."""
        m, cfg = self.model, self.cfg
        ew = cfg.expert_width
        # time conditioning of every step at once: time_mlp_in([a, temb]) = a W_a^T + (temb W_t^T + b)
        w_in = m.time_mlp_in.weight
        temb = time_embedding(buf.times, ew).to(m.dtype)
        cond = F.linear(temb, w_in[:, ew:], m.time_mlp_in.bias)  # [nfe, ew]
        w_a = w_in[:, :ew]
        x = noise.to(torch.float32).clone()
        for i, (_, dt) in enumerate(euler_schedule(buf.nfe)):
            v = self.velocity(buf, x, cond[i], w_a)
            self.ops.euler(x, v, dt, beta)
        return x

    def velocity(self, buf: FusedBuffers, x: torch.Tensor, cond: torch.Tensor, w_a: torch.Tensor) -> torch.Tensor:
        """Velocity rows [B*C, A] (model dtype) of x [1, C, A]; ``cond`` is this step's time
        term, ``w_a`` the action half of time_mlp_in's weight ([ew, ew], row stride 2*ew).

        Each residual add is fused with the RMSNorm that follows it (the next sublayer's
        input norm, or the final expert norm), so a layer is 4 GEMMs + 6 small kernels."""
        m, cfg, ops = self.model, self.cfg, self.ops
        B, C, H, d = buf.batch, cfg.chunk_size, cfg.num_heads, cfg.head_dim
        P = cfg.prefix_len
        a = F.linear(x[0].to(m.dtype), m.action_in.weight, m.action_in.bias)  # [C, ew]
        h = F.linear(F.silu(torch.addmm(cond, a, w_a.t())), m.time_mlp_out.weight, m.time_mlp_out.bias)
        if B > 1:  # both CFG slots start from the same x and t
            h = h.repeat(B, 1)
        layers = m.expert_layers
        # attention output rows padded to 64: cuBLAS picks a faster o_proj kernel for 64 rows
        # than for 50 (6.5 -> 5.0 us on an H200); the pad rows are never read back
        o = torch.empty((max(B * C, 64), H * d), dtype=h.dtype, device=h.device)
        first = layers[0].input_norm
        xn = F.rms_norm(h, (h.shape[-1],), first.weight, first.eps)
        for i, layer in enumerate(layers):
            qkv = torch.mm(xn, layer.qkv.weight.t())
            q = torch.empty((B, C * H, d), dtype=h.dtype, device=h.device)
            ops.rope_qkv(qkv, buf.cos, buf.sin, q, buf.k[i, :, P:P + C], buf.v[i, :, P:P + C], C, H)
            ops.attention(q, buf.k[i], buf.v[i], buf.bias, P + C, out=o[: B * C].view(B, C * H, d))
            y = torch.mm(o, layer.o_proj.weight.t())[: B * C]
            xn = ops.add_rmsnorm(h, y, layer.post_norm)
            act = ops.gelu_mul(torch.mm(xn, layer.mlp.gate_up.weight.t()))
            nxt = layers[i + 1].input_norm if i + 1 < len(layers) else m.expert_norm
            xn = ops.add_rmsnorm(h, torch.mm(act, layer.mlp.down.weight.t()), nxt)
        return F.linear(xn, m.action_out.weight, m.action_out.bias)
