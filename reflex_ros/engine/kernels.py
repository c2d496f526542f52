"""Fused GPU kernels for flow-matching VLA building blocks, each with a plain-torch twin.

The ops a transformer layer at batch 1-2 spends its time launching (RoPE + K/V write,
small-query attention with key splits, residual add + RMSNorm / LayerNorm, gated GELU, the
Euler/CFG update) as single Triton kernels on CUDA. Every op also has a ``torch`` backend that
spells the same math in plain torch, so the CPU tests run whole fast paths through them and
the GPU proof checks each Triton kernel against its twin. Family fast paths (e.g.
``policies/reference/fused.py``) assemble these; the kernels know nothing about a model.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

try:  # Triton ships with CUDA builds of torch; CPU-only installs run the torch backend
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None

HAVE_TRITON = triton is not None
#: key-axis padding of the K/V buffer (aligned rows for GEMM fallbacks and vector loads)
KEY_ALIGN = 16
#: additive bias of a masked key (fp32; exp underflows to exactly 0, never NaN)
MASKED = -1.0e30
BACKENDS = ("triton", "torch")



def default_backend(device: torch.device) -> str:
    """``triton`` on CUDA when Triton imports, else ``torch``. ``REFLEX_FUSED_BACKEND``
    overrides (e.g. ``triton`` on a CPU with ``TRITON_INTERPRET=1`` to check the kernels)."""
    forced = os.environ.get("REFLEX_FUSED_BACKEND")
    if forced:
        if forced not in BACKENDS:
            raise ValueError(f"REFLEX_FUSED_BACKEND={forced!r}; expected one of {BACKENDS}")
        return forced
    return "triton" if (HAVE_TRITON and device.type == "cuda") else "torch"


# ---------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------

if HAVE_TRITON:

    @triton.jit
    def _rope_qkv_kernel(qkv_ptr, cos_ptr, sin_ptr, q_ptr, k_ptr, v_ptr, L, H, kv_bstride,
                         D: tl.constexpr, HALF: tl.constexpr):
        # one program per (token, head slot); slots 0..H-1 are query heads, H is k, H+1 is v
        tok = tl.program_id(0)
        h = tl.program_id(1)
        b = tok // L
        t = tok - b * L
        offs = tl.arange(0, D)
        src = qkv_ptr + tok * ((H + 2) * D) + h * D
        x = tl.load(src + offs).to(tl.float32)
        if h == H + 1:
            tl.store(v_ptr + b * kv_bstride + t * D + offs, x.to(v_ptr.dtype.element_ty))
        else:
            xs = tl.load(src + (offs + HALF) % D).to(tl.float32)  # halves swapped
            c = tl.load(cos_ptr + tok * D + offs)
            s = tl.load(sin_ptr + tok * D + offs)  # sign-folded: [-sin, sin]
            y = x * c + xs * s
            if h == H:
                tl.store(k_ptr + b * kv_bstride + t * D + offs, y.to(k_ptr.dtype.element_ty))
            else:
                tl.store(q_ptr + (tok * H + h) * D + offs, y.to(q_ptr.dtype.element_ty))

    @triton.jit
    def _attention_kernel(q_ptr, k_ptr, v_ptr, bias_ptr, o_ptr, part_ptr, ml_ptr, cnt_ptr, lim_ptr, R, scale,
                          q_bstride, kv_bstride, bias_bstride, rows_per_tok, o_kvh, o_outer, o_head, o_group,
                          o_tok, n_keys: tl.constexpr,
                          D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          SPLIT: tl.constexpr, KEYS_PER_SPLIT: tl.constexpr, INLINE: tl.constexpr,
                          PRECISION: tl.constexpr, LIMIT: tl.constexpr = False):
        # rows of one batch element attend to its first n_keys keys (one shared KV head);
        # with SPLIT > 1 each program takes one slice of the keys (flash-decoding) and writes
        # its normalised partial output and (max, sum); the slices are merged by
        # _attention_combine_kernel, or (INLINE) by the last program of each row block to
        # finish, found with an atomic counter that it resets for the next call. Output row r
        # of batch b goes to _out_rows (q's layout, or token-major over folded KV heads)
        pid = tl.program_id(0)
        split = tl.program_id(1)
        b = tl.program_id(2)
        rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        rmask = rows < R
        cols = tl.arange(0, D)
        o_rows = _out_rows(b, rows, o_kvh, o_outer, o_head, o_group, o_tok, D)
        q = tl.load(q_ptr + b * q_bstride + rows[:, None] * D + cols[None, :], mask=rmask[:, None], other=0.0)
        if LIMIT:  # row r (token r // rows_per_tok) sees keys [0, lim[token]) only (causal blocks)
            lim = tl.load(lim_ptr + rows // rows_per_tok, mask=rmask, other=0)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, D], tl.float32)
        kbase = k_ptr + b * kv_bstride
        vbase = v_ptr + b * kv_bstride
        lo = split * KEYS_PER_SPLIT
        for j in range(0, KEYS_PER_SPLIT, BLOCK_N):
            keys = lo + j + tl.arange(0, BLOCK_N)
            kmask = keys < n_keys
            k = tl.load(kbase + keys[:, None] * D + cols[None, :], mask=kmask[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
            kb = tl.load(bias_ptr + b * bias_bstride + keys, mask=kmask, other=-1.0e30)
            s = s + kb[None, :]
            if LIMIT:
                s = tl.where(keys[None, :] < lim[:, None], s, -1.0e30)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.exp(s - m_new[:, None])
            alpha = tl.exp(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(vbase + keys[:, None] * D + cols[None, :], mask=kmask[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new
        out = acc / tl.maximum(l_i, 1e-30)[:, None]
        if SPLIT == 1:
            tl.store(o_ptr + o_rows[:, None] + cols[None, :], out.to(o_ptr.dtype.element_ty), mask=rmask[:, None])
        else:
            part = (b * SPLIT + split) * R
            tl.store(part_ptr + (part + rows[:, None]) * D + cols[None, :], out, mask=rmask[:, None])
            tl.store(ml_ptr + 2 * part + rows, m_i, mask=rmask)
            tl.store(ml_ptr + 2 * part + R + rows, l_i, mask=rmask)
            if INLINE:
                tl.debug_barrier()  # every thread's partial stores precede the release below
                counter = cnt_ptr + b * tl.num_programs(0) + pid
                done = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
                if done == SPLIT - 1:  # the last slice of this row block: merge all of them
                    _merge_splits(part_ptr, ml_ptr, o_ptr, b, rows, rmask, cols, R, o_rows, D, BLOCK_M, SPLIT)
                    tl.atomic_xchg(counter, 0, sem="relaxed", scope="gpu")

    @triton.jit
    def _out_rows(b, rows, o_kvh, o_outer, o_head, o_group, o_tok, D: tl.constexpr):
        # element offset of each output row: batch b = (outer, KV head) and row = (token, group
        # member); q's own layout is o_kvh = o_group = 1, o_outer = q's batch stride, o_tok = D
        return (b // o_kvh) * o_outer + (b % o_kvh) * o_head + (rows // o_group) * o_tok + (rows % o_group) * D

    @triton.jit
    def _merge_splits(part_ptr, ml_ptr, o_ptr, b, rows, rmask, cols, R, o_rows, D: tl.constexpr,
                      BLOCK_M: tl.constexpr, SPLIT: tl.constexpr):
        # softmax-weighted merge of SPLIT normalised partials (L2 reads: written by other SMs)
        m = tl.full([BLOCK_M], float("-inf"), tl.float32)
        for s in tl.static_range(SPLIT):
            part = (b * SPLIT + s) * R
            m = tl.maximum(m, tl.load(ml_ptr + 2 * part + rows, mask=rmask, other=0.0, cache_modifier=".cg"))
        num = tl.zeros([BLOCK_M, D], tl.float32)
        den = tl.zeros([BLOCK_M], tl.float32)
        for s in tl.static_range(SPLIT):
            part = (b * SPLIT + s) * R
            ms = tl.load(ml_ptr + 2 * part + rows, mask=rmask, other=0.0, cache_modifier=".cg")
            ls = tl.load(ml_ptr + 2 * part + R + rows, mask=rmask, other=0.0, cache_modifier=".cg")
            w = ls * tl.exp(ms - m)
            o = tl.load(part_ptr + (part + rows[:, None]) * D + cols[None, :], mask=rmask[:, None], other=0.0,
                        cache_modifier=".cg")
            num += w[:, None] * o
            den += w
        out = num / tl.maximum(den, 1e-30)[:, None]
        tl.store(o_ptr + o_rows[:, None] + cols[None, :], out.to(o_ptr.dtype.element_ty), mask=rmask[:, None])

    @triton.jit
    def _attention_combine_kernel(part_ptr, ml_ptr, o_ptr, R, o_kvh, o_outer, o_head, o_group, o_tok,
                                  D: tl.constexpr, BLOCK_M: tl.constexpr, SPLIT: tl.constexpr):
        pid = tl.program_id(0)
        b = tl.program_id(1)
        rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        o_rows = _out_rows(b, rows, o_kvh, o_outer, o_head, o_group, o_tok, D)
        _merge_splits(part_ptr, ml_ptr, o_ptr, b, rows, rows < R, tl.arange(0, D), R, o_rows, D, BLOCK_M, SPLIT)

    @triton.jit
    def _add_rmsnorm_kernel(h_ptr, y_ptr, w_ptr, xn_ptr, N, eps, BLOCK: tl.constexpr):
        # h += y (in place, the residual stream); xn = RMSNorm(h) * w (fp32 statistics)
        row = tl.program_id(0)
        col = tl.arange(0, BLOCK)
        m = col < N
        h = tl.load(h_ptr + row * N + col, mask=m, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + row * N + col, mask=m, other=0.0).to(tl.float32)
        hq = (h + y).to(h_ptr.dtype.element_ty)
        tl.store(h_ptr + row * N + col, hq, mask=m)
        hf = hq.to(tl.float32)  # normalise the stored (rounded) stream, as the reference does
        r = 1.0 / tl.sqrt(tl.sum(hf * hf, 0) / N + eps)
        w = tl.load(w_ptr + col, mask=m, other=0.0).to(tl.float32)
        tl.store(xn_ptr + row * N + col, (hf * r * w).to(xn_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _gelu_mul_kernel(gu_ptr, out_ptr, Fdim, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        col = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = col < Fdim
        g = tl.load(gu_ptr + row * 2 * Fdim + col, mask=m, other=0.0).to(tl.float32)
        u = tl.load(gu_ptr + row * 2 * Fdim + Fdim + col, mask=m, other=0.0).to(tl.float32)
        z = 0.7978845608028654 * (g + 0.044715 * g * g * g)
        th = 2.0 / (1.0 + tl.exp(-2.0 * z)) - 1.0  # tanh(z), saturating cleanly at +-1
        y = 0.5 * g * (1.0 + th) * u
        tl.store(out_ptr + row * Fdim + col, y.to(out_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _add_layernorm_kernel(x_ptr, y_ptr, b_ptr, w_ptr, lb_ptr, xn_ptr, N, eps, BLOCK: tl.constexpr):
        # x += y + b (in place, the residual stream); xn = LayerNorm(x) * w + lb
        row = tl.program_id(0)
        col = tl.arange(0, BLOCK)
        m = col < N
        x = tl.load(x_ptr + row * N + col, mask=m, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + row * N + col, mask=m, other=0.0).to(tl.float32)
        bb = tl.load(b_ptr + col, mask=m, other=0.0).to(tl.float32)
        hq = (x + (y + bb)).to(x_ptr.dtype.element_ty)
        tl.store(x_ptr + row * N + col, hq, mask=m)
        h = hq.to(tl.float32)  # normalise the stored (rounded) stream, as the reference does
        mean = tl.sum(h, 0) / N
        d = tl.where(m, h - mean, 0.0)
        r = 1.0 / tl.sqrt(tl.sum(d * d, 0) / N + eps)
        w = tl.load(w_ptr + col, mask=m, other=0.0).to(tl.float32)
        lb = tl.load(lb_ptr + col, mask=m, other=0.0).to(tl.float32)
        tl.store(xn_ptr + row * N + col, (d * r * w + lb).to(xn_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _euler_kernel(x_ptr, v_ptr, beta_ptr, dt, n, CFG: tl.constexpr, BLOCK: tl.constexpr):
        # x += dt * v, v = v_u + beta (v_c - v_u) with CFG (v rows: [cond | uncond])
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = i < n
        x = tl.load(x_ptr + i, mask=m, other=0.0)
        if CFG:
            vc = tl.load(v_ptr + i, mask=m, other=0.0).to(tl.float32)
            vu = tl.load(v_ptr + n + i, mask=m, other=0.0).to(tl.float32)
            beta = tl.load(beta_ptr)
            v = vu + beta * (vc - vu)
        else:
            v = tl.load(v_ptr + i, mask=m, other=0.0).to(tl.float32)
        tl.store(x_ptr + i, x + dt * v, mask=m)


    # -- kernels for the LeRobot families (grouped-query heads, norm variants, SiLU, fp8) ------

    @triton.jit
    def _rope_heads_kernel(x_ptr, cos_ptr, sin_ptr, q_ptr, k_ptr, v_ptr, L, G, KVH, row_stride,
                           kv_bstride, kv_hstride, D: tl.constexpr, HALF: tl.constexpr):
        # one program per (token, head slot): slots [0, H) query heads (H = KVH * G), then KVH
        # key heads, then KVH value heads. Queries are written folded per KV head, row
        # (token * G + g) of head kv, so each KV head's queries form one attention batch.
        tok = tl.program_id(0)
        s = tl.program_id(1)
        b = tok // L
        t = tok - b * L
        H = KVH * G
        offs = tl.arange(0, D)
        src = x_ptr + tok * row_stride + s * D
        x = tl.load(src + offs).to(tl.float32)
        if s >= H + KVH:
            j = s - H - KVH
            tl.store(v_ptr + b * kv_bstride + j * kv_hstride + t * D + offs, x.to(v_ptr.dtype.element_ty))
        else:
            xs = tl.load(src + (offs + HALF) % D).to(tl.float32)  # halves swapped
            c = tl.load(cos_ptr + tok * D + offs)
            sn = tl.load(sin_ptr + tok * D + offs)  # sign-folded: [-sin, sin]
            y = x * c + xs * sn
            if s >= H:
                j = s - H
                tl.store(k_ptr + b * kv_bstride + j * kv_hstride + t * D + offs, y.to(k_ptr.dtype.element_ty))
            else:
                kv = s // G
                g = s - kv * G
                tl.store(q_ptr + ((b * KVH + kv) * L * G + t * G + g) * D + offs, y.to(q_ptr.dtype.element_ty))

    @triton.jit
    def _residual_norm_kernel(h_ptr, y_ptr, gate_ptr, gain_ptr, shift_ptr, xn_ptr, xs_ptr, N, eps,
                              HAS_Y: tl.constexpr, HAS_GATE: tl.constexpr, HAS_SHIFT: tl.constexpr,
                              FP8: tl.constexpr, BLOCK: tl.constexpr):
        # h += y (* gate) in place (the residual stream, rounded to its dtype); then
        # xn = RMSNorm(h) * gain (+ shift) with fp32 statistics; FP8: xn as e4m3 with a per-row scale
        row = tl.program_id(0)
        col = tl.arange(0, BLOCK)
        m = col < N
        h = tl.load(h_ptr + row * N + col, mask=m, other=0.0).to(tl.float32)
        if HAS_Y:
            y = tl.load(y_ptr + row * N + col, mask=m, other=0.0).to(tl.float32)
            if HAS_GATE:
                y = y * tl.load(gate_ptr + col, mask=m, other=0.0).to(tl.float32)
            hq = (h + y).to(h_ptr.dtype.element_ty)
            tl.store(h_ptr + row * N + col, hq, mask=m)
            h = hq.to(tl.float32)  # normalise the stored (rounded) stream, as the model does
        r = 1.0 / tl.sqrt(tl.sum(h * h, 0) / N + eps)
        out = h * r * tl.load(gain_ptr + col, mask=m, other=0.0).to(tl.float32)
        if HAS_SHIFT:
            out = out + tl.load(shift_ptr + col, mask=m, other=0.0).to(tl.float32)
        if FP8:
            sc = tl.maximum(tl.max(tl.abs(tl.where(m, out, 0.0)), 0) / 448.0, 1e-12)
            q = tl.minimum(tl.maximum(out / sc, -448.0), 448.0)
            tl.store(xn_ptr + row * N + col, q.to(xn_ptr.dtype.element_ty), mask=m)
            tl.store(xs_ptr + row, sc)
        else:
            tl.store(xn_ptr + row * N + col, out.to(xn_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _act(g, ACT: tl.constexpr):
        if ACT == 0:  # GELU, tanh approximation
            z = 0.7978845608028654 * (g + 0.044715 * g * g * g)
            th = 2.0 / (1.0 + tl.exp(-2.0 * z)) - 1.0  # tanh(z), saturating cleanly at +-1
            a = 0.5 * g * (1.0 + th)
        else:  # SiLU
            a = g / (1.0 + tl.exp(-g))
        return a

    @triton.jit
    def _gated_act_kernel(gu_ptr, out_ptr, Fdim, ACT: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        col = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = col < Fdim
        g = tl.load(gu_ptr + row * 2 * Fdim + col, mask=m, other=0.0).to(tl.float32)
        u = tl.load(gu_ptr + row * 2 * Fdim + Fdim + col, mask=m, other=0.0).to(tl.float32)
        y = _act(g, ACT) * u
        tl.store(out_ptr + row * Fdim + col, y.to(out_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _gated_act_fp8_kernel(gu_ptr, out_ptr, xs_ptr, Fdim: tl.constexpr, ACT: tl.constexpr, BLOCK: tl.constexpr):
        # one program per row: pass 1 finds the row's amax of act(gate) * up, pass 2 recomputes
        # (the row is L2-resident) and writes e4m3 with the per-row scale
        row = tl.program_id(0)
        amax = tl.zeros([BLOCK], tl.float32)
        for c0 in range(0, Fdim, BLOCK):
            col = c0 + tl.arange(0, BLOCK)
            m = col < Fdim
            g = tl.load(gu_ptr + row * 2 * Fdim + col, mask=m, other=0.0).to(tl.float32)
            u = tl.load(gu_ptr + row * 2 * Fdim + Fdim + col, mask=m, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.abs(_act(g, ACT) * u))
        sc = tl.maximum(tl.max(amax, 0) / 448.0, 1e-12)
        tl.store(xs_ptr + row, sc)
        for c0 in range(0, Fdim, BLOCK):
            col = c0 + tl.arange(0, BLOCK)
            m = col < Fdim
            g = tl.load(gu_ptr + row * 2 * Fdim + col, mask=m, other=0.0).to(tl.float32)
            u = tl.load(gu_ptr + row * 2 * Fdim + Fdim + col, mask=m, other=0.0).to(tl.float32)
            q = tl.minimum(tl.maximum(_act(g, ACT) * u / sc, -448.0), 448.0)
            tl.store(out_ptr + row * Fdim + col, q.to(out_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _quant_rows_kernel(x_ptr, q_ptr, xs_ptr, N: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        amax = tl.zeros([BLOCK], tl.float32)
        for c0 in range(0, N, BLOCK):
            col = c0 + tl.arange(0, BLOCK)
            x = tl.load(x_ptr + row * N + col, mask=col < N, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.abs(x))
        sc = tl.maximum(tl.max(amax, 0) / 448.0, 1e-12)
        tl.store(xs_ptr + row, sc)
        for c0 in range(0, N, BLOCK):
            col = c0 + tl.arange(0, BLOCK)
            m = col < N
            x = tl.load(x_ptr + row * N + col, mask=m, other=0.0).to(tl.float32)
            q = tl.minimum(tl.maximum(x / sc, -448.0), 448.0)
            tl.store(q_ptr + row * N + col, q.to(q_ptr.dtype.element_ty), mask=m)


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


# ---------------------------------------------------------------------------------------
# the fused ops, each with a torch twin
# ---------------------------------------------------------------------------------------


class FusedOps:
    """The fused ops on one backend. Shapes are documented on the torch spelling."""

    def __init__(self, backend: str = "torch", attn_blocks: dict[str, tuple[int, ...]] | None = None,
                 inline_combine: bool = True) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r}; expected one of {BACKENDS}")
        if backend == "triton" and not HAVE_TRITON:
            raise RuntimeError("the triton backend needs the triton package")
        self.backend = backend
        # attention (BLOCK_M, BLOCK_N, num_warps, num_stages, key splits) by query-row class,
        # from benchmarks/gpu_fused.py on an H200: the expert's 400 rows x 611 keys need key
        # splits to fill the GPU (18.3 us unsplit -> 8.7 us in 5 slices); the prefix's 4488
        # rows x 561 keys do not (28-31 us for any split, vs 39 us for SDPA)
        self.attn_blocks = {"small": (16, 128, 8, 2, 5), "large": (64, 32, 4, 2, 1)}
        if attn_blocks:
            self.attn_blocks.update(attn_blocks)
        self.inline_combine = inline_combine
        self._counters: torch.Tensor | None = None

    def counters(self, device: torch.device) -> torch.Tensor:
        """Zeroed int32 arrival counters of the inline split merge (every call leaves them
        zero again). Made on first use, which is the warm-up before any graph capture."""
        if self._counters is None or self._counters.device != device:
            self._counters = torch.zeros(4096, dtype=torch.int32, device=device)
        return self._counters

    # qkv [B*L, (H+2)*D] -> q_out [B, L*H, D] (rotated), k_dst/v_dst [B, L, D] views (row stride D)
    def rope_qkv(self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, q_out: torch.Tensor,
                 k_dst: torch.Tensor, v_dst: torch.Tensor, L: int, H: int) -> None:
        B, D = q_out.shape[0], q_out.shape[-1]
        if self.backend == "triton":
            assert qkv.is_contiguous() and cos.is_contiguous() and sin.is_contiguous() and q_out.is_contiguous()
            assert k_dst.stride()[1:] == (D, 1) and k_dst.stride() == v_dst.stride()
            _rope_qkv_kernel[(B * L, H + 2)](qkv, cos, sin, q_out, k_dst, v_dst, L, H, k_dst.stride(0),
                                             D=D, HALF=D // 2, num_warps=max(1, min(4, D // 128)))
            return
        x = qkv.view(B, L, H + 2, D)
        qk = x[:, :, : H + 1].to(cos.dtype)
        half = D // 2
        rot = qk * cos[:, :, None] + torch.cat([qk[..., half:], qk[..., :half]], dim=-1) * sin[:, :, None]
        q_out.view(B, L, H, D).copy_(rot[:, :, :H])
        k_dst.copy_(rot[:, :, H])
        v_dst.copy_(x[:, :, H + 1])

    # q [B, R, D]; k, v [B, >=n_keys, D] (row stride D); bias [B, >=n_keys] fp32 -> [B, R, D]
    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                  n_keys: int, out: torch.Tensor | None = None, tok_limit: torch.Tensor | None = None,
                  rows_per_tok: int = 1, scale: float | None = None,
                  fold: tuple[int, int] | None = None) -> torch.Tensor:
        """``out`` (optional, contiguous like q) receives the result.

        ``tok_limit`` (int32 [R // rows_per_tok], shared by the batch): query row ``r`` sees only
        keys ``< tok_limit[r // rows_per_tok]`` besides the key bias; this is how LeRobot's
        block-causal masks (a cumulative sum over static per-token flags, so every row sees a
        prefix of the keys) reach the kernel. ``scale`` defaults to ``1 / sqrt(D)``.

        ``fold=(kv_heads, group)``: q is ``[B * kv_heads, L * group, D]`` (grouped-query heads
        folded per KV head) and the result is written token-major, ``[B * L, kv_heads * group
        * D]`` (the o-projection's input, heads in model order), which saves the copy that
        would reorder it (one kernel per layer). Returned in that shape."""
        B, R, D = q.shape
        scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
        if fold is not None:
            kvh, group = (int(f) for f in fold)
            if B % kvh or R % group:
                raise ValueError(f"fold {fold} does not divide q {tuple(q.shape)}")
            shape = (B // kvh * (R // group), kvh * group * D)
            if out is None:
                out = torch.empty(shape, dtype=q.dtype, device=q.device)
            elif out.numel() != q.numel() or not out.is_contiguous():
                raise ValueError(f"out {tuple(out.shape)} cannot take the folded {shape}")
            out = out.view(shape)
        if self.backend == "triton":
            assert q.is_contiguous()
            out = torch.empty_like(q) if out is None else out
            self._launch_attention(out, k, v, bias, n_keys, q=q, tok_limit=tok_limit, rows_per_tok=rows_per_tok,
                                   scale=scale, fold=fold)
            return out
        kk, vv = k[:, :n_keys], v[:, :n_keys]
        full = bias[:, None, :n_keys].to(q.dtype).expand(B, R, n_keys)
        if tok_limit is not None:
            rows = torch.arange(R, device=q.device) // rows_per_tok
            hidden = torch.arange(n_keys, device=q.device)[None, :] >= tok_limit.to(torch.int64)[rows][:, None]
            full = full.masked_fill(hidden[None], MASKED)
        scores = torch.baddbmm(full, q, kk.transpose(1, 2), alpha=scale)
        res = torch.bmm(torch.softmax(scores, dim=-1), vv)
        if fold is not None:
            kvh, group = fold
            src = res.view(B // kvh, kvh, R // group, group, D).permute(0, 2, 1, 3, 4)
            out.view(B // kvh, R // group, kvh, group, D).copy_(src)
            return out
        return res if out is None else out.copy_(res)

    def _launch_attention(self, out: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                          n_keys: int, q: torch.Tensor, tok_limit: torch.Tensor | None = None,
                          rows_per_tok: int = 1, scale: float | None = None,
                          fold: tuple[int, int] | None = None) -> None:
        B, R, D = q.shape
        assert out.is_contiguous() and out.numel() == q.numel()
        assert k.stride()[1:] == (D, 1) and k.stride() == v.stride()
        if fold is None:  # q's layout: row r of batch b at b * R * D + r * D
            o_layout = (1, R * D, 0, 1, D)
        else:  # token-major over the folded heads: [B // kvh, L, kvh, group, D]
            kvh, group = (int(f) for f in fold)
            o_layout = (kvh, R * kvh * D, group * D, group, kvh * group * D)
        bm, bn, warps, stages, split = self.attn_blocks["large" if R >= 2048 else "small"]
        if out.dtype == torch.float32:  # fp32 tiles are twice the bytes: halve the key block
            bn, stages = min(bn, 32), 1
        rblocks = triton.cdiv(R, bm)
        n_blocks = triton.cdiv(n_keys, bn)
        split = max(1, min(split, n_blocks))
        per_split = triton.cdiv(n_blocks, split) * bn
        split = triton.cdiv(n_keys, per_split)
        prec = "ieee" if out.dtype == torch.float32 else "tf32"
        counters = self.counters(out.device)
        inline = self.inline_combine and B * rblocks <= counters.numel()
        part = ml = out
        if split > 1:
            part = torch.empty((B, split, R, D), dtype=torch.float32, device=out.device)
            ml = torch.empty((B, split, 2, R), dtype=torch.float32, device=out.device)
        scale = 1.0 / math.sqrt(D) if scale is None else scale
        if tok_limit is not None:
            assert tok_limit.dtype == torch.int32 and tok_limit.is_contiguous()
        _attention_kernel[(rblocks, split, B)](
            q, k, v, bias, out, part, ml, counters, tok_limit if tok_limit is not None else counters, R, scale,
            q.stride(0), k.stride(0), bias.stride(0), int(rows_per_tok), *o_layout, n_keys=int(n_keys), D=D, BLOCK_M=bm,
            BLOCK_N=bn, SPLIT=split, KEYS_PER_SPLIT=per_split, INLINE=inline, PRECISION=prec,
            LIMIT=tok_limit is not None, num_warps=warps, num_stages=stages)
        if split > 1 and not inline:
            cbm = 16
            _attention_combine_kernel[(triton.cdiv(R, cbm), B)](part, ml, out, R, *o_layout, D=D, BLOCK_M=cbm,
                                                                 SPLIT=split, num_warps=4)

    # h [M, N] += y (in place); returns RMSNorm(h) with norm's gain
    def add_rmsnorm(self, h: torch.Tensor, y: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor:
        M, N = h.shape
        if self.backend == "triton":
            assert h.is_contiguous() and y.is_contiguous()
            xn = torch.empty_like(h)
            _add_rmsnorm_kernel[(M,)](h, y, norm.weight, xn, N, float(norm.eps), BLOCK=_pow2(N),
                                      num_warps=4 if N <= 2048 else 8)
            return xn
        h.add_(y)
        return F.rms_norm(h, (N,), norm.weight, norm.eps)

    # gu [M, 2F] ([gate | up]) -> gelu_tanh(gate) * up [M, F]
    def gelu_mul(self, gu: torch.Tensor) -> torch.Tensor:
        M, F2 = gu.shape
        Fd = F2 // 2
        if self.backend == "triton":
            out = torch.empty((M, Fd), dtype=gu.dtype, device=gu.device)
            block = min(1024, _pow2(Fd))
            _gelu_mul_kernel[(M, triton.cdiv(Fd, block))](gu, out, Fd, BLOCK=block, num_warps=4)
            return out
        gate, up = gu.chunk(2, dim=-1)
        return F.gelu(gate, approximate="tanh") * up

    # x [M, N] += y [M, N] + b [N] (in place); returns LayerNorm(x) with ln's weight/bias
    def add_layernorm(self, x: torch.Tensor, y: torch.Tensor, b: torch.Tensor, ln: torch.nn.LayerNorm) -> torch.Tensor:
        M, N = x.shape
        if self.backend == "triton":
            xn = torch.empty_like(x)
            _add_layernorm_kernel[(M,)](x, y, b, ln.weight, ln.bias, xn, N, ln.eps, BLOCK=_pow2(N),
                                        num_warps=4 if N <= 2048 else 8)
            return xn
        x.add_(y + b)
        return F.layer_norm(x, (N,), ln.weight, ln.bias, ln.eps)

    # GELU(x @ w.T + b), tanh approximation (cuBLASLt epilogue on CUDA)
    def linear_gelu(self, x: torch.Tensor, lin: torch.nn.Linear) -> torch.Tensor:
        if self.backend == "triton" and x.is_cuda:
            return torch._addmm_activation(lin.bias, x, lin.weight.t(), use_gelu=True)
        return F.gelu(F.linear(x, lin.weight, lin.bias), approximate="tanh")

    # x [1, C, A] fp32 (in place) += dt * v, v [B*C, A] (CFG: [cond; uncond], beta 0-d fp32)
    def euler(self, x: torch.Tensor, v: torch.Tensor, dt: float, beta: torch.Tensor | None) -> None:
        n = x.numel()
        if self.backend == "triton":
            block = 1024
            _euler_kernel[(triton.cdiv(n, block),)](x, v, beta if beta is not None else x, float(dt), n,
                                                    CFG=beta is not None, BLOCK=block, num_warps=4)
            return
        vf = v.to(torch.float32).view(-1, *x.shape[1:])
        if beta is not None:
            v_cond, v_uncond = vf[0:1], vf[1:2]
            vf = v_uncond + beta * (v_cond - v_uncond)
        x.copy_(x + dt * vf)



    # -- ops for the LeRobot families' fast path (policies/lerobot/fused.py) -------------------

    # x [B*L, row_stride] ([H q | KVH k | KVH v] heads of D, or [H q] only when k_dst is None);
    # cos/sin [B, L, D] fp32 sign-folded -> q_out [B, KVH, L*G, D] (folded per KV head, row
    # t*G + g), k_dst/v_dst [B, KVH, L, D] views (row stride D) of a K/V buffer
    def rope_heads(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, q_out: torch.Tensor,
                   k_dst: torch.Tensor | None, v_dst: torch.Tensor | None, L: int, G: int, KVH: int) -> None:
        B, D = q_out.shape[0], q_out.shape[-1]
        H = KVH * G
        slots = H + (2 * KVH if k_dst is not None else 0)
        if self.backend == "triton":
            assert x.is_contiguous() and cos.is_contiguous() and sin.is_contiguous() and q_out.is_contiguous()
            assert x.shape[-1] == slots * D
            kd = k_dst if k_dst is not None else q_out
            vd = v_dst if v_dst is not None else q_out
            if k_dst is not None:
                assert kd.stride()[2:] == (D, 1) and kd.stride() == vd.stride()
                kb, kh = kd.stride(0), kd.stride(1)
            else:
                kb = kh = 0
            _rope_heads_kernel[(B * L, slots)](x, cos, sin, q_out, kd, vd, L, G, KVH, slots * D, kb, kh,
                                               D=D, HALF=D // 2, num_warps=max(1, min(4, D // 128)))
            return
        xs = x.view(B, L, slots, D)
        n_rot = H + (KVH if k_dst is not None else 0)
        qk = xs[:, :, :n_rot].to(cos.dtype)
        half = D // 2
        rot = qk * cos[:, :, None] + torch.cat([qk[..., half:], qk[..., :half]], dim=-1) * sin[:, :, None]
        if G > 0:  # G == 0: a K/V-only layer
            q_out.view(B, KVH, L, G, D).copy_(rot[:, :, :H].reshape(B, L, KVH, G, D).permute(0, 2, 1, 3, 4))
        if k_dst is not None and v_dst is not None:
            k_dst.copy_(rot[:, :, H:].transpose(1, 2))
            v_dst.copy_(xs[:, :, n_rot:].transpose(1, 2))

    # h [M, N] (+= y * gate, in place); returns RMSNorm(h) * gain (+ shift): gain/shift/gate [N]
    # (fp32 gain = the norm's effective scale: Gemma 1 + w, Llama w, AdaRMS 1 + scale); with
    # fp8 the result is (e4m3 [M, N], fp32 per-row scales [M])
    def residual_norm(self, h: torch.Tensor, y: torch.Tensor | None, gain: torch.Tensor, eps: float,
                      gate: torch.Tensor | None = None, shift: torch.Tensor | None = None,
                      fp8: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        M, N = h.shape
        if self.backend == "triton":
            assert h.is_contiguous() and (y is None or y.is_contiguous())
            xn = torch.empty((M, N), dtype=FP8_DTYPE if fp8 else h.dtype, device=h.device)
            xs = torch.empty((M,), dtype=torch.float32, device=h.device) if fp8 else gain
            _residual_norm_kernel[(M,)](h, y if y is not None else h, gate if gate is not None else gain, gain,
                                        shift if shift is not None else gain, xn, xs, N, float(eps),
                                        HAS_Y=y is not None, HAS_GATE=gate is not None, HAS_SHIFT=shift is not None,
                                        FP8=fp8, BLOCK=_pow2(N), num_warps=4 if N <= 2048 else 8)
            return (xn, xs) if fp8 else xn
        if y is not None:
            h.add_(y * gate.to(h.dtype) if gate is not None else y)
        hf = h.to(torch.float32)
        out = hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps) * gain
        if shift is not None:
            out = out + shift
        return quantize_rows_torch(out) if fp8 else out.to(h.dtype)

    # gu [M, 2F] ([gate | up]) -> act(gate) * up [M, F] (act: "gelu_tanh" or "silu"); with fp8
    # (e4m3 [M, F], fp32 per-row scales [M])
    def gated_act(self, gu: torch.Tensor, act: str, fp8: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        M, F2 = gu.shape
        Fd = F2 // 2
        code = ACTIVATIONS.index(act)
        if self.backend == "triton":
            assert gu.is_contiguous()
            if fp8:
                out = torch.empty((M, Fd), dtype=FP8_DTYPE, device=gu.device)
                xs = torch.empty((M,), dtype=torch.float32, device=gu.device)
                _gated_act_fp8_kernel[(M,)](gu, out, xs, Fd, ACT=code, BLOCK=min(2048, _pow2(Fd)), num_warps=8)
                return out, xs
            out = torch.empty((M, Fd), dtype=gu.dtype, device=gu.device)
            block = min(1024, _pow2(Fd))
            _gated_act_kernel[(M, triton.cdiv(Fd, block))](gu, out, Fd, ACT=code, BLOCK=block, num_warps=4)
            return out
        gate, up = gu.chunk(2, dim=-1)
        a = (F.gelu(gate, approximate="tanh") if code == 0 else F.silu(gate)) * up
        return quantize_rows_torch(a) if fp8 else a

    # x [M, N] -> (e4m3 [M, N], fp32 per-row scales [M]): scale = amax(|row|) / 448
    def quant_rows(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        M, N = x.shape
        if self.backend == "triton":
            assert x.is_contiguous()
            q = torch.empty((M, N), dtype=FP8_DTYPE, device=x.device)
            xs = torch.empty((M,), dtype=torch.float32, device=x.device)
            _quant_rows_kernel[(M,)](x, q, xs, N, BLOCK=min(2048, _pow2(N)), num_warps=8)
            return q, xs
        return quantize_rows_torch(x)


#: the gated-MLP activations :meth:`FusedOps.gated_act` knows (Gemma, Llama)
ACTIVATIONS = ("gelu_tanh", "silu")
#: fp8 storage type of weights and activations (OCP e4m3, max 448)
FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0


def quantize_rows_torch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric e4m3 quantization in plain torch: ``(q [M, N], scale [M])`` with
    ``x ~= q * scale[:, None]``; the kernels' twin and the reference of the fp8 tests."""
    xf = x.to(torch.float32)
    scale = (xf.abs().amax(dim=-1) / FP8_MAX).clamp(min=1e-12)
    q = (xf / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale
