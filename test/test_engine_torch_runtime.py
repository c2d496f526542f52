"""TorchEngine (eager on CPU; CUDA Graph where a GPU exists), capture-cache bookkeeping, bench CLI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from reflex_ros.cli import main as cli_main
from reflex_ros.engine.capture_cache import CaptureCache, GraphKey, graph_key
from reflex_ros.engine.preprocess import make_noise, prepare_inputs
from reflex_ros.engine.sampler import sample_actions
from reflex_ros.engine.torch_runtime import TorchEngine
from reflex_ros.engine.types import (
    ChunkResult,
    Engine,
    Observation,
    ObservationError,
    ProviderUnavailableError,
    ReflexError,
)
from reflex_ros.engine.weights import build_policy

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="CUDA GPU not available (CUDA Graph path runs on the GPU only)")


def make_obs(info, seed: int = 0) -> Observation:
    rng = np.random.default_rng(seed)
    s = info.image_size
    return Observation(
        images=[rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for _ in range(info.num_cameras)],
        state=rng.standard_normal(5).astype(np.float32),
        instruction="stack the blocks",
        stamp_ns=123,
    )


@pytest.fixture(scope="module")
def engine() -> TorchEngine:
    eng = TorchEngine(build_policy("tiny"), model_hash="abc")
    yield eng
    eng.close()


def test_eager_infer_matches_sampler(engine: TorchEngine) -> None:
    assert isinstance(engine, Engine)
    info = engine.info
    assert (info.engine, info.provider, info.dtype, info.model_hash, info.cuda_graph) == ("torch", "cpu", "fp32", "abc", False)
    obs = make_obs(info)
    noise = make_noise(7, info.chunk_size, info.action_dim)[0]
    res = engine.infer(obs, nfe=4, noise=noise)
    assert isinstance(res, ChunkResult)
    assert res.actions.shape == (info.chunk_size, info.action_dim) and res.actions.dtype == np.float32
    assert set(res.timings_ms) == {"preprocess", "prefix", "denoise", "total"}
    assert all(v >= 0 for v in res.timings_ms.values())
    assert res.timings_ms["total"] >= res.timings_ms["prefix"] + res.timings_ms["denoise"]
    assert (res.nfe, res.stamp_ns, res.cfg_beta) == (4, 123, None)
    arr = {k: torch.from_numpy(v) for k, v in prepare_inputs(obs, engine.cfg).items()}
    ref = sample_actions(engine.model, arr["images"], arr["lang_tokens"], arr["lang_mask"], arr["state"],
                         torch.from_numpy(noise[None]), nfe=4)
    np.testing.assert_array_equal(res.actions, ref[0].numpy())
    # same noise -> same chunk; no noise -> fresh samples
    assert np.array_equal(engine.infer(obs, nfe=4, noise=noise).actions, res.actions)
    assert not np.array_equal(engine.infer(obs, nfe=4).actions, engine.infer(obs, nfe=4).actions)


def test_infer_cfg_and_validation(engine: TorchEngine) -> None:
    obs = make_obs(engine.info)
    noise = make_noise(1, engine.info.chunk_size, engine.info.action_dim)
    res = engine.infer(obs, nfe=2, cfg_beta=1.5, noise=noise)
    assert res.cfg_beta == 1.5 and np.isfinite(res.actions).all()
    assert not np.allclose(res.actions, engine.infer(obs, nfe=2, noise=noise).actions, atol=1e-4)
    with pytest.raises(ValueError, match="cfg_beta must be >= 1.0"):
        engine.infer(obs, cfg_beta=0.5)
    with pytest.raises(ValueError, match="nfe=3 is not supported"):
        engine.infer(obs, nfe=3)
    obs.state[0] = np.nan
    with pytest.raises(ObservationError, match=r"state\[0\]"):
        engine.infer(obs)


def test_bf16_engine_tracks_fp32() -> None:
    fp32 = TorchEngine(build_policy("tiny"))
    bf16 = TorchEngine(build_policy("tiny"), dtype="bf16")
    assert bf16.info.dtype == "bf16" and bf16.model.dtype == torch.bfloat16
    obs = make_obs(fp32.info)
    noise = make_noise(2, fp32.info.chunk_size, fp32.info.action_dim)
    a, b = fp32.infer(obs, noise=noise).actions.ravel(), bf16.infer(obs, noise=noise).actions.ravel()
    assert b.dtype == np.float32
    assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.999
    with pytest.raises(ValueError, match="unsupported dtype"):
        TorchEngine(build_policy("tiny"), dtype="int8")


@pytest.mark.skipif(CUDA, reason="checks the refusal on a CPU-only machine")
def test_cuda_graph_refused_on_cpu() -> None:
    with pytest.raises(ProviderUnavailableError, match="CUDA Graph mode needs a CUDA GPU.*cuda_graph=False"):
        TorchEngine(build_policy("tiny"), cuda_graph=True)
    with pytest.raises(ProviderUnavailableError, match="no CUDA GPU"):
        TorchEngine(build_policy("tiny"), device="cuda")


def test_close_makes_engine_unusable() -> None:
    eng = TorchEngine(build_policy("tiny"))
    eng.close()
    with pytest.raises(ReflexError, match="closed"):
        eng.infer(make_obs(eng.info))


# -- capture-cache bookkeeping (plain Python, the capture function injected) ----------------


def test_graph_key() -> None:
    assert graph_key(10, 50, None) == GraphKey(nfe=10, chunk_size=50, batch=1, cfg=False)
    assert graph_key(10, 50, 1.5) == GraphKey(nfe=10, chunk_size=50, batch=2, cfg=True)
    assert graph_key(10, 50, 1.5) == graph_key(10, 50, 2.5)  # beta is a buffer, not a key


def test_capture_cache_recaptures_only_on_key_change() -> None:
    captured: list[GraphKey] = []
    released: list[str] = []

    def capture(key: GraphKey) -> str:
        captured.append(key)
        return f"plan-{key.nfe}-{key.batch}"

    cache = CaptureCache(capture, max_entries=2, release=released.append)
    assert cache.get(graph_key(10, 50, None)) == "plan-10-1"
    assert cache.get(graph_key(10, 50, None)) == "plan-10-1"
    assert cache.captures == 1 and cache.hits == 1
    cache.get(graph_key(10, 50, 1.5))  # cfg on -> new batch-2 graph
    cache.get(graph_key(10, 50, 2.0))  # only beta changed -> replay
    assert cache.captures == 2
    cache.get(graph_key(4, 50, None))  # nfe changed -> capture; evicts the least recently used (10, b=1)
    assert cache.captures == 3 and released == ["plan-10-1"]
    assert graph_key(10, 50, None) not in cache and len(cache) == 2
    cache.get(graph_key(10, 50, None))
    assert cache.captures == 4
    assert captured[-1] == GraphKey(10, 50, 1, False)
    cache.clear()
    assert len(cache) == 0 and len(released) == 4
    with pytest.raises(ValueError):
        CaptureCache(capture, max_entries=0)


# -- GPU (skips here) -----------------------------------------------------------------------


@needs_cuda
def test_cuda_graph_matches_eager_and_caches() -> None:
    model = build_policy("tiny", device="cuda")
    eager = TorchEngine(model, device="cuda")
    graph = TorchEngine(model, device="cuda", cuda_graph=True)
    obs = make_obs(eager.info)
    for nfe, beta in ((10, None), (4, None), (10, 1.5), (10, 2.0)):
        noise = make_noise(nfe, eager.info.chunk_size, eager.info.action_dim)
        a = eager.infer(obs, nfe=nfe, cfg_beta=beta, noise=noise).actions
        b = graph.infer(obs, nfe=nfe, cfg_beta=beta, noise=noise).actions
        assert np.abs(a - b).max() <= 1e-5
    assert graph.graphs.captures == 3  # beta 2.0 replays the beta 1.5 graph
    graph.close()


# -- bench CLI ------------------------------------------------------------------------------


def test_bench_cli_prints_percentiles(capsys) -> None:
    rc = cli_main(["bench", "--model", "tiny", "--iters", "3", "--warmup", "1", "--nfe", "2", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0
    for word in ("p50 ms", "p95 ms", "p99 ms", "preprocess", "prefix", "denoise", "total", "iterations: 3"):
        assert word in out
    assert cli_main(["bench"]) == 2
    if not CUDA:
        assert cli_main(["bench", "--model", "tiny", "--cuda-graph", "--iters", "1"]) == 2
        assert cli_main(["bench", "--model", "tiny", "--compare"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err or CUDA


def test_bench_module_imports_no_torch() -> None:
    code = "import sys, reflex_ros.engine.bench; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
