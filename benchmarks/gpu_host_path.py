"""Where a graph replay's wall time goes besides the GPU: host images vs device images.

For each family at published size (random weights, torch bf16 CUDA-graph path) and two
camera geometries (frames at the model's size, and 640x480 frames that must be resized),
it times ``engine.infer`` wall clock (host arrays in -> host actions out) with the images
prepared on the host (numpy, float32 upload) and on the device (uint8 upload, resized by
the family's torch image step: engine/device_frames.py), and splits it into

- ``prepare``: the processor alone (numpy: state, prompt, tokens, and on the host path the
  images), timed on its own;
- ``prefix`` / ``denoise``: the two replays' GPU spans (CUDA events);
- ``rest``: the remainder (staging, launches, the copy back, post-processing, Python).

It also checks that both paths give the same chunk: bit-identical for model-size frames
(the same float32 lookup table), within float32 rounding for resized ones.

    python benchmarks/gpu_host_path.py [--families pi0 smolvla] [--iters 30] [--warmup 5]
    python benchmarks/gpu_host_path.py --cpu   # smoke test (tiny, CPU: device images off)
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def observation(info, hw: tuple[int, int], seed: int):  # noqa: ANN001
    from reflex_ros.engine.types import Observation

    rng = np.random.default_rng(seed)
    return Observation(images={n: rng.integers(0, 256, (*hw, 3), dtype=np.uint8) for n in info.camera_names},
                       state=rng.standard_normal(info.state_dim or info.max_state_dim).astype(np.float32),
                       instruction="pick up the red cube and place it in the bin")


def measure(engine, obs, iters: int, warmup: int, device_images: bool) -> dict[str, list[float]]:  # noqa: ANN001
    from reflex_ros.engine.schedule import make_noise

    engine.use_device_images(device_images)
    noise = make_noise(0, engine.info.chunk_size, engine.info.action_width)[0]
    for _ in range(warmup):
        engine.infer(obs, noise=noise)
    out: dict[str, list[float]] = {"total": [], "prefix": [], "denoise": [], "prepare": []}
    for _ in range(iters):
        t0 = time.perf_counter()
        res = engine.infer(obs, noise=noise)
        out["total"].append((time.perf_counter() - t0) * 1e3)
        out["prefix"].append(res.timings_ms["prefix"])
        out["denoise"].append(res.timings_ms["denoise"])
    for _ in range(iters):
        t0 = time.perf_counter()
        if device_images:
            engine.processor.prepare(obs, None, device_images=True)
        else:
            engine.processor.prepare(obs, None)
        out["prepare"].append((time.perf_counter() - t0) * 1e3)
    out["actions"] = engine.infer(obs, noise=noise).actions  # type: ignore[assignment]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=["pi0", "smolvla"], choices=("pi0", "pi05", "smolvla"))
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--cpu", action="store_true", help="smoke-test on the CPU (tiny, eager, host images only)")
    args = parser.parse_args(argv)
    import torch

    from reflex_ros.policies.lerobot.published import published_engine

    if not args.cpu and not torch.cuda.is_available():
        print("gpu_host_path: no CUDA GPU (use --cpu for a smoke test)", file=sys.stderr)
        return 2
    dev = "cpu" if args.cpu else "cuda"
    print(f"gpu_host_path: torch {torch.__version__}, "
          f"{torch.cuda.get_device_name() if not args.cpu else 'CPU'}; bf16 graph path; "
          f"{args.iters} timed calls after {args.warmup}; ms, p50 (p99 for total)")
    print(f"{'family':8} {'frames':>9} {'images':>7} {'total':>7} {'p99':>7} {'prepare':>8} {'prefix':>7} "
          f"{'denoise':>8} {'rest':>6}")
    for family in args.families:
        engine = published_engine(family, "tiny" if args.cpu else "published", device=dev,
                                  dtype="fp32" if args.cpu else "bf16", cuda_graph=not args.cpu, tokens=48)
        s = engine.info.image_size
        for hw in ((s, s), (480, 640)):
            obs = observation(engine.info, hw, seed=1)
            results = {}
            for device_images in ((False,) if args.cpu else (False, True)):
                r = measure(engine, obs, args.iters, args.warmup, device_images)
                results[device_images] = r["actions"]
                p = {k: pct(v, 50) for k, v in r.items() if k != "actions"}
                rest = p["total"] - p["prepare"] - p["prefix"] - p["denoise"]
                print(f"{family:8} {hw[1]:>4}x{hw[0]:<4} {'device' if device_images else 'host':>7} "
                      f"{p['total']:7.2f} {pct(r['total'], 99):7.2f} {p['prepare']:8.2f} {p['prefix']:7.2f} "
                      f"{p['denoise']:8.2f} {rest:6.2f}")
            if len(results) == 2:
                diff = float(np.abs(results[True] - results[False]).max())
                print(f"{'':8} {'':9} same chunk: {'bit-identical' if diff == 0 else f'max |diff| {diff:.3g}'}")
        engine.close()
        del engine
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
