"""Real-time chunking in the engines (issue 14): prefix weights, the guidance weight, the exact
(VJP) guidance and the gradient-free inpainting, on real models (the tiny reference export
through onnxruntime and torch, a LeRobot pi0 at tiny size), and the graph runners the GPU
captures, checked on the CPU."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reflex_ros.engine.capture_cache import graph_key
from reflex_ros.engine.loader import load_engine
from reflex_ros.engine.sampler import vjp_guide
from reflex_ros.engine.schedule import guidance_weight, inpaint_guide, make_noise, prefix_weights
from reflex_ros.engine.types import ChunkGuide, Observation, UsageError
from reflex_ros.policies.reference import torch_engine as TorchEngine
from reflex_ros.policies.reference.processor import prepare_inputs
from reflex_ros.policies.reference.weights import build_policy

NFE = 10


def _obs(info, seed: int = 0) -> Observation:
    rng = np.random.default_rng(seed)
    s = info.image_size
    if info.camera_names and not info.camera_names[0].startswith("camera"):
        images = {name: rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for name in info.camera_names}
    else:
        images = [rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for _ in range(info.num_cameras)]
    dim = info.state_dim or 6
    return Observation(images=images, state=(0.1 * rng.standard_normal(dim)).astype(np.float32),
                       instruction="pick up the cube")


def _noise(info, seed: int = 3) -> np.ndarray:
    return make_noise(seed, info.chunk_size, info.action_width)[0]


# ---------------------------------------------------------------------- the schedule


def test_prefix_weights_follow_lerobots_schedules() -> None:
    """d = 2 frozen rows, guided up to row 6 of 8 (LeRobot's get_prefix_weights)."""
    lin = np.array([1, 1, 0.8, 0.6, 0.4, 0.2, 0, 0])
    np.testing.assert_allclose(prefix_weights(2, 6, 8, "linear"), lin, atol=1e-6)
    np.testing.assert_allclose(prefix_weights(2, 6, 8, "zeros"), [1, 1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(prefix_weights(2, 6, 8, "ones"), [1, 1, 1, 1, 1, 1, 0, 0])
    ramp = lin[2:6]
    exp = np.concatenate([[1, 1], ramp * np.expm1(ramp) / (math.e - 1), [0, 0]])
    np.testing.assert_allclose(prefix_weights(2, 6, 8, "EXP"), exp, atol=1e-6)
    # the delay is capped at the horizon, the horizon at the chunk
    np.testing.assert_allclose(prefix_weights(9, 3, 5, "linear"), [1, 1, 1, 0, 0])
    np.testing.assert_allclose(prefix_weights(0, 99, 3, "linear"), [0.75, 0.5, 0.25])
    with pytest.raises(UsageError, match="schedule must be one of"):
        prefix_weights(1, 2, 3, "cosine")


def test_guidance_weight_is_capped_c_times_inv_r2() -> None:
    assert guidance_weight(1.0, 10.0) == 10.0  # tau = 0: c is infinite
    assert guidance_weight(0.5, 10.0) == pytest.approx(2.0)  # the minimum
    t = 0.2  # (t^2 + (1-t)^2) / (t (1-t)), symmetric in t <-> 1-t
    assert guidance_weight(t, 10.0) == pytest.approx((t * t + (1 - t) ** 2) / (t * (1 - t)))
    assert guidance_weight(t, 10.0) == pytest.approx(guidance_weight(1 - t, 10.0))
    assert guidance_weight(0.1, 5.0) == 5.0
    cap = torch.tensor(3.0)
    assert float(guidance_weight(0.5, cap)) == pytest.approx(2.0) and float(guidance_weight(0.9, cap)) == 3.0


def test_vjp_guide_is_the_exact_vector_jacobian_product() -> None:
    """For v(x) = A x + b the predicted clean chunk is x1 = (I - t A) x - t b, so the guided
    velocity must be v - w(t) (I - t A)^T W (Y - x1): the Jacobian enters (LeRobot's code
    drops it: its v is computed before x requires grad), and the sign is the one our
    noise-at-t=1 convention needs."""
    torch.manual_seed(0)
    n = 6
    a = torch.randn(n, n, dtype=torch.float64)
    b = torch.randn(n, dtype=torch.float64)
    x = torch.randn(1, 1, n, dtype=torch.float64)
    target = torch.randn(1, 1, n, dtype=torch.float64)
    weights = torch.rand(1, 1, n, dtype=torch.float64)
    t = 0.7

    def velocity_at(z: torch.Tensor) -> torch.Tensor:
        return z @ a.T + b

    v = velocity_at(x)
    x1 = x - t * v
    jac = torch.eye(n, dtype=torch.float64) - t * a
    expected = v - guidance_weight(t, 10.0) * (((target - x1) * weights) @ jac)
    with torch.no_grad():
        got = vjp_guide(target, weights, 10.0)(x, t, velocity_at)
    torch.testing.assert_close(got, expected)
    # an Euler step along it moves x1 towards the target (dt < 0)
    step = x + (-0.1) * got
    before = float(((target - x1) * weights).square().sum())
    after = float(((target - (step - (t - 0.1) * velocity_at(step))) * weights).square().sum())
    assert after < before


def test_inpaint_guide_lands_weighted_rows_on_the_target() -> None:
    x = np.array([[[0.3, -1.0]]], np.float32)
    target = np.array([[[2.0, 5.0]]], np.float32)
    weights = np.array([[[1.0, 0.0]]], np.float32)
    v = np.array([[[0.5, 0.25]]], np.float32)
    t = 0.4
    got = inpaint_guide(target, weights)(x, t, lambda _: v)
    assert (x - t * got)[0, 0, 0] == pytest.approx(2.0)  # the predicted clean row is the target
    assert got[0, 0, 1] == pytest.approx(0.25)  # weight 0: untouched


# ---------------------------------------------------------------------- engines


@pytest.fixture(scope="module")
def engines(tiny_export):
    onnx = load_engine(tiny_export, engine="onnx")
    torch_eng = load_engine(tiny_export, engine="torch")
    yield onnx, torch_eng
    onnx.close()
    torch_eng.close()


def _frozen_error(actions: np.ndarray, target: np.ndarray, d: int) -> float:
    return float(np.abs(actions[:d] - target[:d]).max())


def test_exact_guidance_pulls_the_frozen_rows_to_the_target(engines) -> None:
    """torch engine, mode guided: the d frozen rows of the output are pulled towards the
    target (by the VJP through the real model), the unguided tail stays a sample."""
    _, eng = engines
    info = eng.info
    assert info.guide_modes == ("guided", "inpaint")
    obs, noise = _obs(info), _noise(info)
    free = eng.infer(obs, nfe=NFE, noise=noise).actions
    target = free[:30] + 0.4
    guide = ChunkGuide(target, delay=5, horizon=15, schedule="linear", max_weight=10.0, mode="guided")
    steered = eng.infer(obs, nfe=NFE, noise=noise, guide=guide).actions
    assert _frozen_error(free, target, 5) == pytest.approx(0.4, abs=1e-5)
    assert _frozen_error(steered, target, 5) < 0.5 * 0.4
    # rows past the horizon are not pulled (they move only through the model's coupling)
    assert np.abs(steered[30:] - target[29]).mean() > 0.1
    # a weaker cap pulls less
    weak = eng.infer(obs, nfe=NFE, noise=noise, guide=ChunkGuide(target, 5, 15, "linear", 0.5, "guided")).actions
    assert np.abs(steered[:5] - target[:5]).mean() < np.abs(weak[:5] - target[:5]).mean()


def test_inpaint_on_onnx_and_torch_agree_and_freeze_rows(engines) -> None:
    """mode inpaint: frozen rows (weight 1) end exactly on the target, on both engines alike;
    the ONNX engine refuses the exact guidance with a message naming the alternatives."""
    onnx, eng = engines
    assert onnx.info.guide_modes == ("inpaint",)
    info = onnx.info
    obs, noise = _obs(info, 1), _noise(info, 4)
    target = onnx.infer(obs, nfe=NFE, noise=noise).actions[:20] - 0.3
    guide = ChunkGuide(target, delay=4, horizon=12, schedule="exp", max_weight=10.0, mode="inpaint")
    a = onnx.infer(obs, nfe=NFE, noise=noise, guide=guide).actions
    b = eng.infer(obs, nfe=NFE, noise=noise, guide=guide).actions
    np.testing.assert_allclose(a[:4], target[:4], atol=1e-5)
    np.testing.assert_allclose(a, b, atol=2e-4)
    with pytest.raises(UsageError, match="cannot run real-time chunking in mode 'guided'.*rtc_mode inpaint"):
        onnx.infer(obs, nfe=NFE, guide=ChunkGuide(target, 4, 12, mode="guided"))
    with pytest.raises(UsageError, match=r"guide target has shape \(3, 2\)"):
        onnx.infer(obs, nfe=NFE, guide=ChunkGuide(np.zeros((3, 2)), 1, 2, mode="inpaint"))


def test_monolithic_layout_offers_no_guidance(tiny_export) -> None:
    eng = load_engine(tiny_export, engine="onnx", layout="monolithic")
    try:
        assert eng.info.guide_modes == ()
        with pytest.raises(UsageError, match="offers: none.*decomposed export"):
            eng.infer(_obs(eng.info), guide=ChunkGuide(np.zeros((4, eng.info.action_dim)), 1, 2, mode="inpaint"))
    finally:
        eng.close()


# ---------------------------------------------------------------------- what the GPU captures


def _fill(runner, arrays: dict) -> None:
    for name, arr in arrays.items():
        runner.inputs[name].copy_(torch.from_numpy(runner.stage(name, arr)))


@pytest.mark.parametrize("mode", ["guided", "inpaint"])
def test_guided_graph_runners_match_eager(mode: str) -> None:
    """The stage functions a guided CUDA-graph plan captures (on the CPU here): ``inpaint``
    inside the fused fast path (its euler steered), ``guided`` on the model's own code with
    the VJP, both reading the static guide buffers, reproduce eager guided inference."""
    eng = TorchEngine(build_policy("tiny"))
    cfg, info = eng.model.cfg, eng.info
    obs, noise = _obs(info, 5), _noise(info, 6)
    free = eng.infer(obs, nfe=4, noise=noise).actions
    guide = ChunkGuide(free[:25] + 0.2, delay=3, horizon=10, schedule="linear", max_weight=8.0, mode=mode)
    eager = eng.infer(obs, nfe=4, noise=noise, guide=guide).actions
    from reflex_ros.engine.schedule import guide_arrays

    arrays = prepare_inputs(obs, cfg)
    arrays["noise"] = noise[None]
    arrays["guide_target"], arrays["guide_weights"] = guide_arrays(
        guide, eng.processor.normalize_actions, info.chunk_size, info.action_width, info.action_dim)
    with torch.no_grad():
        runner = eng.build_runner(graph_key(4, cfg.chunk_size, None), mode)
        assert (runner.fused is not None) == (mode == "inpaint") and runner.guide_mode == mode
        _fill(runner, arrays)
        runner.inputs["guide_max"].fill_(8.0)
        out = runner.run_denoise(runner.run_prefix())
    np.testing.assert_allclose(out[0].numpy(), eager, atol=1e-5)
    assert eng.fused.ops.__class__.__name__ == "FusedOps"  # the proxy is gone after the call


def test_lerobot_normalize_actions_inverts_postprocess(smolvla_export) -> None:
    """The guidance target goes into the model's space: a LeRobot export's normalize_actions
    (its MEAN_STD / MIN_MAX statistics, zero-padded to max_action_dim) is the inverse of
    postprocess, and the padding columns are never steered."""
    from reflex_ros.engine.schedule import guide_arrays

    eng = load_engine(smolvla_export, engine="onnx")
    try:
        info, proc = eng.info, eng.processor
        assert info.action_width > info.action_dim and info.guide_modes == ("inpaint",)
        actions = np.random.default_rng(0).uniform(-1, 1, (7, info.action_dim)).astype(np.float32)
        model_space = proc.normalize_actions(actions)
        assert model_space.shape == (7, info.action_width) and not model_space[:, info.action_dim:].any()
        assert not np.allclose(model_space[:, : info.action_dim], actions)  # real statistics
        padded = np.zeros((info.chunk_size, info.action_width), np.float32)
        padded[:7] = model_space
        np.testing.assert_allclose(proc.postprocess(padded)[:7], actions, atol=1e-5)
        target, weights = guide_arrays(ChunkGuide(actions, 2, 5, mode="inpaint"), proc.normalize_actions,
                                       info.chunk_size, info.action_width, info.action_dim)
        assert not weights[0, :, info.action_dim:].any() and (weights[0, :2, : info.action_dim] == 1).all()
        assert not weights[0, 5:].any() and np.array_equal(target[0, :7], model_space)
    finally:
        eng.close()


def test_lerobot_pi0_exact_guidance() -> None:
    """A LeRobot pi0 (tiny, random weights): the VJP runs through the family's own velocity
    (prefix K/V from no_grad, the step under enable_grad) and pulls the frozen rows."""
    from reflex_ros.policies.lerobot.published import published_engine

    eng = published_engine("pi0", "tiny", device="cpu", dtype="fp32", state_dim=6, action_dim=6)
    info = eng.info
    assert info.action_width > info.action_dim and info.guide_modes == ("guided", "inpaint")
    obs, noise = _obs(info, 2), _noise(info, 2)
    free = eng.infer(obs, nfe=NFE, noise=noise).actions
    target = free[:20] + 0.5
    steered = eng.infer(obs, nfe=NFE, noise=noise,
                        guide=ChunkGuide(target, 4, 10, "linear", 10.0, "guided")).actions
    assert _frozen_error(steered, target, 4) < 0.5 * _frozen_error(free, target, 4)
