"""The fused ops the LeRobot fast path adds (engine/kernels.py) and the fp8 math (engine/fp8.py).

The torch spellings are checked against the LeRobot models' own ops (that is what makes the
fast path's CPU parity meaningful); the Triton kernels against the torch spellings, on a
CUDA GPU or on the CPU with ``TRITON_INTERPRET=1`` (Triton installed).
"""

from __future__ import annotations

import os

import pytest
import torch

from reflex_ros.engine.fp8 import (
    FP8_MIN_COSINE,
    Fp8Weight,
    PrecisionRejectedError,
    check_chunk_cosine,
    dequantize,
    fp8_capable,
    fp8_linear,
    fp8_shape_ok,
    quantize_weight,
    require_fp8,
)
from reflex_ros.engine.kernels import FP8_DTYPE, MASKED, FusedOps, quantize_rows_torch
from reflex_ros.engine.types import ProviderUnavailableError
from reflex_ros.policies.lerobot.attention import attend, make_att_2d_masks
from reflex_ros.policies.lerobot.decoder_layers import AdaRMSNorm, GemmaRMSNorm, LlamaRMSNorm
from reflex_ros.policies.lerobot.fused import folded_tables, limits_from_ar
from reflex_ros.policies.lerobot.rope import RotaryEmbedding

CUDA = torch.cuda.is_available()
TRITON_OK = CUDA or os.environ.get("TRITON_INTERPRET") == "1"
needs_triton = pytest.mark.skipif(not TRITON_OK, reason="Triton kernels need a CUDA GPU (or TRITON_INTERPRET=1)")


def gen(seed: int = 0, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


# -- torch twins == the models' own ops ------------------------------------------------------


@pytest.mark.parametrize("style", ["gemma", "smolvla"])
def test_rope_heads_twin_matches_model_rope(style: str) -> None:
    """Folded GQA queries and the K/V written into a buffer slot equal the model's rotate()."""
    g = gen()
    B, L, KVH, G, D, S = 2, 5, 2, 3, 16, 24
    H = KVH * G
    rope = RotaryEmbedding(D, 10000.0, style)
    pos = torch.arange(L)[None].expand(B, L) + torch.tensor([[3], [7]])
    x = torch.randn(B * L, (H + 2 * KVH) * D, generator=g)
    cos, sin = folded_tables(rope, pos)
    q = torch.empty(B, KVH, L * G, D)
    kb, vb = torch.zeros(B, KVH, S, D), torch.zeros(B, KVH, S, D)
    FusedOps("torch").rope_heads(x, cos, sin, q, kb[:, :, 4:4 + L], vb[:, :, 4:4 + L], L, G, KVH)
    c, s = rope.angles(pos)
    xs = x.view(B, L, H + 2 * KVH, D).transpose(1, 2)  # [B, heads, L, D]
    want_q = rope.rotate(xs[:, :H], c, s)  # [B, H, L, D]
    got_q = q.view(B, KVH, L, G, D).permute(0, 1, 3, 2, 4).reshape(B, H, L, D)
    assert torch.equal(got_q, want_q)
    assert torch.equal(kb[:, :, 4:4 + L], rope.rotate(xs[:, H:H + KVH], c, s))
    assert torch.equal(vb[:, :, 4:4 + L], xs[:, H + KVH:])
    assert not kb[:, :, :4].any() and not kb[:, :, 4 + L:].any()


def test_attention_twin_matches_lerobot_masks() -> None:
    """Key bias + per-token key limit == LeRobot's 2-D boolean masks (pad + cumsum(ar) blocks),
    grouped-query heads included."""
    g = gen(1)
    B, KVH, G, D = 2, 2, 3, 16
    P, Ls = 7, 4  # prefix keys, then a suffix whose first token is its own block (pi0's state)
    n = P + Ls
    pad = torch.ones(B, n, dtype=torch.bool)
    pad[0, 2:4] = False
    ar = torch.tensor([0] * P + [1, 1, 0, 0]).expand(B, n)
    mask = make_att_2d_masks(pad, ar)[:, P:]  # the suffix rows
    q = torch.randn(B, KVH * G, Ls, D, generator=g)
    k, v = torch.randn(B, KVH, n, D, generator=g), torch.randn(B, KVH, n, D, generator=g)
    want = attend(q, k, v, mask, D**-0.5, G)  # [B, Ls, H*D]
    S = 16
    kb, vb = torch.zeros(B, KVH, S, D), torch.zeros(B, KVH, S, D)
    kb[:, :, :n], vb[:, :, :n] = k, v
    bias = torch.full((B, KVH, S), MASKED)
    bias[:, :, :n] = torch.where(pad, 0.0, MASKED)[:, None, :]
    lim = torch.tensor(limits_from_ar([1, 1, 0, 0], offset=P), dtype=torch.int32)
    assert lim.tolist() == [P + 1, n, n, n]
    qf = q.view(B, KVH, G, Ls, D).transpose(2, 3).reshape(B * KVH, Ls * G, D)
    o = FusedOps("torch").attention(qf, kb.view(B * KVH, S, D), vb.view(B * KVH, S, D), bias.view(B * KVH, S), n,
                                    tok_limit=lim, rows_per_tok=G, scale=D**-0.5)
    got = o.view(B, KVH, Ls, G, D).permute(0, 2, 1, 3, 4).reshape(B, Ls, KVH * G * D)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_limits_from_ar() -> None:
    assert limits_from_ar([0, 0, 0]) is None  # bidirectional
    assert limits_from_ar([0, 0, 1]) == [2, 2, 3]  # SmolVLA's prefix: the state token last
    assert limits_from_ar([1, 1, 1], offset=5) == [6, 7, 8]  # causal actions after a prefix
    assert limits_from_ar([1, 0, 0], offset=5) is None  # pi0.5's suffix


@pytest.mark.parametrize("kind", ["gemma", "llama", "adarms"])
def test_residual_norm_twin_matches_model_norms(kind: str) -> None:
    g = gen(2)
    M, N = 6, 32
    h0, y = torch.randn(M, N, generator=g), torch.randn(M, N, generator=g)
    ops = FusedOps("torch")
    if kind == "adarms":
        norm = AdaRMSNorm(N, 8, 1e-6)
        torch.nn.init.normal_(norm.dense.weight, generator=g)
        cond = torch.randn(1, 8, generator=g)
        gate = torch.rand(N, generator=g)
        want_h = h0 + y * gate
        want, _ = norm(want_h[None], cond)
        scale, shift, _ = norm.dense(cond)[0].chunk(3)
        h = h0.clone()
        got = ops.residual_norm(h, y, 1.0 + scale, norm.eps, gate=gate, shift=shift)
        want = want[0]
    else:
        norm = GemmaRMSNorm(N, 1e-6) if kind == "gemma" else LlamaRMSNorm(N, 1e-5)
        torch.nn.init.normal_(norm.weight, generator=g)
        want_h = h0 + y
        want = norm(want_h)
        gain = (1.0 + norm.weight) if kind == "gemma" else norm.weight.detach()
        h = h0.clone()
        got = ops.residual_norm(h, y, gain, norm.eps)
    assert torch.equal(h, want_h)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("act", ["gelu_tanh", "silu"])
def test_gated_act_twin(act: str) -> None:
    from reflex_ros.policies.lerobot.decoder_layers import GatedMLP

    g = gen(3)
    mlp = GatedMLP(16, 24, act)
    x = torch.randn(5, 16, generator=g)
    gu = torch.cat([mlp.gate_proj(x), mlp.up_proj(x)], dim=-1)
    got = torch.nn.functional.linear(FusedOps("torch").gated_act(gu, act), mlp.down_proj.weight)
    torch.testing.assert_close(got, mlp(x), rtol=1e-6, atol=1e-6)


# -- fp8 math (CPU) ------------------------------------------------------------------------------


def test_weight_quantization_per_output_channel() -> None:
    g = gen(4)
    w = torch.randn(48, 64, generator=g) * torch.logspace(-5, 1, 48)[:, None]  # rows of very different scale
    q, s = quantize_weight(w)
    assert q.dtype == FP8_DTYPE and s.shape == (48,) and s.dtype == torch.float32
    assert float(q.float().abs().amax(dim=1).min()) == 448.0  # every row uses the full e4m3 range
    rel = (dequantize(q, s) - w).abs().amax(dim=1) / w.abs().amax(dim=1)
    assert float(rel.max()) <= 2.0**-4  # e4m3: 3 mantissa bits -> half-ulp 1/16 at the top binade
    # a per-tensor scale would flush the small rows: per-channel keeps each row's precision
    qt = (w / (w.abs().max() / 448)).to(FP8_DTYPE).float() * (w.abs().max() / 448)
    assert float(((qt - w).abs().amax(dim=1) / w.abs().amax(dim=1))[0]) > 0.5


def test_activation_quantization_per_row() -> None:
    g = gen(5)
    x = torch.randn(7, 32, generator=g)
    x[3] *= 1e-3
    q, s = quantize_rows_torch(x)
    assert q.shape == x.shape and s.shape == (7,)
    torch.testing.assert_close(s, x.abs().amax(dim=1) / 448.0)
    assert float(((dequantize(q, s) - x).abs().amax(dim=1) / x.abs().amax(dim=1)).max()) <= 2.0**-4
    z, zs = quantize_rows_torch(torch.zeros(2, 16))  # an all-zero row: finite scale, zero codes
    assert torch.isfinite(zs).all() and not z.float().any()


def test_fp8_linear_matches_float_reference() -> None:
    """(Xq s_x)(Wq s_w)^T + b against the float product: the error is the two quantizations'."""
    g = gen(6)
    M, K, N = 9, 64, 32
    x, w, b = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g) / 8, torch.randn(N, generator=g)
    xq, xs = quantize_rows_torch(x)
    fw = Fp8Weight.from_weight(w, b)
    y = fp8_linear(xq, xs, fw, torch.float32, backend="torch")
    exact = x @ w.t() + b
    deq = dequantize(xq, xs) @ dequantize(fw.q, fw.scale).t() + b
    torch.testing.assert_close(y, deq, rtol=1e-6, atol=1e-6)  # the kernel's math, exactly
    cos = torch.nn.functional.cosine_similarity(y.flatten(), exact.flatten(), dim=0)
    assert float(cos) > 0.998 and float((y - exact).abs().max()) < 0.1 * float(exact.abs().max())
    assert fw.nbytes == N * K + 4 * N
    assert fp8_shape_ok(32, 64) and not fp8_shape_ok(50, 64) and not fp8_shape_ok(32, 40)


def test_fp8_refused_without_a_capable_gpu() -> None:
    ok, why = fp8_capable("cpu")
    assert not ok and "compute capability >= 8.9" in why
    with pytest.raises(ProviderUnavailableError, match="bf16"):
        require_fp8("cpu")


def test_chunk_cosine_gate() -> None:
    import numpy as np

    class Fake:
        class info:  # noqa: N801 - attribute bag like EngineInfo
            dtype = "fp8"

        def __init__(self, out: np.ndarray) -> None:
            self.out = out

        def infer(self, obs, nfe, cfg_beta, noise):  # noqa: ANN001, ANN201
            class R:
                actions = self.out
            return R()

    ref = np.linspace(-1, 1, 20, dtype=np.float32).reshape(4, 5)
    assert check_chunk_cosine(Fake(ref * 2), [ref], [(None, None)], nfe=10) == pytest.approx(1.0)
    noisy = ref + np.random.default_rng(0).standard_normal(ref.shape).astype(np.float32)
    with pytest.raises(PrecisionRejectedError, match=str(FP8_MIN_COSINE)):
        check_chunk_cosine(Fake(noisy), [ref], [(None, None)], nfe=10)


# -- Triton kernels == torch twins -------------------------------------------------------------


@needs_triton
def test_triton_lerobot_kernels_match_torch_twins() -> None:
    pytest.importorskip("triton")
    dev = "cuda" if CUDA else "cpu"
    g = gen(7, dev)
    tri, ref = FusedOps("triton"), FusedOps("torch")
    B, L, KVH, G, D, S = 2, 5, 2, 3, 16, 32
    H = KVH * G
    x = torch.randn(B * L, (H + 2 * KVH) * D, generator=g, device=dev)
    ang = torch.rand(B, L, D // 2, generator=g, device=dev) * 10
    cos, sin = torch.cat([ang.cos()] * 2, -1).contiguous(), torch.cat([-ang.sin(), ang.sin()], -1).contiguous()
    outs = []
    for ops in (tri, ref):
        q = torch.zeros(B, KVH, L * G, D, device=dev)
        kb, vb = torch.zeros(B, KVH, S, D, device=dev), torch.zeros(B, KVH, S, D, device=dev)
        ops.rope_heads(x, cos, sin, q, kb[:, :, 3:3 + L], vb[:, :, 3:3 + L], L, G, KVH)
        q2 = torch.zeros(B, KVH, L * G, D, device=dev)  # query-only rows (SmolVLA cross layers)
        ops.rope_heads(x[:, : H * D].contiguous(), cos, sin, q2, None, None, L, G, KVH)
        ko, vo = torch.zeros(B, KVH, S, D, device=dev), torch.zeros(B, KVH, S, D, device=dev)  # K/V-only rows
        ops.rope_heads(x[:, H * D:].contiguous(), cos, sin, torch.empty(B, KVH, 0, D, device=dev),
                       ko[:, :, :L], vo[:, :, :L], L, 0, KVH)
        outs.append((q, kb, vb, q2, ko, vo))
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    # attention with a per-token key limit over grouped heads, split and unsplit
    n = 3 + L
    bias = torch.zeros(B * KVH, S, device=dev)
    bias[0, 1] = MASKED
    lim = torch.tensor([4, 8, 6, 8, 5], dtype=torch.int32, device=dev)
    k, v = torch.randn(B * KVH, S, D, generator=g, device=dev), torch.randn(B * KVH, S, D, generator=g, device=dev)
    qf = outs[1][0].view(B * KVH, L * G, D)
    want = ref.attention(qf, k, v, bias, n, tok_limit=lim, rows_per_tok=G, scale=0.3)
    # fold: the same rows written token-major over the heads ([B * L, KVH * G * D], heads in
    # model order h = kvh * G + g), the o-projection's input
    want_fold = want.view(B, KVH, L, G, D).permute(0, 2, 1, 3, 4).reshape(B * L, H * D)
    torch.testing.assert_close(ref.attention(qf, k, v, bias, n, tok_limit=lim, rows_per_tok=G, scale=0.3,
                                             fold=(KVH, G)), want_fold, rtol=0, atol=0)
    for split in (1, 2):
        for inline in (True, False):
            ops = FusedOps("triton", attn_blocks={"small": (16, 16, 4, 2, split)}, inline_combine=inline)
            got = ops.attention(qf, k, v, bias, n, tok_limit=lim, rows_per_tok=G, scale=0.3)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
            out = torch.full((B * L + 3, H * D), 9.0, device=dev)  # a padded buffer, as the o_proj input is
            folded = ops.attention(qf, k, v, bias, n, tok_limit=lim, rows_per_tok=G, scale=0.3, out=out[: B * L],
                                   fold=(KVH, G))
            assert folded.data_ptr() == out.data_ptr() and folded.shape == (B * L, H * D)
            torch.testing.assert_close(out[: B * L], want_fold, rtol=0, atol=1e-5)
            assert bool((out[B * L:] == 9.0).all())  # nothing written past the rows
    with pytest.raises(ValueError, match="fold"):
        ref.attention(qf, k, v, bias, n, fold=(KVH + 1, G))
    # residual norm: plain, gated + shifted, fp8 out
    M, N = 6, 48
    h0, y = torch.randn(M, N, generator=g, device=dev), torch.randn(M, N, generator=g, device=dev)
    gain, shift, gate = (torch.rand(N, generator=g, device=dev) + 0.5 for _ in range(3))
    for kw in ({}, {"gate": gate, "shift": shift}):
        ha, hb = h0.clone(), h0.clone()
        torch.testing.assert_close(tri.residual_norm(ha, y, gain, 1e-6, **kw), ref.residual_norm(hb, y, gain, 1e-6, **kw),
                                   rtol=0, atol=1e-5)
        torch.testing.assert_close(ha, hb, rtol=0, atol=1e-6)
    xa = tri.residual_norm(h0.clone(), None, gain, 1e-6, fp8=True)
    xb = ref.residual_norm(h0.clone(), None, gain, 1e-6, fp8=True)
    torch.testing.assert_close(xa[1], xb[1], rtol=1e-6, atol=0)
    assert xa[0].dtype == FP8_DTYPE
    # the interpreter's fp32 -> e4m3 cast is not round-to-nearest (124.3 -> 64); the GPU's is,
    # so the codes are compared there (one e4m3 step of slack for 1-ulp differences of rsqrt)
    if CUDA:
        torch.testing.assert_close(dequantize(*xa), dequantize(*xb), rtol=0, atol=float(xb[1].max()) * 32)
    # gated activations, bf16-like and fp8 out
    gu = torch.randn(4, 2 * 40, generator=g, device=dev)
    for act in ("gelu_tanh", "silu"):
        torch.testing.assert_close(tri.gated_act(gu, act), ref.gated_act(gu, act), rtol=0, atol=1e-5)
        qa, qb = tri.gated_act(gu, act, fp8=True), ref.gated_act(gu, act, fp8=True)
        torch.testing.assert_close(qa[1], qb[1], rtol=1e-5, atol=0)
        if CUDA:
            torch.testing.assert_close(dequantize(*qa), dequantize(*qb), rtol=0, atol=float(qb[1].max()) * 32)
    xq = torch.randn(3, 40, generator=g, device=dev)
    qa, qb = tri.quant_rows(xq), ref.quant_rows(xq)
    torch.testing.assert_close(qa[1], qb[1], rtol=1e-6, atol=0)
    assert qa[0].dtype == FP8_DTYPE
    if CUDA:
        torch.testing.assert_close(dequantize(*qa), dequantize(*qb), rtol=0, atol=float(qb[1].max()) * 32)


@pytest.mark.skipif(not CUDA, reason="fp8 GEMMs run on a CUDA GPU")
def test_cuda_fp8_linear_matches_dequantized_product() -> None:
    ok, why = fp8_capable("cuda")
    if not ok:
        pytest.skip(why)
    g = gen(8, "cuda")
    for M in (50, 560):
        x = torch.randn(M, 1024, generator=g, device="cuda", dtype=torch.bfloat16)
        w = (torch.randn(2048, 1024, generator=g, device="cuda") / 32).to(torch.bfloat16)
        fw = Fp8Weight.from_weight(w)
        xq, xs = FusedOps("triton").quant_rows(x)
        y = fp8_linear(xq, xs, fw, torch.bfloat16, backend="triton")
        deq = fp8_linear(xq, xs, fw, torch.float32, backend="torch")
        assert fw.mode in ("rowwise", "tensorwise")
        torch.testing.assert_close(y.float(), deq, rtol=2e-2, atol=2e-2)
