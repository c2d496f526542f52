"""Where a LeRobot family's CUDA-graph chunk spends its GPU time: a kernel table per graph.

For each family at published size (random weights, bf16, the fused graph path, NFE 10,
batch 1, 2 cameras, 48 tokens) it replays the captured prefix and denoise graphs once under
the torch profiler and prints the kernels by kind and the top kernels (the same table as
``benchmarks/gpu_fused.py`` prints for the reference pi0): kernel-time sum, first start to
last end, and the difference, which is the launch gaps between dependent kernels.

    PYTHONPATH=. python3 benchmarks/gpu_profile_family.py [--families smolvla pi0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from gpu_fused import profile_replay  # noqa: E402  (the shared kernel table)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", nargs="+", default=["smolvla", "pi0"], choices=("pi0", "pi05", "smolvla"))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_profile_family: no CUDA GPU")
        return 2
    from reflex_ros.engine.capture_cache import graph_key
    from reflex_ros.policies.lerobot.published import published_engine

    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    for family in args.families:
        eng = published_engine(family, device="cuda", dtype="bf16", cuda_graph=True, tokens=48)
        eng.warmup(nfe=10)
        plan = eng.graphs.get(graph_key(10, eng.info.chunk_size, None))
        for _ in range(3):
            plan.prefix_graph.replay()
            plan.denoise_graph.replay()
        print(f"\n==== {family} published, bf16, {eng.info.extra.get('graph_path')}")
        profile_replay(f"{family} prefix graph", plan.prefix_graph.replay)
        profile_replay(f"{family} denoise graph (NFE 10)", plan.denoise_graph.replay)
        eng.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
