"""Microsecond timing of small GPU work by CUDA-graph replay (benchmarks only).

Launch overhead would swamp a 5 us kernel timed one call at a time, and the production path
replays a graph anyway, so the benchmarks capture ``reps`` calls in one graph and report the
best of ``trials`` replays per call. Kept here so every benchmark script measures the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def graph_us(fns: Callable[[], object] | Sequence[Callable[[], object]], reps: int = 50, trials: int = 5) -> float:
    """Best-of-``trials`` microseconds per call of ``fns`` (one callable, or one per layer
    copy so weights come from HBM as in the real chunk), captured ``reps`` times."""
    calls = [fns] if callable(fns) else list(fns)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up (and let lazy init happen) outside the capture
        for fn in calls[:3] * (3 if len(calls) == 1 else 1):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            for fn in calls:
                fn()
    graph.replay()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(trials):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) * 1e3 / (reps * len(calls)))
    return best
