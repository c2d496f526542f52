"""Reference family: model, tokenizer, schedule, processor and weights; real torch, tiny preset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from reflex_ros.engine.floor import prefix_flops, weight_bytes_per_chunk
from reflex_ros.engine.sampler import MonolithicPolicy, sample_actions
from reflex_ros.engine.schedule import (
    cfg_combine,
    check_cfg_beta,
    check_nfe,
    euler_loop,
    euler_schedule,
    make_noise,
    validate_noise,
)
from reflex_ros.engine.types import ExportError, Observation, ObservationError
from reflex_ros.policies.imaging import resize_rgb
from reflex_ros.policies.reference.config import PRESETS, PolicyConfig, get_preset
from reflex_ros.policies.reference.model import FlowPolicy
from reflex_ros.policies.reference.processor import prepare_inputs
from reflex_ros.policies.reference.tokenizer import ADVANTAGE_SUFFIX, cfg_prompts, detokenize, tokenize
from reflex_ros.policies.reference.weights import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    build_policy,
    clone_policy,
    load_policy,
    save_policy,
)


@pytest.fixture(scope="module")
def model() -> FlowPolicy:
    return build_policy("tiny")


def make_obs(cfg: PolicyConfig, seed: int = 0, state_dim: int = 6, instruction: str = "pick up the cube") -> Observation:
    rng = np.random.default_rng(seed)
    s = cfg.image_size
    return Observation(
        images=[rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for _ in range(cfg.num_cameras)],
        state=rng.standard_normal(state_dim).astype(np.float32),
        instruction=instruction,
    )


def tensors(obs: Observation, cfg: PolicyConfig, beta: float | None = None) -> dict[str, torch.Tensor]:
    arr = prepare_inputs(obs, cfg, beta)
    return {k: torch.from_numpy(v) for k, v in arr.items()}


def sample(model: FlowPolicy, t: dict[str, torch.Tensor], noise: torch.Tensor, nfe: int,
           cfg_beta: float | None = None) -> torch.Tensor:
    return sample_actions(model, t, noise, nfe, cfg_beta)


def sample_kw(model: FlowPolicy, *, noise: torch.Tensor, nfe: int, cfg_beta: float | None = None,
              **inputs: torch.Tensor) -> torch.Tensor:
    return sample_actions(model, inputs, noise, nfe, cfg_beta)


def noise_t(cfg: PolicyConfig, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(make_noise(seed, cfg.chunk_size, cfg.action_dim))


# -- config ---------------------------------------------------------------------------------


def test_config_json_roundtrip_and_overrides() -> None:
    cfg = get_preset("small", num_cameras=3)
    assert cfg.num_cameras == 3 and PRESETS["small"].num_cameras == 2
    back = PolicyConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    with pytest.raises(ValueError, match="unknown model preset"):
        get_preset("huge")
    with pytest.raises(ValueError, match="unknown keys"):
        PolicyConfig.from_dict({**cfg.to_dict(), "widht": 3})
    with pytest.raises(ValueError, match="patch_size"):
        get_preset("tiny", patch_size=15)


def test_preset_sizes() -> None:
    counts = {}
    for name in PRESETS:
        with torch.device("meta"):
            counts[name] = FlowPolicy(get_preset(name)).num_parameters()
    assert counts["tiny"] < 2_000_000
    assert 10e6 < counts["small"] < 100e6
    assert 3.0e9 < counts["pi0"] < 3.5e9  # SigLIP-400M + Gemma-2B + Gemma-300M
    pi0 = PRESETS["pi0"]
    assert (pi0.width, pi0.depth, pi0.num_kv_heads, pi0.head_dim, pi0.expert_width) == (2048, 18, 1, 256, 1024)
    assert pi0.prefix_len == 2 * 256 + 48 + 1
    # floor arithmetic: ~2.4 GB of bf16 vision+prefix weights + 10 x 0.6 GB expert
    gb = weight_bytes_per_chunk(pi0, nfe=10) / 1e9
    assert 6.0 < gb < 12.0
    assert 1.0 < prefix_flops(pi0) / 1e12 < 5.0


# -- tokenizer / schedule --------------------------------------------------------------------


def test_tokenizer_roundtrip_and_clean_truncation() -> None:
    ids, mask = tokenize("grab the mug", 32)
    assert ids.dtype == np.int64 and mask.dtype == bool and ids.shape == mask.shape == (32,)
    assert ids[0] == 1 and ids[mask.sum() - 1] == 2 and detokenize(ids) == "grab the mug"
    assert ids.max() < PRESETS["tiny"].vocab_size
    long_ids, long_mask = tokenize("é" * 40, 11)  # 2-byte chars, 9 body bytes -> 4 chars
    assert long_mask.sum() == 10 and long_ids[9] == 2  # bos + 4 chars (8 bytes) + eos, 1 pad
    assert detokenize(long_ids) == "é" * 4
    cond, uncond = cfg_prompts("x" * 100, max_len=48)
    assert cond.endswith(ADVANTAGE_SUFFIX) and cond == uncond + ADVANTAGE_SUFFIX
    assert detokenize(tokenize(cond, 48)[0]).endswith("Advantage: positive")


def test_one_euler_loop_for_numpy_and_torch() -> None:
    """The same loop integrates numpy arrays (ONNX engine) and torch tensors (torch engine),
    with and without CFG, to the same result: x_N = x_0 + sum(dt * v_i)."""
    x0 = np.random.default_rng(0).standard_normal((1, 5, 3)).astype(np.float32)
    calls: list[float] = []

    def v_np(x, t_i):
        calls.append(t_i)
        return np.concatenate([x * t_i, x * 0.5 + t_i]).astype(np.float32)  # [cond, uncond]

    def v_t(x, t_i):
        return torch.cat([x * t_i, x * 0.5 + t_i])

    a = euler_loop(v_np, x0, 4, 1.5)
    b = euler_loop(v_t, torch.from_numpy(x0), 4, 1.5).numpy()
    assert calls == [1.0, 0.75, 0.5, 0.25]
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    plain = euler_loop(lambda x, t: x * t, x0, 2)  # x + (-0.5) * x * 1.0, then * (1 - 0.5 * 0.5)
    np.testing.assert_allclose(plain, x0 * 0.5 * 0.75, rtol=1e-6)


def test_schedule_and_checks() -> None:
    sched = euler_schedule(4)
    assert sched == [(1.0, -0.25), (0.75, -0.25), (0.5, -0.25), (0.25, -0.25)]
    assert sum(dt for _, dt in euler_schedule(10)) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match=r"\[1, 2, 4, 8, 10\]"):
        check_nfe(3)
    with pytest.raises(ValueError, match=r"choose one of 1\.\.100"):
        check_nfe(101, range(1, 101))
    assert check_cfg_beta(None) is None and check_cfg_beta(1.0) == 1.0
    with pytest.raises(ValueError, match="cfg_beta must be >= 1.0"):
        check_cfg_beta(0.5)
    vc, vu = np.ones(3, np.float32), np.zeros(3, np.float32)
    np.testing.assert_allclose(cfg_combine(vc, vu, 1.5), 1.5)


# -- preprocess ------------------------------------------------------------------------------


def test_prepare_inputs_shapes_and_cfg_batch() -> None:
    cfg = get_preset("tiny", num_cameras=2)
    obs = make_obs(cfg, instruction="grab it")
    one = prepare_inputs(obs, cfg)
    assert one["images"].shape == (1, 2, 64, 64, 3) and one["images"].dtype == np.uint8
    assert one["state"].shape == (1, cfg.max_state_dim) and one["state"].dtype == np.float32
    assert np.all(one["state"][0, 6:] == 0) and np.array_equal(one["state"][0, :6], obs.state)
    two = prepare_inputs(obs, cfg, 1.5)
    assert two["lang_tokens"].shape == (2, cfg.max_lang_tokens)
    assert detokenize(two["lang_tokens"][0]) == obs.instruction + ADVANTAGE_SUFFIX
    assert detokenize(two["lang_tokens"][1]) == obs.instruction
    assert np.array_equal(two["images"][0], two["images"][1])


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda o: o.images.pop(), r"has 0 image\(s\); the model expects 1"),
        (lambda o: o.images.__setitem__(0, np.zeros((32, 32), np.uint8)), r"images\['camera0'\] has shape \(32, 32\); expected uint8 RGB"),
        (lambda o: o.images.__setitem__(0, np.zeros((64, 64, 3), np.float32)), r"images\['camera0'\] has dtype float32; expected uint8"),
        (lambda o: setattr(o, "state", np.zeros(9, np.float32)), r"9 values; .*max_state_dim=8"),
        (lambda o: o.state.__setitem__(3, np.nan), r"state\[3\] is nan"),
        (lambda o: setattr(o, "state", np.array([0.0, 1e300], np.float64)), r"state\[1\] is 1e\+300, which does not fit in float32"),
        (lambda o: setattr(o, "state", np.zeros(4, np.int64)), r"dtype int64; expected float32"),
    ],
)
def test_prepare_inputs_errors_name_the_thing(mutate, match) -> None:
    cfg = PRESETS["tiny"]
    obs = make_obs(cfg)
    mutate(obs)
    with pytest.raises(ObservationError, match=match):
        prepare_inputs(obs, cfg)


def test_noise_validation() -> None:
    n = make_noise(3, 50, 8)
    assert n.shape == (1, 50, 8) and n.dtype == np.float32
    assert np.array_equal(validate_noise(n[0], 50, 8), n)
    with pytest.raises(ObservationError, match=r"expected \(50, 8\)"):
        validate_noise(np.zeros((50, 7), np.float32), 50, 8)
    bad = n.copy()
    bad[0, 1, 1] = np.inf
    with pytest.raises(ObservationError, match="finite"):
        validate_noise(bad, 50, 8)


# -- model and sampler -----------------------------------------------------------------------


def test_shapes(model: FlowPolicy) -> None:
    cfg = model.cfg
    t = tensors(make_obs(cfg), cfg, 1.5)
    kv, pm = model.prefix(**t)
    assert len(kv) == 2 * cfg.depth
    assert all(x.shape == (2, cfg.num_kv_heads, cfg.prefix_len, cfg.head_dim) for x in kv)
    assert [tuple(x.shape) for x in kv] == model.kv_shapes(2)
    assert pm.shape == (2, cfg.prefix_len) and pm.dtype == torch.bool
    v = model.velocity(torch.zeros(2, cfg.chunk_size, cfg.action_dim), torch.ones(2), kv, pm)
    assert v.shape == (2, cfg.chunk_size, cfg.action_dim) and torch.isfinite(v).all()


def test_deterministic_and_seeded(model: FlowPolicy) -> None:
    cfg = model.cfg
    t = tensors(make_obs(cfg), cfg)
    a = sample(model, t, noise_t(cfg), 10)
    b = sample(model, t, noise_t(cfg), 10)
    assert torch.equal(a, b) and a.shape == (1, cfg.chunk_size, cfg.action_dim)
    same = build_policy("tiny")
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), same.parameters(), strict=True))
    other = build_policy("tiny", seed=1)
    assert not torch.equal(other.action_out.weight, model.action_out.weight)


def test_kv_reuse_equals_recomputation(model: FlowPolicy) -> None:
    """The sampler's prefix-once loop equals recomputing the prefix at every step."""
    cfg = model.cfg
    t = tensors(make_obs(cfg, seed=1), cfg)
    nfe = 4
    x = noise_t(cfg, 1)
    for t_i, dt in euler_schedule(nfe):
        kv, pm = model.prefix(**t)
        x = x + dt * model.velocity(x, torch.full((1,), t_i), kv, pm)
    reused = sample_kw(model, **t, noise=noise_t(cfg, 1), nfe=nfe)
    torch.testing.assert_close(reused, x, rtol=0, atol=1e-6)


def test_padding_is_masked(model: FlowPolicy) -> None:
    """Token ids under lang_mask=False must not change the actions."""
    cfg = model.cfg
    t = tensors(make_obs(cfg), cfg)
    base = sample(model, t, noise_t(cfg), 2)
    t2 = dict(t)
    toks = t["lang_tokens"].clone()
    toks[~t["lang_masks"]] = 200
    t2["lang_tokens"] = toks
    torch.testing.assert_close(sample(model, t2, noise_t(cfg), 2), base, rtol=0, atol=1e-6)
    toks[0, 3] = 200  # a valid token: must matter
    assert not torch.allclose(sample(model, t2, noise_t(cfg), 2), base, atol=1e-4)


def test_nfe_choices_differ_and_are_finite(model: FlowPolicy) -> None:
    cfg = model.cfg
    t = tensors(make_obs(cfg), cfg)
    outs = [sample(model, t, noise_t(cfg), n) for n in (1, 2, 4, 8, 10)]
    for o in outs:
        assert torch.isfinite(o).all()
    for i in range(len(outs) - 1):
        assert not torch.allclose(outs[i], outs[i + 1], atol=1e-4)


def test_cfg_beta_one_equals_cond_only(model: FlowPolicy) -> None:
    cfg = model.cfg
    obs = make_obs(cfg)
    guided = sample_kw(model, **tensors(obs, cfg, 1.0), noise=noise_t(cfg), nfe=4, cfg_beta=1.0)
    cond_obs = make_obs(cfg, instruction=cfg_prompts(obs.instruction, cfg.max_lang_tokens)[0])
    cond = sample_kw(model, **tensors(cond_obs, cfg), noise=noise_t(cfg), nfe=4)
    torch.testing.assert_close(guided, cond, rtol=0, atol=1e-5)
    strong = sample_kw(model, **tensors(obs, cfg, 2.0), noise=noise_t(cfg), nfe=4, cfg_beta=2.0)
    assert not torch.allclose(strong, cond, atol=1e-4)
    with pytest.raises(ValueError, match="cfg_beta must be >= 1.0"):
        sample_kw(model, **tensors(obs, cfg, 1.0), noise=noise_t(cfg), nfe=4, cfg_beta=0.9)
    with pytest.raises(ValueError, match="batch 1; expected 2"):
        sample_kw(model, **tensors(obs, cfg), noise=noise_t(cfg), nfe=4, cfg_beta=1.5)


def test_batch2_slot_symmetry(model: FlowPolicy) -> None:
    """Same observation in both slots: identical velocities, and CFG collapses to no-CFG."""
    cfg = model.cfg
    t = tensors(make_obs(cfg), cfg)
    both = {k: torch.cat([v, v]) for k, v in t.items()}
    kv, pm = model.prefix(**both)
    v = model.velocity(noise_t(cfg).expand(2, -1, -1), torch.full((2,), 0.7), kv, pm)
    # bitwise on most BLAS builds; a CPU BLAS may block batch rows differently (seen on a Xeon)
    torch.testing.assert_close(v[0], v[1], rtol=0, atol=1e-5)  # 1.0e-6 seen; slot mixing gives O(1)
    guided = sample(model, both, noise_t(cfg), 4, 2.5)
    plain = sample(model, t, noise_t(cfg), 4)
    torch.testing.assert_close(guided, plain, rtol=0, atol=1e-4)


def test_monolithic_equals_sampler(model: FlowPolicy) -> None:
    cfg = model.cfg
    t = tensors(make_obs(cfg), cfg)
    mono = MonolithicPolicy(model, nfe=8, input_names=model.prefix_input_names)
    out = mono(*(t[n] for n in model.prefix_input_names), noise_t(cfg))
    assert torch.equal(out, sample(model, t, noise_t(cfg), 8))


def test_deep_init_is_well_scaled() -> None:
    """pi0 depths (27 vision, 18 LM) at reduced width: no blow-up, bf16 tracks fp32."""
    cfg = get_preset("pi0", image_size=56, vision_width=64, vision_heads=4, vision_mlp_dim=128, width=64,
                     head_dim=16, mlp_dim=128, expert_width=32, expert_mlp_dim=64, vocab_size=300)
    m = build_policy(cfg)
    t = tensors(make_obs(cfg, state_dim=10), cfg)
    a32 = sample(m, t, noise_t(cfg), 10)
    assert torch.isfinite(a32).all() and 0.2 < a32.std().item() < 5.0
    a16 = sample_kw(clone_policy(m, "bf16"), **t, noise=noise_t(cfg), nfe=10)
    cos = torch.nn.functional.cosine_similarity(a32.flatten(), a16.flatten(), dim=0).item()
    assert cos > 0.999


# -- weights ---------------------------------------------------------------------------------


def test_save_load_roundtrip(model: FlowPolicy, tmp_path) -> None:
    cfg = model.cfg
    save_policy(model, tmp_path)
    assert (tmp_path / WEIGHTS_FILE).is_file() and (tmp_path / CONFIG_FILE).is_file()
    loaded = load_policy(tmp_path)
    assert loaded.cfg == cfg
    t = tensors(make_obs(cfg), cfg)
    assert torch.equal(sample(loaded, t, noise_t(cfg), 4),
                       sample(model, t, noise_t(cfg), 4))
    assert load_policy(tmp_path, dtype="bf16").dtype == torch.bfloat16


def test_load_errors(model: FlowPolicy, tmp_path) -> None:
    with pytest.raises(ExportError, match=CONFIG_FILE):
        load_policy(tmp_path / "nope")
    save_policy(model, tmp_path)
    weights = tmp_path / WEIGHTS_FILE
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ExportError, match="not a readable safetensors"):
        load_policy(tmp_path)
    save_policy(model, tmp_path)
    cfg = json.loads((tmp_path / CONFIG_FILE).read_text())
    cfg["action_dim"] = 7
    (tmp_path / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ExportError, match=r"action_in.weight has shape \(48, 8\); .* expects \(48, 7\)"):
        load_policy(tmp_path)
    weights.unlink()
    with pytest.raises(ExportError, match=f"{WEIGHTS_FILE} is missing"):
        load_policy(tmp_path)


@pytest.mark.parametrize("kvh", [1, 2])
def test_attention_paths_agree(kvh: int) -> None:
    """SDPA path, small-query GEMM path and a naive repeated-KV reference give the same result,
    for MQA (copy-free folding) and GQA (permute folding)."""
    from reflex_ros.policies.reference.model import additive_mask, mqa_attention, small_query_attention

    g = torch.Generator().manual_seed(0)
    B, Lq, H, S, d = 2, 5, 4, 9, 8
    q = torch.randn(B, Lq, H, d, generator=g)
    k, v = torch.randn(B, kvh, S, d, generator=g), torch.randn(B, kvh, S, d, generator=g)
    keep = torch.ones(B, S, dtype=torch.bool)
    keep[0, 2:4] = False
    add = additive_mask(keep, torch.float32)[:, None, None, :]
    rows = H // kvh * Lq
    bias = add.expand(B, kvh, rows, S).reshape(B * kvh, rows, S)
    rep = H // kvh
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), attn_mask=add
    ).transpose(1, 2).reshape(B, Lq, H * d)
    torch.testing.assert_close(mqa_attention(q, k, v, add, kvh), ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(small_query_attention(q, k, v, bias, kvh), ref, rtol=0, atol=1e-5)


def test_gqa_config_runs() -> None:
    m = build_policy("tiny", num_kv_heads=2)
    cfg = m.cfg
    t = tensors(make_obs(cfg), cfg)
    kv, _ = m.prefix(**t)
    assert kv[0].shape[1] == 2
    a = sample(m, t, noise_t(cfg), 2)
    assert a.shape == (1, cfg.chunk_size, cfg.action_dim) and torch.isfinite(a).all()


def test_resize_keeps_constant_images_and_shapes() -> None:
    """The reference processor's camera resize (cameras arrive at any size)."""
    flat = np.full((480, 640, 3), (10, 200, 30), np.uint8)
    out = resize_rgb(flat, 224)
    assert out.shape == (224, 224, 3)
    assert (out == np.array([10, 200, 30], np.uint8)).all()
    up = resize_rgb(np.arange(4, dtype=np.uint8).reshape(2, 2, 1).repeat(3, axis=2) * 60, 8)
    assert up.shape == (8, 8, 3) and up[0, 0, 0] == 0 and up[-1, -1, 0] == 180
    # left half dark, right half bright survives downscaling on the right side
    split = np.zeros((100, 100, 3), np.uint8)
    split[:, 50:] = 255
    small = resize_rgb(split, 10)
    assert small[:, :4].max() == 0 and small[:, 6:].min() == 255
