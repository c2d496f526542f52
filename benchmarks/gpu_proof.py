"""GPU proof for the torch engine (issue 2) and the first issue-6 numbers, in one process.

1. CUDA Graph vs eager parity on seeded fixtures: fp32 max_abs (target <= 1e-5) and bf16
   cosine (target >= 0.999), for NFE 10, NFE 4 and CFG beta 1.5.
2. Latency of `small` and `pi0` (2 cams 224 px, 48 tokens, chunk 50 x 32, NFE 10): eager fp32,
   eager bf16, CUDA Graph bf16 (+ CFG 1.5 and an NFE sweep for pi0) and the floor.
3. Where pi0's time goes: torch profiler over one eager bf16 chunk and one graph replay.

Run on the GPU machine:  PYTHONPATH=. python3 benchmarks/gpu_proof.py [--iters N] [--skip-pi0]
Writes the report to stdout and, if $OUT is set, to $OUT/gpu_proof.txt.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

import numpy as np
import torch

from reflex_ros.engine.bench import format_compare, make_fixtures, run_compare
from reflex_ros.policies.reference import torch_engine as TorchEngine
from reflex_ros.policies.reference.weights import build_policy, clone_policy

LINES: list[str] = []


def say(text: str = "") -> None:
    print(text, flush=True)
    LINES.append(text)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def parity(preset: str) -> None:
    model = build_policy(preset, device="cuda")
    eager32 = TorchEngine(model, device="cuda")
    graph32 = TorchEngine(model, device="cuda", cuda_graph=True)
    fixtures = make_fixtures(eager32.info, n=3)
    cases = ((10, None), (4, None), (10, 1.5))
    ref = {c: [eager32.infer(o, nfe=c[0], cfg_beta=c[1], noise=n).actions for o, n in fixtures] for c in cases}
    bf = clone_policy(model, "bf16")
    eager16 = TorchEngine(bf, device="cuda", dtype="bf16")
    graph16 = TorchEngine(bf, device="cuda", dtype="bf16", cuda_graph=True)
    say(f"{'preset':<7}{'nfe':>4}{'cfg':>6}{'fp32 graph-eager max_abs':>26}{'bf16 graph-eager cos':>22}"
        f"{'bf16 graph-fp32 cos':>21}{'bf16 graph-eager max_abs':>26}")
    for c in cases:
        mabs32, cos16, cos16_32, mabs16 = 0.0, 1.0, 1.0, 0.0
        for (o, n), r in zip(fixtures, ref[c], strict=True):
            g32 = graph32.infer(o, nfe=c[0], cfg_beta=c[1], noise=n).actions
            e16 = eager16.infer(o, nfe=c[0], cfg_beta=c[1], noise=n).actions
            g16 = graph16.infer(o, nfe=c[0], cfg_beta=c[1], noise=n).actions
            mabs32 = max(mabs32, float(np.abs(g32 - r).max()))
            cos16 = min(cos16, cosine(g16, e16))
            cos16_32 = min(cos16_32, cosine(g16, r))
            mabs16 = max(mabs16, float(np.abs(g16 - e16).max()))
        say(f"{preset:<7}{c[0]:>4}{str(c[1]):>6}{mabs32:>26.2e}{cos16:>22.6f}{cos16_32:>21.6f}{mabs16:>26.2e}")
    say(f"  graph captures: fp32 {graph32.graphs.captures}, bf16 {graph16.graphs.captures} (3 keys each)")
    for e in (eager32, graph32, eager16, graph16):
        e.close()
    del model, bf
    gc.collect()
    torch.cuda.empty_cache()


def profile_pi0(nfe: int = 10) -> None:
    from torch.profiler import ProfilerActivity, profile

    model = build_policy("pi0", device="cuda")
    bf = clone_policy(model, "bf16")
    del model
    gc.collect()
    torch.cuda.empty_cache()
    eager = TorchEngine(bf, device="cuda", dtype="bf16")
    graph = TorchEngine(bf, device="cuda", dtype="bf16", cuda_graph=True)
    obs, noise = make_fixtures(eager.info, n=1)[0]
    for _ in range(3):
        eager.infer(obs, nfe=nfe, noise=noise)
        graph.infer(obs, nfe=nfe, noise=noise)
    for name, eng in (("eager bf16", eager), ("cuda graph bf16", graph)):
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            res = eng.infer(obs, nfe=nfe, noise=noise)
            torch.cuda.synchronize()
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        busy_ms = sum(e.device_time for e in kernels) / 1e3
        say(f"\n[profile pi0 {name}, NFE {nfe}] kernels={len(kernels)} kernel-time sum={busy_ms:.2f} ms "
            f"chunk total={res.timings_ms['total']:.2f} ms (prefix {res.timings_ms['prefix']:.2f}, "
            f"denoise {res.timings_ms['denoise']:.2f})")
        by_name: dict[str, list[float]] = {}
        for e in kernels:
            by_name.setdefault(e.name, []).append(e.device_time / 1e3)
        top = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:18]
        say(f"  {'ms':>8} {'count':>6} {'avg us':>8}  kernel")
        for k, v in top:
            say(f"  {sum(v):>8.3f} {len(v):>6} {1e3 * sum(v) / len(v):>8.1f}  {k[:110]}")
    eager.close()
    graph.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--skip-pi0", action="store_true")
    ap.add_argument("--skip-profile", action="store_true")
    ap.add_argument("--parity-only", action="store_true", help="only section 1 (tiny and small parity)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_proof needs a CUDA GPU", file=sys.stderr)
        return 2
    t0 = time.time()
    say(f"device={torch.cuda.get_device_name()} torch={torch.__version__} cuda={torch.version.cuda} "
        f"python={sys.version.split()[0]}")
    say("\n== 1. CUDA Graph vs eager parity (worst over 3 seeded fixtures) ==")
    for preset in ("tiny", "small"):
        parity(preset)
    presets = () if args.parity_only else ("small",) if args.skip_pi0 else ("small", "pi0")
    for preset in presets:
        say(f"\n== 2. latency: {preset}, batch 1, NFE 10 ({args.iters} timed iters after {args.warmup} warm-up "
            "per row, CUDA events) ==")
        rows, floor = run_compare(preset, iters=args.iters, warmup=args.warmup, nfe=10,
                                  cfg_beta=1.5, nfe_sweep=preset == "pi0", log=lambda s: None)
        say(format_compare(rows, floor))
        gc.collect()
        torch.cuda.empty_cache()
    if not args.skip_pi0 and not args.skip_profile and not args.parity_only:
        say("\n== 3. pi0 profile ==")
        profile_pi0()
    say(f"\nwall {time.time() - t0:.0f} s")
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "gpu_proof.txt"), "w") as f:
            f.write("\n".join(LINES) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
