"""Issue 6, the fused CUDA Graph path on the GPU, in one process:

1. each Triton kernel against its torch twin (reflex_ros.engine.kernels.FusedOps) at pi0 shapes,
   bf16 and fp32 (relative max error);
2. attention block-size sweep at pi0's two attention shapes, against the reference's
   attention (graph-captured x50, so the number includes the in-graph launch gap);
3. pi0 latency: fused graph vs reference graph (same process), NFE 10, batch 1, and CFG;
4. where the fused chunk's time goes: torch profiler over one prefix and one denoise replay,
   kernels grouped by kind.

Run on the GPU machine:  PYTHONPATH=. python3 benchmarks/gpu_fused.py [--iters N] [--skip-sweep]
Writes the report to stdout and, if $OUT is set, to $OUT/gpu_fused.txt.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from reflex_ros.engine.gpu_timing import graph_us

LINES: list[str] = []


def say(text: str = "") -> None:
    print(text, flush=True)
    LINES.append(text)




def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# -- 1. kernels vs torch twins ------------------------------------------------------------


def check_kernels() -> None:
    from reflex_ros.engine.kernels import MASKED, FusedOps

    tri, ref = FusedOps("triton"), FusedOps("torch")
    dev = "cuda"
    say(f"{'kernel':<34}{'dtype':>7}{'rel max err':>14}")
    for dt in (torch.bfloat16, torch.float32):
        g = torch.Generator(device=dev).manual_seed(0)

        def rnd(*shape, dtype=dt, gen=g):
            return torch.randn(*shape, generator=gen, device=dev, dtype=torch.float32).to(dtype)

        name = "bf16" if dt == torch.bfloat16 else "fp32"
        H, D, S = 8, 256, 624
        for label, B, L in (("rope_qkv expert B2 L50", 2, 50), ("rope_qkv prefix B1 L561", 1, 561)):
            qkv = rnd(B * L, (H + 2) * D)
            ang = torch.rand(B, L, D // 2, generator=g, device=dev) * 100
            cos = torch.cat([ang.cos(), ang.cos()], -1).contiguous()
            sin = torch.cat([-ang.sin(), ang.sin()], -1).contiguous()
            outs = []
            for ops in (tri, ref):
                q = torch.full((B, L * H, D), float("nan"), device=dev, dtype=dt)
                kb = torch.full((B, S, D), float("nan"), device=dev, dtype=dt)
                vb = torch.full((B, S, D), float("nan"), device=dev, dtype=dt)
                ops.rope_qkv(qkv, cos, sin, q, kb[:, 3:3 + L], vb[:, 3:3 + L], L, H)
                outs.append(torch.cat([q.flatten(), kb[:, 3:3 + L].flatten(), vb[:, 3:3 + L].flatten()]))
            say(f"{label:<34}{name:>7}{rel(outs[0], outs[1]):>14.2e}")
        for label, B, R, n in (("attention expert B2 R400 n611", 2, 400, 611),
                               ("attention prefix B1 R4488 n561", 1, 4488, 561)):
            q = rnd(B, R, D)
            k, v = rnd(B, S, D), rnd(B, S, D)
            bias = torch.zeros(B, S, device=dev)
            bias[:, 500:520] = MASKED
            bias[:, n:] = MASKED
            a = tri.attention(q, k, v, bias, n)
            b = ref.attention(q.float(), k.float(), v.float(), bias, n)
            say(f"{label:<34}{name:>7}{rel(a, b):>14.2e}")
        for label, M, Fd in (("gelu_mul prefix 561x16384", 561, 16384), ("gelu_mul expert 100x4096", 100, 4096)):
            gu = rnd(M, 2 * Fd)
            say(f"{label:<34}{name:>7}{rel(tri.gelu_mul(gu), ref.gelu_mul(gu.float())):>14.2e}")
        ln = torch.nn.LayerNorm(1152, eps=1e-6).to(dev, dt)
        with torch.no_grad():
            ln.weight.normal_()
            ln.bias.normal_()
        x0, y, b = rnd(512, 1152), rnd(512, 1152), rnd(1152)
        xa, xb = x0.clone(), x0.float().clone()
        lnf = torch.nn.LayerNorm(1152, eps=1e-6).to(dev)
        lnf.load_state_dict({k: t.float() for k, t in ln.state_dict().items()})
        na, nb = tri.add_layernorm(xa, y, b, ln), ref.add_layernorm(xb, y.float(), b.float(), lnf)
        say(f"{'add_layernorm 512x1152 (x, xn)':<34}{name:>7}{max(rel(xa, xb), rel(na, nb)):>14.2e}")
        lin = torch.nn.Linear(1152, 4304).to(dev, dt)
        xx = rnd(512, 1152)
        with torch.no_grad():
            want = F.gelu(F.linear(xx.float(), lin.weight.float(), lin.bias.float()), approximate="tanh")
            say(f"{'linear_gelu 512x1152x4304 (tanh)':<34}{name:>7}{rel(tri.linear_gelu(xx, lin), want):>14.2e}")
        norm = torch.nn.Module()
        norm.weight, norm.eps = (torch.rand(1024, generator=g, device=dev) + 0.5).to(dt), 1e-6
        normf = torch.nn.Module()
        normf.weight, normf.eps = norm.weight.float(), 1e-6
        h0, y = rnd(100, 1024), rnd(100, 1024)
        ha, hb = h0.clone(), h0.float().clone()
        na, nb = tri.add_rmsnorm(ha, y, norm), ref.add_rmsnorm(hb, y.float(), normf)
        say(f"{'add_rmsnorm 100x1024 (h, xn)':<34}{name:>7}{max(rel(ha, hb), rel(na, nb)):>14.2e}")
        q, k, v = rnd(2, 400, D), rnd(2, S, D), rnd(2, S, D)
        bias = torch.zeros(2, S, device=dev)
        bias[:, 500:520] = MASKED
        want = ref.attention(q.float(), k.float(), v.float(), bias, 611)
        sep = FusedOps("triton", inline_combine=False)
        for _ in range(3):  # the inline merge's counters must reset between calls
            err = max(rel(tri.attention(q, k, v, bias, 611), want), rel(sep.attention(q, k, v, bias, 611), want))
        say(f"{'attention split inline/separate':<34}{name:>7}{err:>14.2e}   counters zero: "
            f"{not bool(tri.counters(q.device).any())}")
        for cfg in (False, True):
            x = torch.randn(1, 50, 32, device=dev)
            v = rnd(100 if cfg else 50, 32)
            beta = torch.tensor(1.5, device=dev) if cfg else None
            xa, xb = x.clone(), x.clone()
            tri.euler(xa, v, -0.1, beta)
            ref.euler(xb, v, -0.1, beta)
            say(f"{'euler cfg=' + str(cfg):<34}{name:>7}{rel(xa, xb):>14.2e}")


# -- 2. attention sweep -----------------------------------------------------------------


def attention_case(label: str, R: int, n: int, configs: list[tuple[int, ...]], inline: bool = True) -> None:
    from reflex_ros.engine.kernels import MASKED, FusedOps
    from reflex_ros.policies.reference.model import mqa_attention, small_query_attention

    dev, dt = "cuda", torch.bfloat16
    torch.manual_seed(0)
    H, D, S = 8, 256, 624
    q = torch.randn(1, R, D, device=dev, dtype=dt)
    k, v = torch.randn(1, S, D, device=dev, dtype=dt), torch.randn(1, S, D, device=dev, dtype=dt)
    bias = torch.zeros(1, S, device=dev)
    bias[:, 530:545] = MASKED
    ref_out = FusedOps("torch").attention(q.float(), k.float(), v.float(), bias, n)
    say(f"\nattention {label}: {R} query rows x {n} keys, head_dim {D}, bf16 (graph x50, us per call)")
    add = bias[:, None, None, :n].to(dt)
    q4, k4, v4 = q.view(1, R // H, H, D), k[:, None, :n], v[:, None, :n]
    if label.startswith("expert"):
        big = add[:, 0].expand(1, R, n).contiguous()
        say(f"  {'reference baddbmm+softmax+bmm':<36}"
            f"{graph_us(lambda: small_query_attention(q4, k4, v4, big, 1)):>9.1f}")
    else:
        say(f"  {'reference SDPA (mqa_attention)':<36}{graph_us(lambda: mqa_attention(q4, k4, v4, add, 1)):>9.1f}")
    for c in configs:
        ops = FusedOps("triton", attn_blocks={"small": c, "large": c}, inline_combine=inline)
        try:
            err = rel(ops.attention(q, k, v, bias, n), ref_out)
            us = graph_us(lambda o=ops: o.attention(q, k, v, bias, n))
            say(f"  triton BM{c[0]:>4} BN{c[1]:>4} w{c[2]} s{c[3]} split{c[4]:<6}{us:>9.1f}   rel err {err:.1e}")
        except Exception as exc:  # an out-of-resources config is a result too
            say(f"  triton {c}: n/a ({type(exc).__name__}: {str(exc).splitlines()[0][:70]})")


def attention_sweep() -> None:
    attention_case("expert", 400, 611, [(16, 64, 4, 2, 1), (16, 64, 4, 2, 5), (16, 128, 4, 2, 5), (16, 128, 4, 2, 3),
                                        (16, 128, 8, 2, 5), (16, 128, 4, 1, 5), (32, 128, 4, 2, 5), (16, 64, 4, 2, 10)])
    attention_case("expert, merge kernel", 400, 611, [(16, 128, 4, 2, 5)], inline=False)
    attention_case("prefix", 4488, 561, [(64, 32, 4, 2, 1), (64, 32, 4, 2, 2), (64, 64, 4, 2, 2), (64, 32, 4, 2, 3)])


def gemm_sweep() -> None:
    """The expert's GEMMs through cuBLAS: plain mm, in-place addmm_ (residual epilogue), and
    rows padded to 64. Weights stay in L2 here (one weight, 50 calls), so this is the kernels'
    own latency, not HBM."""
    dev, dt = "cuda", torch.bfloat16
    say("\nexpert GEMMs, bf16 (graph x50, us per call; weight MB / us = TB/s)")
    say(f"  {'shape':<34}{'mm M':>8}{'mm 64':>8}{'addmm_':>8}{'TB/s mm':>9}{'x@Wt':>8}{'W@x^T':>8}")
    for label, M, K, N in (("qkv 1024->2560", 50, 1024, 2560), ("gate_up 1024->8192", 50, 1024, 8192),
                           ("o_proj 2048->1024", 50, 2048, 1024), ("down 4096->1024", 50, 4096, 1024),
                           ("qkv CFG", 100, 1024, 2560), ("gate_up CFG", 100, 1024, 8192),
                           ("o_proj CFG", 100, 2048, 1024), ("down CFG", 100, 4096, 1024)):
        w = torch.randn(N, K, device=dev, dtype=dt) / K**0.5
        x, x64 = torch.randn(M, K, device=dev, dtype=dt), torch.randn(max(M, 64), K, device=dev, dtype=dt)
        h = torch.randn(M, N, device=dev, dtype=dt)
        a = graph_us(lambda x=x, w=w: torch.mm(x, w.t()))
        b = graph_us(lambda x=x64, w=w: torch.mm(x, w.t()))
        c = graph_us(lambda h=h, x=x, w=w: h.addmm_(x, w.t()))
        wt = w.t().contiguous()
        d = graph_us(lambda x=x, w=wt: torch.mm(x, w))
        e = graph_us(lambda x=x, w=w: torch.mm(w, x.t()))
        say(f"  {label + f' M{M}':<34}{a:>8.1f}{b:>8.1f}{c:>8.1f}{w.numel() * 2 / 1e6 / a:>9.2f}{d:>8.1f}{e:>8.1f}")


# -- 3. latency, 4. profile -------------------------------------------------------------


def category(name: str) -> str:
    n = name.lower()
    for key, cat in (("_attention_kernel", "attention (triton)"), ("_attention_combine", "attention combine (triton)"),
                     ("_add_rmsnorm", "add + rmsnorm (triton)"), ("_residual_norm", "add + rmsnorm (triton)"),
                     ("_rope_qkv", "rope + K/V write (triton)"), ("_rope_heads", "rope + K/V write (triton)"),
                     ("_gelu_mul", "gelu*up (triton)"), ("_gated_act", "gated activation (triton)"),
                     ("_add_layernorm", "add + layernorm (triton)"), ("_euler", "euler (triton)")):
        if key in n:
            return cat
    if "flash" in n or "fmha" in n or "attention" in n:
        return "sdpa (vision)"
    if any(g in n for g in ("gemm", "nvjet", "cutlass", "xmma", "cublas", "splitk", "gemv", "sm90_")):
        return "gemm"
    if "rms" in n:
        return "rmsnorm"
    if "layer_norm" in n or "layernorm" in n:
        return "norm (torch: LayerNorm / RMSNorm)"
    if "cat" in n:
        return "concat"
    if "copy" in n:
        return "copy / cast"
    if "gelu" in n or "silu" in n:
        return "activation"
    if "reduce" in n or "cumsum" in n or "scan" in n:
        return "reduce / scan"
    return "elementwise / other"


def profile_replay(name: str, fn: Callable[[], None]) -> None:
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(e.device_time for e in kernels) / 1e3
    t0 = min(e.time_range.start for e in kernels)
    t1 = max(e.time_range.end for e in kernels)
    say(f"\n[{name}] kernels={len(kernels)} kernel-time sum={busy:.2f} ms, first start -> last end "
        f"{(t1 - t0) / 1e3:.2f} ms (the difference is launch gaps between dependent kernels)")
    cats: dict[str, list[float]] = {}
    by_name: dict[str, list[float]] = {}
    for e in kernels:
        cats.setdefault(category(e.name), []).append(e.device_time / 1e3)
        by_name.setdefault(e.name, []).append(e.device_time / 1e3)
    say(f"  {'ms':>8} {'count':>6} {'avg us':>8}  kind")
    for k, v in sorted(cats.items(), key=lambda kv: -sum(kv[1])):
        say(f"  {sum(v):>8.3f} {len(v):>6} {1e3 * sum(v) / len(v):>8.1f}  {k}")
    say("  top kernels:")
    for k, v in sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:10]:
        say(f"  {sum(v):>8.3f} {len(v):>6} {1e3 * sum(v) / len(v):>8.1f}  {k[:100]}")


def latency_and_profile(iters: int, warmup: int) -> None:
    from reflex_ros.engine.bench import percentiles, run_bench
    from reflex_ros.engine.capture_cache import graph_key
    from reflex_ros.engine.kernels import FusedOps
    from reflex_ros.policies.reference import torch_engine as TorchEngine
    from reflex_ros.policies.reference.weights import build_policy, clone_policy

    model = build_policy("pi0", device="cuda")
    bf = clone_policy(model, "bf16")
    del model
    gc.collect()
    torch.cuda.empty_cache()
    say(f"\npi0 bf16 CUDA graph, NFE 10, batch 1 ({iters} iters after {warmup} warm-up)")
    say(f"{'path':<40}{'capture s':>10}{'p50':>9}{'p95':>9}{'prefix':>9}{'denoise':>9}")
    variants = (
        ("reference graph (unfused)", False, None, None),
        ("fused, split merge kernel", None, {"inline_combine": False}, None),
        ("fused (defaults)", None, {}, None),
        ("fused (defaults) CFG 1.5", None, {}, 1.5),
    )
    eng = None
    for label, fused, opts, beta in variants:
        if eng is None or fused is False or beta is None:  # CFG reuses the engine above it
            if eng is not None:
                eng.close()
            eng = TorchEngine(bf, device="cuda", dtype="bf16", cuda_graph=True, fused=fused)
            if eng.fused is not None:
                eng.fused.ops = FusedOps("triton", **(opts or {}))
        t0 = time.time()
        eng.warmup(nfe=10, cfg_beta=beta)
        cap = time.time() - t0
        st = run_bench(eng, iters=iters, warmup=warmup, nfe=10, cfg_beta=beta)
        tot = percentiles(st["total"])
        say(f"{label:<40}{cap:>10.1f}{tot[0]:>9.2f}{tot[1]:>9.2f}{percentiles(st['prefix'])[0]:>9.2f}"
            f"{percentiles(st['denoise'])[0]:>9.2f}")
    plan = eng.graphs.get(graph_key(10, eng.cfg.chunk_size, None))
    for _ in range(3):
        plan.prefix_graph.replay()
        plan.denoise_graph.replay()
    profile_replay("fused prefix graph (vision + LM, K/V of 18 layers)", plan.prefix_graph.replay)
    profile_replay("fused denoise graph (NFE 10)", plan.denoise_graph.replay)
    eng.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--skip-checks", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--gemms-only", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_fused needs a CUDA GPU", file=sys.stderr)
        return 2
    torch.set_grad_enabled(False)
    t0 = time.time()
    say(f"device={torch.cuda.get_device_name()} torch={torch.__version__} "
        f"triton={__import__('triton').__version__}")
    if not args.skip_checks:
        say("\n== 1. Triton kernels vs torch twins ==")
        check_kernels()
    if not args.skip_sweep:
        say("\n== 2. attention blocks and expert GEMMs ==")
        if not args.gemms_only:
            attention_sweep()
        gemm_sweep()
    if not args.skip_latency:
        say(f"\n== 3/4. pi0 latency and profile == (t={time.time() - t0:.0f} s)")
        latency_and_profile(args.iters, args.warmup)
    say(f"\nwall {time.time() - t0:.0f} s")
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "gpu_fused.txt"), "w") as f:
            f.write("\n".join(LINES) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
