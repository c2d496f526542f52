"""pi0-style flow-matching VLA policy (torch), written to be captured and exported.

Structure (pi0): N camera images -> ViT patch encoder -> projected to the prefix width;
instruction tokens embedded; robot state projected to one token. The prefix transformer
(Gemma-like: RMSNorm, RoPE, multi-query attention, gated GELU MLP, fused QKV) runs once per
chunk and hands each layer's K/V to the action expert. The expert (same depth, its own width)
embeds the noisy action chunk with the flow time, and at every layer its action tokens attend
to that layer's prefix K/V plus their own. A linear head gives the velocity.

Two entry points, so the runtimes can compute the prefix once and reuse its KV for every
denoising step: :meth:`FlowPolicy.prefix` and :meth:`FlowPolicy.velocity` (the
:class:`~reflex_ros.policies.base.PolicyModel` interface every family implements). The prefix
token layout (image tokens, language tokens, one state token; positions that skip padding)
lives in :meth:`FlowPolicy.embed_prefix`, which the fused CUDA-graph path calls too.

Everything is traceable (no data-dependent Python control flow, no ``.item()``), so the same
code is captured in a CUDA graph and exported to ONNX; images arrive as uint8 and are
normalised inside the graph.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from reflex_ros.policies.reference.config import PolicyConfig

# pi0's sinusoidal time embedding periods
TIME_MIN_PERIOD = 4e-3
TIME_MAX_PERIOD = 4.0


class RMSNorm(nn.Module):
    """Gemma RMSNorm with fp32 statistics.

    At run time this is ``F.rms_norm`` (one fused kernel on CUDA instead of ~8 elementwise
    launches, which matters when a chunk is ~4000 small kernels). The ONNX exporter at
    opset 17 has no ``aten::rms_norm``, so while exporting the same math is spelled out.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.onnx.is_in_onnx_export():
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


class GatedMLP(nn.Module):
    """Gemma's gated GELU MLP with gate and up fused into one matmul."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.gelu(gate, approximate="tanh") * up)


class RopeTables:
    """RoPE ``cos`` and sign-folded ``sin`` [B, L, 1, head_dim] in the compute dtype.

    Built once per forward (prefix) or once per chunk (expert), so each layer's rotation is
    four kernels: ``x*cos + swap_halves(x)*sin``, with ``sin = [-sin, sin]`` folding the
    rotate-half negation into the table.
    """

    __slots__ = ("cos", "sin")

    def __init__(self, cos: torch.Tensor, sin: torch.Tensor) -> None:
        self.cos, self.sin = cos, sin


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> RopeTables:
    """Tables for integer ``positions`` [B, L].

    Frequencies are built from arange in fp32 rather than held in a buffer, because a float
    buffer would be rounded to bf16 by ``model.to(bfloat16)`` and shift every rotation.
    """
    half = head_dim // 2
    exponent = torch.arange(half, device=positions.device, dtype=torch.float32) * (2.0 / head_dim)
    # exp(-e * ln theta), not torch.tensor(theta): a host->device copy is illegal inside a CUDA graph capture
    inv_freq = torch.exp(exponent * -math.log(theta))
    freqs = positions.to(torch.float32)[..., None] * inv_freq
    cos, sin = freqs.cos(), freqs.sin()
    cos = torch.cat([cos, cos], dim=-1)[:, :, None, :].to(dtype)
    sin = torch.cat([-sin, sin], dim=-1)[:, :, None, :].to(dtype)
    return RopeTables(cos, sin)


def apply_rope(x: torch.Tensor, rope: RopeTables) -> torch.Tensor:
    """Rotate-half RoPE on ``x`` [B, L, heads, head_dim]."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * rope.cos + torch.cat([x2, x1], dim=-1) * rope.sin


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool keep-mask -> additive float mask (0 / -inf-ish), built once per forward/chunk so
    SDPA does not convert the bool mask again in every layer."""
    neg = torch.finfo(dtype).min
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, neg)


def fold_queries(q: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """[B, Lq, H, d] -> [B, kvh, (H/kvh)*Lq, d]: the query heads that share a KV head become
    extra query rows, so one attention call reads the KV once instead of H/kvh times.

    With one KV head (pi0, every preset) the rows can stay in (token, head) order: attention
    treats query rows independently, so a plain reshape does it and :func:`unfold_output` is a
    view too (no permute copies).
    """
    B, Lq, H, d = q.shape
    if num_kv_heads == 1:
        return q.reshape(B, 1, Lq * H, d)
    rep = H // num_kv_heads
    return q.reshape(B, Lq, num_kv_heads, rep, d).permute(0, 2, 3, 1, 4).reshape(B, num_kv_heads, rep * Lq, d)


def unfold_output(o: torch.Tensor, Lq: int, num_kv_heads: int) -> torch.Tensor:
    """Inverse of :func:`fold_queries` on the attention output -> [B, Lq, H*d]."""
    B, _, rows, d = o.shape
    if num_kv_heads == 1:
        return o.reshape(B, Lq, rows * d // Lq)
    rep = rows // Lq
    return o.reshape(B, num_kv_heads, rep, Lq, d).permute(0, 3, 1, 2, 4).reshape(B, Lq, num_kv_heads * rep * d)


def mqa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, num_kv_heads: int
) -> torch.Tensor:
    """Multi-/grouped-query attention via SDPA (flash / cuDNN kernels) for long query sets.

    ``q`` [B, Lq, H, d]; ``k``/``v`` [B, kvh, S, d]; ``mask`` additive (or bool) broadcastable
    to [B, 1, 1, S] (0 or True = attend). Returns [B, Lq, H*d].
    """
    o = F.scaled_dot_product_attention(fold_queries(q, num_kv_heads), k, v, attn_mask=mask)
    return unfold_output(o, q.shape[1], num_kv_heads)


def small_query_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, num_kv_heads: int
) -> torch.Tensor:
    """Attention as three library calls (GEMM with the mask as its C input, softmax, GEMM) for
    the action expert's few query rows.

    Why not SDPA here: the expert has ~50 tokens x 8 heads = 400 query rows against ~600 keys.
    Fused attention kernels tile over queries, so that is ~7 thread blocks on a 132-SM GPU
    (measured ~37 us per call on an H200, 180 calls per chunk), while two small GEMMs and a
    softmax each fill the GPU. ``bias`` is the additive mask already expanded to
    [B*kvh, (H/kvh)*Lq, S] (built once per chunk in :meth:`FlowPolicy.step_context`).
    """
    B, Lq, H, d = q.shape
    qf = fold_queries(q, num_kv_heads)
    rows, S = qf.shape[2], k.shape[2]
    scores = torch.baddbmm(
        bias, qf.reshape(B * num_kv_heads, rows, d), k.reshape(B * num_kv_heads, S, d).transpose(1, 2),
        alpha=1.0 / math.sqrt(d),
    )
    o = torch.bmm(torch.softmax(scores, dim=-1), v.reshape(B * num_kv_heads, S, d))
    return unfold_output(o.reshape(B, num_kv_heads, rows, d), Lq, num_kv_heads)


# ---------------------------------------------------------------------------------------
# vision
# ---------------------------------------------------------------------------------------


class VisionBlock(nn.Module):
    """Pre-LN ViT block (SigLIP-like): fused QKV, GELU MLP, biases."""

    def __init__(self, width: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.attn_proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width, eps=1e-6)
        self.fc1 = nn.Linear(width, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, W = x.shape
        qkv = self.qkv(self.ln1(x)).reshape(B, L, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        x = x + self.attn_proj(o.transpose(1, 2).reshape(B, L, W))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x)), approximate="tanh"))


def patchify(images_u8: torch.Tensor, patch_size: int, dtype: torch.dtype) -> torch.Tensor:
    """uint8 [B, N, H, W, 3] -> normalised patches [B*N, patches, p*p*3] in ``dtype``.

    uint8 -> [-1, 1] in fp32 (exact), then to the compute dtype, so it runs on the device;
    patchify by reshape (== a stride-p conv, but one plain matmul). Shared by the eager model
    and the fused CUDA-graph path so both see identical pixels."""
    B, N, H, W, C = images_u8.shape
    p = patch_size
    x = (images_u8.to(torch.float32) * (2.0 / 255.0) - 1.0).to(dtype)
    x = x.reshape(B * N, H // p, p, W // p, p, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B * N, (H // p) * (W // p), p * p * C)


class VisionEncoder(nn.Module):
    """uint8 images [B, N, H, W, 3] -> image tokens [B, N*patches, out_width]."""

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        p = cfg.patch_size
        self.patch_embed = nn.Linear(p * p * 3, cfg.vision_width)
        self.pos_emb = nn.Parameter(torch.zeros(cfg.patches_per_image, cfg.vision_width))
        self.blocks = nn.ModuleList(
            VisionBlock(cfg.vision_width, cfg.vision_heads, cfg.vision_mlp_dim) for _ in range(cfg.vision_depth)
        )
        self.post_ln = nn.LayerNorm(cfg.vision_width, eps=1e-6)
        self.proj = nn.Linear(cfg.vision_width, cfg.width)

    def forward(self, images_u8: torch.Tensor) -> torch.Tensor:
        B, N = images_u8.shape[:2]
        x = patchify(images_u8, self.cfg.patch_size, self.patch_embed.weight.dtype)
        x = self.patch_embed(x) + self.pos_emb
        for block in self.blocks:
            x = block(x)
        x = self.proj(self.post_ln(x))
        return x.reshape(B, N * x.shape[1], x.shape[2])


# ---------------------------------------------------------------------------------------
# prefix transformer and action expert
# ---------------------------------------------------------------------------------------


class DecoderLayer(nn.Module):
    """One Gemma-like layer; used by the prefix (``width``) and the expert (``expert_width``).

    Both share head geometry so the expert's queries can attend to the prefix's keys.
    """

    def __init__(self, width: int, mlp_dim: int, cfg: PolicyConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.input_norm = RMSNorm(width)
        self.qkv = nn.Linear(width, (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, width, bias=False)
        self.post_norm = RMSNorm(width)
        self.mlp = GatedMLP(width, mlp_dim)

    def project_qkv(self, x: torch.Tensor, rope: RopeTables) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [B,L,H,d] and k, v [B,kvh,L,d]; q and k rotated in one pass (they are adjacent
        in the fused projection)."""
        B, L, _ = x.shape
        H, kvh, d = self.num_heads, self.num_kv_heads, self.head_dim
        qk, v = self.qkv(self.input_norm(x)).split([(H + kvh) * d, kvh * d], dim=-1)
        qk = apply_rope(qk.reshape(B, L, H + kvh, d), rope)
        q, k = qk.split([H, kvh], dim=2)
        return q, k.transpose(1, 2), v.reshape(B, L, kvh, d).transpose(1, 2)

    def finish(
        self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
        small_queries: bool = False,
    ) -> torch.Tensor:
        """Attention over (k, v) and the MLP, both residual. ``small_queries`` selects
        :func:`small_query_attention` (``mask`` is then its expanded bias)."""
        attend = small_query_attention if small_queries else mqa_attention
        x = x + self.o_proj(attend(q, k, v, mask, self.num_kv_heads))
        return x + self.mlp(self.post_norm(x))


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """pi0's sinusoidal embedding of the flow time ``t`` [B] -> [B, dim] (fp32)."""
    half = dim // 2
    fraction = torch.arange(half, device=t.device, dtype=torch.float32) / max(half - 1, 1)
    period = TIME_MIN_PERIOD * (TIME_MAX_PERIOD / TIME_MIN_PERIOD) ** fraction
    angle = t.to(torch.float32)[:, None] * (2.0 * math.pi / period)[None, :]
    return torch.cat([angle.sin(), angle.cos()], dim=-1)


class ExpertContext:
    """Per-chunk constants of the expert, computed once from the prefix mask and shared by
    every denoising step instead of being rebuilt per step: the RoPE tables of the action
    positions and ``mask``, the additive attention bias expanded to the folded query rows
    [B*kvh, (H/kvh)*chunk, P+chunk] that :func:`small_query_attention` takes as GEMM input."""

    __slots__ = ("rope", "mask")

    def __init__(self, rope: RopeTables, mask: torch.Tensor) -> None:
        self.rope, self.mask = rope, mask


class FlowPolicy(nn.Module):
    """The reference policy. See the module docstring; sizes come from :class:`PolicyConfig`."""

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vision = VisionEncoder(cfg)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.width)
        self.state_proj = nn.Linear(cfg.max_state_dim, cfg.width)
        self.layers = nn.ModuleList(DecoderLayer(cfg.width, cfg.mlp_dim, cfg) for _ in range(cfg.depth))
        ew = cfg.expert_width
        self.action_in = nn.Linear(cfg.action_dim, ew)
        self.time_mlp_in = nn.Linear(2 * ew, ew)
        self.time_mlp_out = nn.Linear(ew, ew)
        self.expert_layers = nn.ModuleList(DecoderLayer(ew, cfg.expert_mlp_dim, cfg) for _ in range(cfg.depth))
        self.expert_norm = RMSNorm(ew)
        self.action_out = nn.Linear(ew, cfg.action_dim)

    @property
    def dtype(self) -> torch.dtype:
        return self.action_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.action_in.weight.device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- the PolicyModel interface ------------------------------------------------------
    prefix_input_names: tuple[str, ...] = ("images", "lang_tokens", "lang_masks", "state")
    expert_input_names: tuple[str, ...] = ()

    def kv_shapes(self, batch: int | str) -> list[tuple[int | str, ...]]:
        """Each layer's K and V: [B, kv_heads, prefix_len, head_dim] (K after RoPE)."""
        c = self.cfg
        return [(batch, c.num_kv_heads, c.prefix_len, c.head_dim)] * (2 * c.depth)

    # -- prefix: once per chunk ----------------------------------------------------------
    def embed_prefix(
        self, image_tokens: torch.Tensor, lang_tokens: torch.Tensor, lang_masks: torch.Tensor, state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The prefix token layout: ``[image tokens | language tokens | state token]``.

        Returns the embedded tokens [B, P, width], the keep mask bool [B, P] (padded language
        tokens are False) and the positions [B, P] (pi0: the count of valid tokens before each
        one, so pads don't advance RoPE). The one place this layout is defined: the eager
        model and the fused path both call it. ``image_tokens`` may have batch 1 under CFG
        (both slots share their images).
        """
        cfg = self.cfg
        dtype = self.dtype
        B = lang_tokens.shape[0]
        if image_tokens.shape[0] != B:
            image_tokens = image_tokens.expand(B, -1, -1)
        lang = self.embed_tokens(lang_tokens) * math.sqrt(cfg.width)
        st = self.state_proj(state.to(dtype))[:, None, :]
        x = torch.cat([image_tokens, lang.to(dtype), st], dim=1)
        lang_masks = lang_masks.to(torch.bool)
        always = torch.ones_like(lang_masks[:, :1])
        keep = torch.cat([always.expand(-1, image_tokens.shape[1]), lang_masks, always], dim=1)
        positions = torch.cumsum(keep.to(torch.int64), dim=-1) - 1
        return x, keep, positions

    def prefix(
        self, images: torch.Tensor, lang_tokens: torch.Tensor, lang_masks: torch.Tensor, state: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per-layer prefix K/V and the prefix mask.

        images uint8 [B,N,H,W,3]; lang_tokens int64 [B,L]; lang_masks bool [B,L];
        state float [B, max_state_dim]. Returns the flat list ``[k_0, v_0, k_1, v_1, ...]``,
        each [B, kvh, P, head_dim] (K after RoPE), and the prefix mask bool [B, P].
        """
        cfg = self.cfg
        x, mask, positions = self.embed_prefix(self.vision(images), lang_tokens, lang_masks, state)
        rope = rope_tables(positions, cfg.head_dim, cfg.rope_theta, self.dtype)
        attn_mask = additive_mask(mask[:, None, None, :], self.dtype)
        kv: list[torch.Tensor] = []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            q, k, v = layer.project_qkv(x, rope)
            kv += [k, v]
            if i < last:  # the last layer's attention output and MLP feed nothing: skip them
                x = layer.finish(x, q, k, v, attn_mask)
        return kv, mask

    # -- velocity: once per denoising step -----------------------------------------------
    def step_context(self, prefix_mask: torch.Tensor) -> ExpertContext:
        """RoPE tables and attention mask for the action tokens (positions continue after the
        valid prefix tokens; padded prefix keys masked; action tokens see each other)."""
        cfg = self.cfg
        prefix_mask = prefix_mask.to(torch.bool)
        n_valid = prefix_mask.to(torch.int64).sum(dim=-1, keepdim=True)
        steps = torch.arange(cfg.chunk_size, device=prefix_mask.device, dtype=torch.int64)
        rope = rope_tables(n_valid + steps[None, :], cfg.head_dim, cfg.rope_theta, self.dtype)
        own = torch.ones_like(prefix_mask[:, :1]).expand(-1, cfg.chunk_size)
        keep = torch.cat([prefix_mask, own], dim=1)  # [B, S]
        B, S = keep.shape
        rows = cfg.num_heads // cfg.num_kv_heads * cfg.chunk_size
        bias = additive_mask(keep, self.dtype)[:, None, None, :].expand(B, cfg.num_kv_heads, rows, S)
        return ExpertContext(rope, bias.reshape(B * cfg.num_kv_heads, rows, S).contiguous())

    def velocity(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        kv: list[torch.Tensor],
        prefix_mask: torch.Tensor,
        context: ExpertContext | None = None,
    ) -> torch.Tensor:
        """Velocity ``v_t`` [B, chunk, action_dim] (float32) at flow time ``t`` [B].

        ``context`` (from :meth:`step_context`) may be passed to skip rebuilding the
        per-chunk constants at every step; it is optional so the exported per-step graph
        keeps the simple (x_t, t, KV, mask) signature.
        """
        ctx = context if context is not None else self.step_context(prefix_mask)
        dtype = self.dtype
        ew = self.cfg.expert_width
        a = self.action_in(x_t.to(dtype))
        temb = time_embedding(t, ew).to(dtype)[:, None, :].expand(-1, a.shape[1], -1)
        h = self.time_mlp_out(F.silu(self.time_mlp_in(torch.cat([a, temb], dim=-1))))
        for i, layer in enumerate(self.expert_layers):
            q, k, v = layer.project_qkv(h, ctx.rope)
            keys = torch.cat([kv[2 * i], k], dim=2)
            values = torch.cat([kv[2 * i + 1], v], dim=2)
            h = layer.finish(h, q, keys, values, ctx.mask, small_queries=True)
        return self.action_out(self.expert_norm(h)).to(torch.float32)


# ---------------------------------------------------------------------------------------
# seeded init
# ---------------------------------------------------------------------------------------

_RESIDUAL_OUT = ("o_proj", "down", "attn_proj", "fc2")


@torch.no_grad()
def init_weights(model: FlowPolicy, seed: int) -> FlowPolicy:
    """Deterministic, depth-aware random init (the same seed gives the same weights on the
    same device type).

    Matrices get std ``1/sqrt(fan_in)`` so every projection keeps unit scale; projections
    that write into a residual stream are further scaled by ``1/sqrt(2*depth)`` so the stream
    grows only ~sqrt(2) over the 27-layer vision tower or the 18-layer LM (no blow-up, no
    NaN in bf16). Norm gains are 1, biases 0.
    """
    cfg = model.cfg
    device = model.device
    gen = torch.Generator(device=device)
    gen.manual_seed(int(cfg.seed))
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        parent = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else ""
        if leaf == "bias":
            p.zero_()
        elif p.ndim == 1:  # RMSNorm / LayerNorm gains
            p.fill_(1.0)
        elif name == "embed_tokens.weight":
            p.normal_(0.0, 1.0 / math.sqrt(cfg.width), generator=gen)  # x sqrt(width) -> unit scale
        elif name == "vision.pos_emb":
            p.normal_(0.0, 1.0 / math.sqrt(cfg.vision_width), generator=gen)
        else:
            std = 1.0 / math.sqrt(p.shape[1])
            if parent in _RESIDUAL_OUT:
                depth = cfg.vision_depth if name.startswith("vision.") else cfg.depth
                std /= math.sqrt(2.0 * depth)
            p.normal_(0.0, std, generator=gen)
    return model


def create_policy(cfg: PolicyConfig, device: str | torch.device = "cpu") -> FlowPolicy:
    """Build a seeded :class:`FlowPolicy` directly on ``device`` in fp32, in eval mode.

    Parameters are created on the meta device and materialised once on ``device``, so the
    3 B-parameter pi0 preset is allocated once and initialised by the device's RNG (seconds on
    a GPU) instead of being default-initialised on the CPU first.
    """
    with torch.device("meta"):
        model = FlowPolicy(cfg)
    model = model.to_empty(device=device)
    init_weights(model, cfg.seed)
    return model.eval().requires_grad_(False)
