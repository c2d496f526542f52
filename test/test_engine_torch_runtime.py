"""TorchEngine (eager on CPU; CUDA Graph where a GPU exists), capture-cache bookkeeping, bench CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from reflex_ros.cli import main as cli_main
from reflex_ros.engine.capture_cache import CaptureCache, GraphKey, graph_key
from reflex_ros.engine.sampler import sample_actions
from reflex_ros.engine.schedule import make_noise
from reflex_ros.engine.types import (
    ChunkResult,
    Engine,
    Observation,
    ObservationError,
    ProviderUnavailableError,
    ReflexError,
)
from reflex_ros.policies.reference import torch_engine as TorchEngine
from reflex_ros.policies.reference.processor import prepare_inputs
from reflex_ros.policies.reference.weights import build_policy

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
    arr = {k: torch.from_numpy(v) for k, v in prepare_inputs(obs, engine.model.cfg).items()}
    ref = sample_actions(engine.model, arr, torch.from_numpy(noise[None]), nfe=4)
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
    with pytest.raises(ValueError, match="nfe=0 is not supported"):
        engine.infer(obs, nfe=0)
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


# -- fused fast path (what the CUDA graphs capture), checked on the CPU with the torch backend --


def _fill(runner, arrays: dict, beta: float | None) -> None:
    for name, arr in arrays.items():
        runner.inputs[name].copy_(torch.from_numpy(runner.stage(name, arr)))
    if beta is not None:
        runner.inputs["beta"].fill_(beta)


@pytest.mark.parametrize("nfe,beta", [(10, None), (4, None), (10, 1.5)])
def test_graph_runners_match_reference(engine: TorchEngine, nfe: int, beta: float | None) -> None:
    """The exact stage functions the engine captures (fused and reference) reproduce
    sample_actions on the CPU, CFG included (shared-image staging)."""
    assert engine.fused is not None and engine.fused.backend == "torch"
    cfg = engine.model.cfg
    obs = make_obs(engine.info, seed=nfe)
    arrays = prepare_inputs(obs, cfg, beta)
    arrays["noise"] = make_noise(nfe, cfg.chunk_size, cfg.action_dim)
    t = {k: torch.from_numpy(v) for k, v in arrays.items()}
    key = graph_key(nfe, cfg.chunk_size, beta)
    with torch.inference_mode():
        ref = sample_actions(engine.model, t, t["noise"], nfe, beta)
        fused = engine.build_runner(key)
        assert fused.fused is not None
        assert fused.inputs["images"].shape[0] == 1 and fused.inputs["lang_tokens"].shape[0] == key.batch
        _fill(fused, arrays, beta)
        out = fused.run_denoise(fused.run_prefix())
        plain = TorchEngine(engine.model, fused=False).build_runner(key)
        assert plain.fused is None and plain.inputs["images"].shape[0] == key.batch
        _fill(plain, arrays, beta)
        out_plain = plain.run_denoise(plain.run_prefix())
    assert out.shape == ref.shape == (1, cfg.chunk_size, cfg.action_dim) and out.dtype == torch.float32
    assert float((out - ref).abs().max()) <= 1e-5
    assert float((out_plain - ref).abs().max()) <= 1e-5


def test_fused_kv_buffer_layout(engine: TorchEngine) -> None:
    """Prefix rows hold the reference's post-RoPE K/V, pad rows stay zero, the key bias masks
    padded language tokens and pad rows, and a denoising step writes only the action rows."""
    from reflex_ros.engine.kernels import MASKED
    from reflex_ros.policies.reference.fused import padded_keys

    cfg, fp = engine.model.cfg, engine.fused
    obs = make_obs(engine.info)
    obs.instruction = "go"  # short: most language slots are padding
    arrays = prepare_inputs(obs, cfg)
    t = {k: torch.from_numpy(v) for k, v in arrays.items()}
    P, C, S = cfg.prefix_len, cfg.chunk_size, padded_keys(cfg)
    assert S % 16 == 0 and S >= P + C
    with torch.inference_mode():
        kv, mask = engine.model.prefix(**t)
        pk, pv = torch.stack(kv[0::2]), torch.stack(kv[1::2])
        buf = fp.allocate(batch=1, nfe=2)
        fp.prefix(buf, **t)
        torch.testing.assert_close(buf.k[:, :, :P], pk[:, :, 0], rtol=0, atol=1e-6)
        torch.testing.assert_close(buf.v[:, :, :P], pv[:, :, 0], rtol=0, atol=1e-6)
        assert not buf.k[:, :, P:].any() and not buf.v[:, :, P:].any()
        want = torch.full((1, S), MASKED)
        want[:, :P] = torch.where(mask, 0.0, MASKED)
        want[:, P:P + C] = 0.0
        assert torch.equal(buf.bias, want) and int((buf.bias[:, :P] == MASKED).sum()) > 0
        before = buf.k.clone()
        fp.denoise(buf, torch.from_numpy(make_noise(0, C, cfg.action_dim)), None)
        assert torch.equal(buf.k[:, :, :P], before[:, :, :P]) and not buf.k[:, :, P + C:].any()
        assert buf.k[:, :, P:P + C].abs().sum() > 0


def test_fused_ops_torch_twins_match_model_ops() -> None:
    """FusedOps (torch backend) == the model's own RoPE and small-query attention."""
    from reflex_ros.engine.kernels import MASKED, FusedOps
    from reflex_ros.policies.reference.model import (
        additive_mask,
        apply_rope,
        rope_tables,
        small_query_attention,
    )

    g = torch.Generator().manual_seed(0)
    ops = FusedOps("torch")
    B, L, H, D, S = 2, 5, 4, 16, 32
    qkv = torch.randn(B * L, (H + 2) * D, generator=g)
    rope = rope_tables(torch.arange(L).expand(B, L) + 3, D, 10000.0, torch.float32)
    q = torch.empty(B, L * H, D)
    kb, vb = torch.zeros(B, S, D), torch.zeros(B, S, D)
    ops.rope_qkv(qkv, rope.cos[:, :, 0], rope.sin[:, :, 0], q, kb[:, 7:7 + L], vb[:, 7:7 + L], L, H)
    x = qkv.view(B, L, H + 2, D)
    torch.testing.assert_close(q.view(B, L, H, D), apply_rope(x[:, :, :H], rope), rtol=0, atol=0)
    torch.testing.assert_close(kb[:, 7:7 + L], apply_rope(x[:, :, H:H + 1], rope)[:, :, 0], rtol=0, atol=0)
    assert torch.equal(vb[:, 7:7 + L], x[:, :, H + 1]) and not kb[:, :7].any()
    n = 20
    keep = torch.ones(B, n, dtype=torch.bool)
    keep[0, 3:6] = False
    bias = torch.full((B, S), MASKED)
    bias[:, :n] = torch.where(keep, 0.0, MASKED)
    kb, vb = torch.randn(B, S, D, generator=g), torch.randn(B, S, D, generator=g)
    out = ops.attention(q, kb, vb, bias, n)
    big = additive_mask(keep, torch.float32)[:, None, :].expand(B, H * L, n)
    ref = small_query_attention(q.view(B, L, H, D), kb[:, None, :n], vb[:, None, :n], big, 1)
    torch.testing.assert_close(out.reshape(B, L, H * D), ref, rtol=0, atol=1e-6)


def test_fused_path_selection() -> None:
    gqa = build_policy("tiny", num_kv_heads=2)
    assert TorchEngine(gqa).fused is None  # not covered: graphs run the reference
    with pytest.raises(ValueError, match="fused=True but this model has no fast path"):
        TorchEngine(gqa, fused=True)
    assert TorchEngine(build_policy("tiny"), fused=False).fused is None


@pytest.mark.skipif(not (CUDA or os.environ.get("TRITON_INTERPRET") == "1"),
                    reason="Triton kernels need a CUDA GPU (or TRITON_INTERPRET=1)")
def test_triton_kernels_match_torch_twins() -> None:
    pytest.importorskip("triton")
    from reflex_ros.engine.kernels import MASKED, FusedOps

    dev = "cuda" if CUDA else "cpu"
    g = torch.Generator(device=dev).manual_seed(0)
    tri, ref = FusedOps("triton"), FusedOps("torch")
    B, L, H, D, S = 2, 6, 4, 32, 48
    qkv = torch.randn(B * L, (H + 2) * D, generator=g, device=dev)
    ang = torch.rand(B, L, D // 2, generator=g, device=dev) * 10
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([-ang.sin(), ang.sin()], -1)
    outs = []
    for ops in (tri, ref):
        q, kb, vb = torch.zeros(B, L * H, D, device=dev), torch.zeros(B, S, D, device=dev), torch.zeros(B, S, D, device=dev)
        ops.rope_qkv(qkv, cos, sin, q, kb[:, 2:2 + L], vb[:, 2:2 + L], L, H)
        outs.append((q, kb, vb))
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    bias = torch.zeros(B, S, device=dev)
    bias[0, 5:9] = MASKED
    k, v = torch.randn(B, S, D, generator=g, device=dev), torch.randn(B, S, D, generator=g, device=dev)
    want = ref.attention(outs[0][0], k, v, bias, 40)
    for split, inline in ((1, False), (3, False), (3, True)):  # one pass; key slices merged after / inline
        ops = FusedOps("triton", attn_blocks={"small": (16, 16, 4, 2, split)}, inline_combine=inline)
        for _ in range(2):  # the inline merge must leave its counters reset for the next call
            torch.testing.assert_close(ops.attention(outs[0][0], k, v, bias, 40), want, rtol=0, atol=1e-5)
        if inline:
            assert not ops.counters(k.device).any()
    norm = torch.nn.Module()
    norm.weight, norm.eps = torch.rand(64, generator=g, device=dev) + 0.5, 1e-6
    h0, y = torch.randn(10, 64, generator=g, device=dev), torch.randn(10, 64, generator=g, device=dev)
    ha, hb = h0.clone(), h0.clone()
    torch.testing.assert_close(tri.add_rmsnorm(ha, y, norm), ref.add_rmsnorm(hb, y, norm), rtol=0, atol=1e-5)
    torch.testing.assert_close(ha, hb, rtol=0, atol=1e-6)
    gu = torch.randn(7, 2 * 96, generator=g, device=dev)
    torch.testing.assert_close(tri.gelu_mul(gu), ref.gelu_mul(gu), rtol=0, atol=1e-5)
    ln = torch.nn.LayerNorm(40).to(dev)
    x, y, bb = (torch.randn(5, 40, generator=g, device=dev) for _ in range(3))
    xa, xb = x.clone(), x.clone()
    torch.testing.assert_close(tri.add_layernorm(xa, y, bb[0], ln), ref.add_layernorm(xb, y, bb[0], ln),
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(xa, xb, rtol=0, atol=1e-6)
    for beta in (None, torch.tensor(1.5, device=dev)):
        x = torch.randn(1, 10, 4, generator=g, device=dev)
        v = torch.randn(20 if beta is not None else 10, 4, generator=g, device=dev)
        xa, xb = x.clone(), x.clone()
        tri.euler(xa, v, -0.25, beta)
        ref.euler(xb, v, -0.25, beta)
        torch.testing.assert_close(xa, xb, rtol=0, atol=1e-6)


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
