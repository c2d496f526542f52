"""What real-time chunking adds to one chunk's inference on the torch GPU path (issue 14 goal:
<= 20%), pi0 at published size, CUDA graphs, bf16.

    python benchmarks/rtc_overhead.py                      # H200: one device call, ~2 min
    python benchmarks/rtc_overhead.py --size tiny --cpu    # smoke test on the dev box (eager)

Rows (ms per chunk, numpy observation in -> actions out, after warm-up; p50 / p99):

* ``graph fused``: the serving default, no guide (the baseline);
* ``graph fused + rtc inpaint``: the gradient-free guide inside the fused denoise graph;
* ``graph reference``: the model's own code captured (what the exact guidance has to run on:
  fused kernels have no backward);
* ``graph reference + rtc guided``: the exact guidance, a VJP per Euler step captured with the
  loop;
* ``eager`` / ``eager + rtc guided`` with ``--eager`` (and always with ``--cpu``).

Each guided row reports its overhead against the fused baseline and against its own
unguided path, the CUDA-graph replays per chunk (counted by wrapping ``CUDAGraph.replay``:
prefix + denoise = 2 means the guidance lives inside the captured loop, no per-step host
round trip), and, for graph rows, the largest difference from the same guided inference
run eagerly (the capture computes what eager computes). Rows fail soft: an error is printed
and the next row runs, so one device call says as much as it can.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from typing import Any

import numpy as np


def _observation(info: Any, seed: int = 0) -> Any:
    from reflex_ros.engine.types import Observation

    rng = np.random.default_rng(seed)
    s = info.image_size
    images = {name: rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for name in info.camera_names}
    return Observation(images=images, state=(0.1 * rng.standard_normal(info.state_dim or 6)).astype(np.float32),
                       instruction="pick up the cube")


class ReplayCounter:
    """Counts ``torch.cuda.CUDAGraph.replay`` calls while installed."""

    def __init__(self) -> None:
        import torch

        self.count = 0
        self._cls = torch.cuda.CUDAGraph
        self._orig = self._cls.replay

    def __enter__(self) -> ReplayCounter:
        orig = self._orig

        def replay(graph: Any, *a: Any, **k: Any) -> Any:
            self.count += 1
            return orig(graph, *a, **k)

        self._cls.replay = replay
        return self

    def __exit__(self, *exc: Any) -> None:
        self._cls.replay = self._orig


def time_row(engine: Any, obs: Any, noise: np.ndarray, nfe: int, guide: Any, iters: int, warmup: int,
             cuda: bool) -> dict[str, Any]:
    kwargs = {"noise": noise, "nfe": nfe, **({"guide": guide} if guide is not None else {})}
    for _ in range(warmup):
        out = engine.infer(obs, **kwargs)
    replays = None
    if cuda:
        with ReplayCounter() as counter:
            out = engine.infer(obs, **kwargs)
        replays = counter.count
    totals, prefix, denoise = [], [], []
    for _ in range(iters):
        t0 = time.perf_counter()
        res = engine.infer(obs, **kwargs)
        totals.append((time.perf_counter() - t0) * 1e3)
        prefix.append(res.timings_ms.get("prefix", float("nan")))
        denoise.append(res.timings_ms.get("denoise", float("nan")))
    return {"p50_ms": float(np.percentile(totals, 50)), "p99_ms": float(np.percentile(totals, 99)),
            "prefix_ms": float(np.median(prefix)), "denoise_ms": float(np.median(denoise)),
            "replays_per_chunk": replays, "actions": out.actions}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="pi0", choices=("pi0", "pi05", "smolvla"))
    parser.add_argument("--size", default="published", choices=("published", "tiny"))
    parser.add_argument("--cpu", action="store_true", help="smoke test on the CPU: eager fp32 rows only")
    parser.add_argument("--eager", action="store_true", help="also time the eager rows on the GPU")
    parser.add_argument("--dtype", default="bf16", help="GPU precision (default bf16)")
    parser.add_argument("--nfe", type=int, default=10)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--delay", type=int, default=5, help="frozen rows d (default 5)")
    parser.add_argument("--horizon", type=int, default=15, help="guided rows (default 15)")
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args(argv)

    import torch

    from reflex_ros.engine.types import ChunkGuide
    from reflex_ros.policies.lerobot.published import build_published, published_engine

    cuda = not args.cpu
    if cuda and not torch.cuda.is_available():
        print("rtc_overhead: no CUDA GPU (use --cpu for the smoke test)", file=sys.stderr)
        return 2
    device, dtype = ("cuda", args.dtype) if cuda else ("cpu", "fp32")
    spec = {"state_dim": 6, "action_dim": 6}
    t0 = time.perf_counter()
    model = build_published(args.family, args.size, device=device, dtype=dtype, **spec)
    print(f"{args.family} {args.size} built in {time.perf_counter() - t0:.1f} s on {device} ({dtype}); torch "
          f"{torch.__version__}" + (f", {torch.cuda.get_device_name()}" if cuda else ""), flush=True)

    def engine(graph: bool, fused: bool | None) -> Any:
        return published_engine(args.family, args.size, device=device, dtype=dtype, cuda_graph=graph, model=model,
                                fused=fused, **spec)

    probe = engine(False, False)
    info = probe.info
    obs = _observation(info)
    noise = np.random.default_rng(1).standard_normal((info.chunk_size, info.action_width), dtype=np.float32)
    free = probe.infer(obs, noise=noise, nfe=args.nfe).actions
    target = free[:40] + 0.1

    def guide(mode: str) -> Any:
        return ChunkGuide(target, delay=args.delay, horizon=args.horizon, schedule="linear", max_weight=10.0,
                          mode=mode)

    rows: list[tuple[str, bool, bool | None, str | None]] = []
    if cuda:
        rows += [("graph fused", True, None, None), ("graph fused + rtc inpaint", True, None, "inpaint"),
                 ("graph reference", True, False, None), ("graph reference + rtc guided", True, False, "guided")]
    if args.eager or not cuda:
        rows += [("eager", False, False, None), ("eager + rtc guided", False, False, "guided"),
                 ("eager + rtc inpaint", False, False, "inpaint")]
    eager_guided: dict[str, np.ndarray] = {}
    results: dict[str, dict[str, Any]] = {}
    for mode in ("guided", "inpaint"):
        try:
            eager_guided[mode] = probe.infer(obs, noise=noise, nfe=args.nfe, guide=guide(mode)).actions
        except Exception as exc:  # noqa: BLE001 - report and go on
            print(f"[eager {mode} reference] failed: {type(exc).__name__}: {exc}", flush=True)
    for name, graph, fused, mode in rows:
        try:
            eng = engine(graph, fused)
            row = time_row(eng, obs, noise, args.nfe, guide(mode) if mode else None, args.iters, args.warmup, cuda)
            row["graph_path"] = eng.info.extra.get("graph_path", "eager")
            actions = row.pop("actions")
            if mode and graph and mode in eager_guided:
                row["max_abs_vs_eager"] = float(np.abs(actions - eager_guided[mode]).max())
            if mode:
                row["frozen_rows_err"] = float(np.abs(actions[: args.delay] - target[: args.delay]).max())
            results[name] = row
            eng.release() if hasattr(eng, "release") else None
            print(f"[{name}] p50 {row['p50_ms']:.2f} ms p99 {row['p99_ms']:.2f} ms (prefix {row['prefix_ms']:.2f}, "
                  f"denoise {row['denoise_ms']:.2f}); replays/chunk {row['replays_per_chunk']}; path "
                  f"{row['graph_path']}", flush=True)
        except Exception as exc:  # noqa: BLE001 - one device call: report and go on
            print(f"[{name}] FAILED: {type(exc).__name__}: {exc}", flush=True)
            traceback.print_exc(limit=6)
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        if cuda:
            torch.cuda.empty_cache()

    base = results.get("graph fused" if cuda else "eager", {}).get("p50_ms")
    print(f"\nRTC overhead, {args.family} {args.size}, nfe {args.nfe}, d={args.delay}, horizon {args.horizon}, "
          f"{device} {dtype}, {args.iters} iterations (ms per chunk)")
    print(f"{'row':32s} {'p50':>8s} {'p99':>8s} {'prefix':>8s} {'denoise':>8s} {'vs base':>8s} {'vs own':>8s} "
          f"{'replays':>7s} {'|graph-eager|':>13s} {'frozen err':>10s}")
    for name, _, _, mode in rows:
        r = results.get(name, {})
        if "error" in r or not r:
            print(f"{name:32s} FAILED: {r.get('error', 'not run')}")
            continue
        own_name = name.split(" + ")[0]
        own = results.get(own_name, {}).get("p50_ms")
        vs_base = f"{100 * (r['p50_ms'] / base - 1):+.0f}%" if base and mode else ""
        vs_own = f"{100 * (r['p50_ms'] / own - 1):+.0f}%" if own and mode else ""
        diff = f"{r['max_abs_vs_eager']:.2e}" if "max_abs_vs_eager" in r else ""
        frozen = f"{r['frozen_rows_err']:.3f}" if "frozen_rows_err" in r else ""
        print(f"{name:32s} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['prefix_ms']:8.2f} {r['denoise_ms']:8.2f} "
              f"{vs_base:>8s} {vs_own:>8s} {r['replays_per_chunk'] if r['replays_per_chunk'] is not None else '-':>7} "
              f"{diff:>13s} {frozen:>10s}")
    print("target: an RTC row <= +20% vs the fused baseline; frozen err = max |output - target| over the d frozen "
          f"rows (unguided: {float(np.abs(free[: args.delay] - target[: args.delay]).max()):.3f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"argv": sys.argv[1:] if argv is None else argv, "rows": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
