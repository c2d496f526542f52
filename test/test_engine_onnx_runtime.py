"""The ONNX Runtime engine and the loader, on real tiny exports (issue 2).

The GPU providers cannot run here (onnxruntime is CPU-only on every machine we have), so the
provider ladder and the CUDA/TensorRT option construction are tested as pure functions, and
the IO-binding code they share with CPU is exercised for real on CPU.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from reflex_ros.engine.bundle import CONFIG_FILE, MONOLITHIC_FILE
from reflex_ros.engine.loader import load_engine
from reflex_ros.engine.onnx_runtime import (
    CPU,
    CUDA,
    TRT,
    OnnxEngine,
    available_providers,
    check_engine_options,
    provider_chain,
    resolve_provider,
    trt_profile_shapes,
)
from reflex_ros.engine.sampler import sample_actions
from reflex_ros.engine.types import (
    ChunkResult,
    Engine,
    ExportError,
    Observation,
    ObservationError,
    ProviderUnavailableError,
    ReflexError,
)
from reflex_ros.policies.reference.processor import prepare_inputs
from reflex_ros.policies.reference.weights import load_policy

STRICT = 1e-5


def _obs(engine, seed: int = 0, state_dim: int = 6, instruction: str = "pick up the red cube") -> Observation:
    rng = np.random.default_rng(seed)
    size, n = engine.info.image_size, engine.info.num_cameras
    images = [rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8) for _ in range(n)]
    state = rng.uniform(-1, 1, size=state_dim).astype(np.float32)
    return Observation(images, state, instruction, stamp_ns=1_234_567_890)


def _noise(engine, seed: int = 1) -> np.ndarray:
    shape = (engine.info.chunk_size, engine.info.action_dim)
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


@pytest.fixture(scope="module")
def decomposed(tiny_export: Path) -> OnnxEngine:
    engine = load_engine(tiny_export)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def monolithic(tiny_export: Path) -> OnnxEngine:
    engine = load_engine(tiny_export, layout="monolithic")
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def torch_policy(tiny_export: Path):
    return load_policy(tiny_export, device="cpu", dtype="fp32")


def _torch_actions(model, obs: Observation, noise: np.ndarray, nfe: int, cfg_beta: float | None) -> np.ndarray:
    inputs = {k: torch.from_numpy(v) for k, v in prepare_inputs(obs, model.cfg, cfg_beta).items()}
    with torch.inference_mode():
        out = sample_actions(model, inputs, torch.from_numpy(noise[None]), nfe, cfg_beta)
    return out[0].numpy()


# --------------------------------------------------------------------------- serving == torch


@pytest.mark.parametrize(("nfe", "cfg_beta"), [(10, None), (4, None), (1, None), (10, 1.5), (2, 2.5)])
def test_decomposed_matches_torch_sample_actions(decomposed, torch_policy, nfe, cfg_beta) -> None:
    obs, noise = _obs(decomposed, seed=nfe), _noise(decomposed, seed=nfe)
    got = decomposed.infer(obs, nfe=nfe, cfg_beta=cfg_beta, noise=noise)
    want = _torch_actions(torch_policy, obs, noise, nfe, cfg_beta)
    assert got.actions.shape == want.shape == (decomposed.info.chunk_size, decomposed.info.action_dim)
    assert np.abs(got.actions - want).max() <= STRICT
    assert got.nfe == nfe and got.cfg_beta == cfg_beta


def test_cfg_actually_changes_the_chunk(decomposed) -> None:
    obs, noise = _obs(decomposed), _noise(decomposed)
    plain = decomposed.infer(obs, noise=noise).actions
    guided = decomposed.infer(obs, cfg_beta=2.0, noise=noise).actions
    assert np.abs(plain - guided).max() > 1e-4


def test_monolithic_matches_torch_at_its_nfe(monolithic, torch_policy) -> None:
    obs, noise = _obs(monolithic, seed=3), _noise(monolithic, seed=3)
    got = monolithic.infer(obs, noise=noise)
    assert got.nfe == 10
    assert np.abs(got.actions - _torch_actions(torch_policy, obs, noise, 10, None)).max() <= STRICT


def test_returned_chunk_is_not_overwritten_by_the_next_call(monolithic) -> None:
    """Outputs live in static bound buffers; a returned chunk must be the caller's own copy."""
    obs = _obs(monolithic)
    first = monolithic.infer(obs, noise=_noise(monolithic, seed=1)).actions
    kept = first.copy()
    monolithic.infer(obs, noise=_noise(monolithic, seed=2))
    assert np.array_equal(first, kept)


def test_monolithic_serves_only_its_nfe_and_no_cfg(monolithic) -> None:
    assert monolithic.info.supported_nfe == (10,)
    obs = _obs(monolithic)
    with pytest.raises(ReflexError, match="only its unrolled nfe=10, got nfe=4.*layout='decomposed'"):
        monolithic.infer(obs, nfe=4)
    with pytest.raises(ReflexError, match="monolithic graph has no CFG"):
        monolithic.infer(obs, cfg_beta=1.5)


def test_prefix_runs_once_per_chunk_and_kv_is_reused(decomposed) -> None:
    obs = _obs(decomposed)
    before = decomposed.run_counts
    decomposed.infer(obs, nfe=8)
    decomposed.infer(obs, nfe=2, cfg_beta=1.5)
    after = decomposed.run_counts
    assert after["prefix"] - before["prefix"] == 2
    assert after["expert"] - before["expert"] == 8 + 2


def test_static_buffers_survive_switching_batch_size(decomposed, tiny_export: Path) -> None:
    """Batch 1 and batch 2 (CFG) have separate bound buffers; interleaving them must give the
    same chunks as a fresh engine does."""
    obs, noise = _obs(decomposed, seed=7), _noise(decomposed, seed=7)
    a1 = decomposed.infer(obs, nfe=4, noise=noise).actions
    a2 = decomposed.infer(obs, nfe=4, cfg_beta=2.0, noise=noise).actions
    a3 = decomposed.infer(obs, nfe=4, noise=noise).actions
    fresh = load_engine(tiny_export)
    try:
        b2 = fresh.infer(obs, nfe=4, cfg_beta=2.0, noise=noise).actions
    finally:
        fresh.close()
    assert np.array_equal(a1, a3)
    assert np.array_equal(a2, b2)


def test_chunk_result_and_info(decomposed, tiny_export: Path) -> None:
    assert isinstance(decomposed, Engine)
    info = decomposed.info
    assert (info.engine, info.provider, info.dtype) == ("onnx", CPU, "fp32")
    assert info.supported_nfe == tuple(range(1, 101))
    assert info.camera_names == ("camera0",) and info.model_type == "reflex_ros_flow_vla"
    config = json.loads((tiny_export / CONFIG_FILE).read_text())
    assert (info.chunk_size, info.action_dim, info.image_size) == (
        config["chunk_size"], config["action_dim"], config["image_size"])
    assert info.extra["layout"] == "decomposed"
    res = decomposed.infer(_obs(decomposed))
    assert isinstance(res, ChunkResult)
    assert res.actions.dtype == np.float32 and np.all(np.isfinite(res.actions))
    assert res.nfe == 10 and res.stamp_ns == 1_234_567_890
    assert set(res.timings_ms) == {"preprocess", "prefix", "denoise", "total"}
    assert all(v >= 0 for v in res.timings_ms.values())
    parts = res.timings_ms["preprocess"] + res.timings_ms["prefix"] + res.timings_ms["denoise"]
    assert parts == pytest.approx(res.timings_ms["total"], rel=1e-6)


def test_noise_makes_it_deterministic(decomposed) -> None:
    obs, noise = _obs(decomposed), _noise(decomposed)
    assert np.array_equal(decomposed.infer(obs, noise=noise).actions, decomposed.infer(obs, noise=noise).actions)
    assert not np.array_equal(decomposed.infer(obs).actions, decomposed.infer(obs).actions)


def test_torch_engine_from_the_same_export_agrees(tiny_export: Path, decomposed) -> None:
    engine = load_engine(tiny_export, engine="torch", provider="cpu")
    try:
        assert engine.info.engine == "torch"
        assert engine.info.model_hash == decomposed.info.model_hash
        obs, noise = _obs(decomposed, seed=5), _noise(decomposed, seed=5)
        a = engine.infer(obs, nfe=4, cfg_beta=1.5, noise=noise).actions
        b = decomposed.infer(obs, nfe=4, cfg_beta=1.5, noise=noise).actions
        assert np.abs(a - b).max() <= STRICT
    finally:
        engine.close()


def test_two_camera_export_serves_two_images(tiny_export_2cam: Path) -> None:
    engine = load_engine(tiny_export_2cam)
    try:
        assert engine.info.num_cameras == 2
        res = engine.infer(_obs(engine), nfe=2)
        assert res.actions.shape == (engine.info.chunk_size, engine.info.action_dim)
        obs = _obs(engine)
        obs.images = obs.images[:1]
        with pytest.raises(ObservationError, match="has 1 image.*expects 2"):
            engine.infer(obs)
        # by name: the same images as a mapping give the same chunk; a missing or unknown
        # camera is an error (the reference family has no missing-camera semantics)
        obs = _obs(engine)
        noise = _noise(engine)
        by_name = Observation(dict(zip(engine.info.camera_names, obs.images, strict=True)), obs.state, obs.instruction)
        assert np.array_equal(engine.infer(obs, noise=noise).actions, engine.infer(by_name, noise=noise).actions)
        with pytest.raises(ObservationError, match=r"lacks camera\(s\) \['camera1'\]"):
            engine.infer(Observation({"camera0": obs.images[0]}, obs.state, "x"))
        with pytest.raises(ObservationError, match=r"unknown camera\(s\) \['top'\]"):
            engine.infer(Observation({**by_name.images, "top": obs.images[0]}, obs.state, "x"))
    finally:
        engine.close()


def test_cameras_at_any_size_are_resized_by_the_processor(decomposed) -> None:
    """Cameras arrive at their own resolution; the reference processor stretches them to the
    model's square input (bilinear), so a 2x frame gives the chunk its downscaled copy gives."""
    from reflex_ros.policies.imaging import resize_rgb

    size = decomposed.info.image_size
    big = np.random.default_rng(3).integers(0, 256, size=(2 * size, 3 * size, 3), dtype=np.uint8)
    state = np.zeros(4, np.float32)
    noise = _noise(decomposed)
    a = decomposed.infer(Observation([big], state, "x"), noise=noise).actions
    b = decomposed.infer(Observation([resize_rgb(big, size)], state, "x"), noise=noise).actions
    assert np.array_equal(a, b)
    c = decomposed.infer(Observation([big[:size, :size]], state, "x"), noise=noise).actions
    assert not np.array_equal(a, c)


# --------------------------------------------------------------------------- bad requests


def test_bad_observations_are_observation_errors(decomposed) -> None:
    size = decomposed.info.image_size
    good = _obs(decomposed)
    cases = [
        (Observation([np.zeros((size, size), np.uint8)], good.state, "x"), r"images\['camera0'\] has shape"),
        (Observation([np.zeros((size, size, 3), np.float32)], good.state, "x"), r"images\['camera0'\] has dtype float32"),
        (Observation([], good.state, "x"), "has 0 image"),
        (Observation(good.images, np.array([0.1, np.nan], np.float32), "x"), r"state\[1\] is nan"),
        (Observation(good.images, np.zeros(decomposed.info.max_state_dim + 1, np.float32), "x"),
         f"max_state_dim={decomposed.info.max_state_dim}"),
        (Observation(good.images, np.zeros((2, 3), np.float32), "x"), "expected \\(state_dim,\\)"),
    ]
    for obs, pattern in cases:
        with pytest.raises(ObservationError, match=pattern):
            decomposed.infer(obs)
    with pytest.raises(ObservationError, match=r"noise has shape \(3, 8\)"):
        decomposed.infer(good, noise=np.zeros((3, 8), np.float32))


def test_bad_nfe_and_cfg_are_clear_errors(decomposed) -> None:
    obs = _obs(decomposed)
    with pytest.raises(ReflexError, match=r"nfe=0 is not supported; choose one of 1\.\.100"):
        decomposed.infer(obs, nfe=0)
    with pytest.raises(ReflexError, match="cfg_beta must be >= 1.0"):
        decomposed.infer(obs, cfg_beta=0.5)


def test_closed_engine_refuses(tiny_export: Path) -> None:
    engine = load_engine(tiny_export, provider="cpu")
    engine.close()
    with pytest.raises(ReflexError, match="closed"):
        engine.infer(_obs(engine))


# --------------------------------------------------------------------------- loader / bundle errors


def test_loader_errors_name_the_thing(tiny_export: Path, tmp_path: Path) -> None:
    with pytest.raises(ReflexError, match="unknown engine 'tensorflow'"):
        load_engine(tiny_export, engine="tensorflow")
    with pytest.raises(ExportError, match="does not exist"):
        load_engine(tmp_path / "missing")
    copy = tmp_path / "decomposed_only"
    shutil.copytree(tiny_export, copy)
    config = json.loads((copy / CONFIG_FILE).read_text())
    del config["monolithic"]
    (copy / CONFIG_FILE).write_text(json.dumps(config))
    (copy / MONOLITHIC_FILE).unlink()
    assert load_engine(copy).info.extra["layout"] == "decomposed"
    with pytest.raises(ExportError, match="layout 'monolithic' is not in .*present: decomposed"):
        load_engine(copy, layout="monolithic")


def test_graph_that_onnxruntime_rejects_is_an_export_error(tiny_export: Path, tmp_path: Path) -> None:
    """A graph that parses and has the right signature but cannot be built by onnxruntime
    (here: an initializer removed) must surface as ExportError, not an ORT traceback."""
    import onnx

    copy = tmp_path / "broken"
    shutil.copytree(tiny_export, copy)
    model = onnx.load(str(copy / MONOLITHIC_FILE))
    del model.graph.initializer[0]
    onnx.save(model, str(copy / MONOLITHIC_FILE))
    with pytest.raises(ExportError, match=f"onnxruntime could not load .*{MONOLITHIC_FILE}.*reflex-ros export"):
        load_engine(copy, layout="monolithic")


# --------------------------------------------------------------------------- providers


def test_provider_ladder_picks_the_first_available() -> None:
    assert resolve_provider(None, ["AzureExecutionProvider", CPU]) == CPU
    assert resolve_provider(None, [CUDA, CPU]) == CUDA
    assert resolve_provider(None, [CPU, CUDA, TRT]) == TRT
    with pytest.raises(ProviderUnavailableError, match="available: AzureExecutionProvider"):
        resolve_provider(None, ["AzureExecutionProvider"])


def test_requested_provider_is_strict() -> None:
    assert resolve_provider("cpu", [CUDA, CPU]) == CPU
    assert resolve_provider("tensorrt", [TRT, CUDA, CPU]) == TRT
    with pytest.raises(ProviderUnavailableError, match=f"{CUDA} is not available.*available: AzureExecutionProvider, {CPU}"):
        resolve_provider("cuda", ["AzureExecutionProvider", CPU])
    with pytest.raises(ProviderUnavailableError, match="unknown execution provider 'vulkan'"):
        resolve_provider("vulkan", [CPU])


def test_engine_refuses_unavailable_provider_on_this_machine(tiny_export: Path) -> None:
    missing = [p for p in (CUDA, TRT) if p not in available_providers()]
    if not missing:
        pytest.skip("this onnxruntime has the GPU providers")
    with pytest.raises(ProviderUnavailableError, match=f"{missing[0]} is not available.*{CPU}"):
        load_engine(tiny_export, provider=missing[0])


def test_option_combinations_the_provider_cannot_honour() -> None:
    with pytest.raises(ProviderUnavailableError, match="cuda_graph needs"):
        check_engine_options(CPU, "fp32", True, [CPU])
    with pytest.raises(ProviderUnavailableError, match="fp16 needs TensorrtExecutionProvider"):
        check_engine_options(CUDA, "fp16", False, [CUDA, CPU])
    with pytest.raises(ProviderUnavailableError, match="bf16 runs on the torch engine"):
        check_engine_options(TRT, "bf16", False, [TRT])
    check_engine_options(TRT, "fp16", True, [TRT, CUDA, CPU])  # the combination that is valid


def test_cuda_provider_options() -> None:
    assert provider_chain(CPU) == [(CPU, {})]
    assert provider_chain(CUDA, device_id=1) == [(CUDA, {"device_id": "1", "use_tf32": "0"})]
    chain = provider_chain(CUDA, cuda_graph=True)
    assert chain == [(CUDA, {"device_id": "0", "use_tf32": "0", "enable_cuda_graph": "1"})]


def test_tensorrt_provider_options(tmp_path: Path) -> None:
    profile = trt_profile_shapes([("x_t", "float32", ("batch", 50, 8)), ("t", "float32", ("batch",))], (1, 2))
    assert profile == {
        "trt_profile_min_shapes": "x_t:1x50x8,t:1",
        "trt_profile_opt_shapes": "x_t:2x50x8,t:2",
        "trt_profile_max_shapes": "x_t:2x50x8,t:2",
    }
    (trt_name, trt), (next_name, _) = provider_chain(
        TRT, fp16=True, cuda_graph=True, trt_cache_dir=tmp_path, trt_profile=profile
    )
    assert (trt_name, next_name) == (TRT, CUDA)  # CUDA takes the nodes TensorRT cannot compile
    assert trt["trt_fp16_enable"] == "1"
    assert trt["trt_engine_cache_enable"] == "1" and trt["trt_engine_cache_path"] == str(tmp_path)
    assert trt["trt_cuda_graph_enable"] == "1"
    assert trt["trt_profile_max_shapes"] == "x_t:2x50x8,t:2"
    plain = provider_chain(TRT)[0][1]
    assert plain["trt_fp16_enable"] == "0" and plain["trt_engine_cache_enable"] == "0"


# --------------------------------------------------------------------------- no torch on the ONNX path


def test_onnx_serving_path_never_imports_torch(tiny_export: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        import reflex_ros.engine.onnx_runtime, reflex_ros.engine.loader, reflex_ros.engine.bundle
        from reflex_ros.engine.loader import load_engine
        from reflex_ros.engine.types import Observation
        engine = load_engine({str(tiny_export)!r})
        size = engine.info.image_size
        obs = Observation([np.zeros((size, size, 3), np.uint8)], np.zeros(4, np.float32), "pick")
        res = engine.infer(obs, nfe=2, cfg_beta=1.5)
        print(res.actions.shape, "torch" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(50, 8) False"


def test_tensorrt_is_available_only_where_its_runtime_loads(monkeypatch) -> None:
    """onnxruntime-gpu lists TensorrtExecutionProvider even without TensorRT's libraries (they
    are not on PyPI); a session would then fail at creation, so the ladder must not pick it."""
    import onnxruntime as ort

    from reflex_ros.engine import onnx_runtime as rt

    monkeypatch.setattr(ort, "get_available_providers", lambda: [TRT, CUDA, CPU])
    monkeypatch.setattr(rt, "TENSORRT_LIBRARIES", ("libnvinfer_that_does_not_exist.so.99",))
    assert rt.available_providers() == [CUDA, CPU]
    assert resolve_provider(None, rt.available_providers()) == CUDA


def test_pinned_batch_sessions_compute_what_the_dynamic_one_does(decomposed, tiny_export: Path) -> None:
    """CUDA-graph mode gives each batch size its own session with the dynamic batch axis
    pinned (onnxruntime captures only all-GPU graphs; a symbolic batch leaves the shape
    arithmetic on the CPU). Checked here on the CPU provider: pinned sessions per batch, the
    same chunks as the one dynamic session, with and without CFG."""
    from reflex_ros.engine.onnx_runtime import _Graph

    obs, noise = _obs(decomposed, seed=3), _noise(decomposed, seed=3)
    want = [decomposed.infer(obs, nfe=4, noise=noise).actions, decomposed.infer(obs, nfe=4, cfg_beta=2.0, noise=noise).actions]
    engine = load_engine(tiny_export)
    try:
        for role, graph in list(engine._graphs.items()):
            engine._graphs[role] = _Graph(graph.path, graph.inputs, graph.outputs, provider=CPU, chain=[(CPU, {})],
                                          device_id=0, cuda_graph=True, intra_op_threads=None, err=ExportError)
        got = [engine.infer(obs, nfe=4, noise=noise).actions, engine.infer(obs, nfe=4, cfg_beta=2.0, noise=noise).actions]
        prefix = engine._graphs["prefix"]
        assert sorted(prefix._sessions) == [1, 2]  # one pinned session per batch size
        assert prefix._sessions[1] is not prefix._sessions[2]
    finally:
        engine.close()
    for a, b in zip(got, want, strict=True):
        assert np.abs(a - b).max() <= STRICT
