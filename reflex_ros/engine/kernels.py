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
    def _attention_kernel(q_ptr, k_ptr, v_ptr, bias_ptr, o_ptr, part_ptr, ml_ptr, cnt_ptr, R, scale,
                          q_bstride, kv_bstride, bias_bstride, n_keys: tl.constexpr,
                          D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          SPLIT: tl.constexpr, KEYS_PER_SPLIT: tl.constexpr, INLINE: tl.constexpr,
                          PRECISION: tl.constexpr):
        # rows of one batch element attend to its first n_keys keys (one shared KV head);
        # with SPLIT > 1 each program takes one slice of the keys (flash-decoding) and writes
        # its normalised partial output and (max, sum); the slices are merged by
        # _attention_combine_kernel, or (INLINE) by the last program of each row block to
        # finish, found with an atomic counter that it resets for the next call
        pid = tl.program_id(0)
        split = tl.program_id(1)
        b = tl.program_id(2)
        rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        rmask = rows < R
        cols = tl.arange(0, D)
        q = tl.load(q_ptr + b * q_bstride + rows[:, None] * D + cols[None, :], mask=rmask[:, None], other=0.0)
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
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.exp(s - m_new[:, None])
            alpha = tl.exp(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(vbase + keys[:, None] * D + cols[None, :], mask=kmask[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new
        out = acc / tl.maximum(l_i, 1e-30)[:, None]
        if SPLIT == 1:
            tl.store(o_ptr + b * q_bstride + rows[:, None] * D + cols[None, :], out.to(o_ptr.dtype.element_ty),
                     mask=rmask[:, None])
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
                    _merge_splits(part_ptr, ml_ptr, o_ptr, b, rows, rmask, cols, R, q_bstride, D, BLOCK_M, SPLIT)
                    tl.atomic_xchg(counter, 0, sem="relaxed", scope="gpu")

    @triton.jit
    def _merge_splits(part_ptr, ml_ptr, o_ptr, b, rows, rmask, cols, R, q_bstride, D: tl.constexpr,
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
        tl.store(o_ptr + b * q_bstride + rows[:, None] * D + cols[None, :], out.to(o_ptr.dtype.element_ty),
                 mask=rmask[:, None])

    @triton.jit
    def _attention_combine_kernel(part_ptr, ml_ptr, o_ptr, R, q_bstride, D: tl.constexpr,
                                  BLOCK_M: tl.constexpr, SPLIT: tl.constexpr):
        pid = tl.program_id(0)
        b = tl.program_id(1)
        rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        _merge_splits(part_ptr, ml_ptr, o_ptr, b, rows, rows < R, tl.arange(0, D), R, q_bstride, D, BLOCK_M, SPLIT)

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
                  n_keys: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """``out`` (optional, contiguous like q) receives the result."""
        B, R, D = q.shape
        if self.backend == "triton":
            assert q.is_contiguous()
            out = torch.empty_like(q) if out is None else out
            self._launch_attention(out, k, v, bias, n_keys, q=q)
            return out
        kk, vv = k[:, :n_keys], v[:, :n_keys]
        scores = torch.baddbmm(bias[:, None, :n_keys].to(q.dtype).expand(B, R, n_keys), q, kk.transpose(1, 2),
                               alpha=1.0 / math.sqrt(D))
        res = torch.bmm(torch.softmax(scores, dim=-1), vv)
        return res if out is None else out.copy_(res)

    def _launch_attention(self, out: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                          n_keys: int, q: torch.Tensor) -> None:
        B, R, D = out.shape
        assert out.is_contiguous() and k.stride()[1:] == (D, 1) and k.stride() == v.stride()
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
        _attention_kernel[(rblocks, split, B)](
            q, k, v, bias, out, part, ml, counters, R, 1.0 / math.sqrt(D), out.stride(0), k.stride(0),
            bias.stride(0), n_keys=int(n_keys), D=D, BLOCK_M=bm, BLOCK_N=bn, SPLIT=split, KEYS_PER_SPLIT=per_split,
            INLINE=inline, PRECISION=prec, num_warps=warps, num_stages=stages)
        if split > 1 and not inline:
            cbm = 16
            _attention_combine_kernel[(triton.cdiv(R, cbm), B)](part, ml, out, R, out.stride(0), D=D, BLOCK_M=cbm,
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


