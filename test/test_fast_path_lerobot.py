"""The fused fast path of pi0 / pi0.5 / SmolVLA (policies/lerobot/fused.py) on the CPU.

What the CUDA graphs capture is run here with the kernels' torch backend: on every LeRobot
fixture checkpoint it must reproduce the model's own eager chunk (and LeRobot's recording) at
float32 (1e-5 relative), CFG included for pi0.5, through the engine's own runner; the K/V
buffer layout and key bias are checked like the reference model's. The published-size
builder is exercised at its tiny size (same code, same layouts), in bf16 and fp8 too. With
``TRITON_INTERPRET=1`` (Triton installed) the same chunks run through the Triton kernels.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from test_lerobot_parity import built, hf_env  # the fixture checkpoints, built once per session

from reflex_ros.engine.capture_cache import graph_key
from reflex_ros.engine.kernels import MASKED
from reflex_ros.engine.sampler import sample_actions as engine_sample
from reflex_ros.engine.schedule import make_noise
from reflex_ros.engine.torch_runtime import TorchEngine
from reflex_ros.engine.types import Observation
from reflex_ros.policies import get_family
from reflex_ros.policies.lerobot.families import build_from_checkpoint
from reflex_ros.policies.lerobot.family import ObservationProcessor
from reflex_ros.policies.lerobot.fused import LeRobotFastPath, supports
from reflex_ros.policies.lerobot.published import build_published, published_spec, synthetic_processor
from reflex_ros.policies.lerobot.rollout import as_tensors, sample_actions

DATA = Path(__file__).parent / "data" / "lerobot"
CASES = sorted(str(p.parent.parent.relative_to(DATA)) for p in DATA.rglob("checkpoint/config.json"))
CUDA = torch.cuda.is_available()
TRITON_OK = CUDA or os.environ.get("TRITON_INTERPRET") == "1"
REL = 1e-5


def fixture_inputs(case: str, name: str) -> tuple[dict, dict]:
    _, processor, _ = built(case)
    ref = dict(np.load(DATA / case / "fixtures" / name, allow_pickle=False))
    images = {k[len("obs."):]: v for k, v in ref.items() if k.startswith("obs.observation.images.")}
    return processor.prepare(images, ref["obs.observation.state"], str(ref["task"])), ref


def run_fast(fp: LeRobotFastPath, inputs: dict, noise: np.ndarray, nfe: int, beta: float | None = None) -> np.ndarray:
    t = as_tensors(inputs)
    with torch.inference_mode():
        buf = fp.allocate(t["lang_tokens"].shape[0], nfe)
        if beta is not None:
            t["images"] = t["images"][:1]  # CFG: both slots share the images (shared_inputs)
        fp.prefix(buf, **t)
        b = torch.tensor(beta, dtype=torch.float32) if beta is not None else None
        return fp.denoise(buf, torch.as_tensor(noise, dtype=torch.float32), b).float().numpy()


def assert_rel(ours: np.ndarray, ref: np.ndarray, rel: float = REL, what: str = "") -> None:
    err = float(np.abs(ours - ref).max())
    tol = rel * max(1.0, float(np.abs(ref).max()))
    assert err <= tol, f"{what}: max_abs {err:.3g} > {tol:.3g}"


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


FIXTURES = [(c, f.name) for c in CASES for f in sorted((DATA / c / "fixtures").glob("*.npz"))]


@pytest.mark.parametrize(("case", "fixture"), FIXTURES, ids=[f"{c}/{f}" for c, f in FIXTURES])
def test_fast_path_reproduces_lerobot(case: str, fixture: str) -> None:
    """fp32, torch backend: the fused chunk == LeRobot's recorded sampler output."""
    _, _, model = built(case)
    inputs, ref = fixture_inputs(case, fixture)
    fast = run_fast(LeRobotFastPath(model, backend="torch"), inputs, ref["noise"], int(ref["num_steps"]))
    assert_rel(fast, ref["out.sample_actions"], what="fused vs LeRobot")


@pytest.mark.parametrize("case", CASES)
def test_fast_path_reproduces_eager(case: str) -> None:
    """The fused chunk == the model's own eager rollout, and packing the weights (re-bound as
    views of the packed tensors) leaves the eager model's output bit-identical."""
    _, _, model = built(case)
    inputs, ref = fixture_inputs(case, "fixture_00.npz")
    nfe = int(ref["num_steps"])
    eager = sample_actions(model, inputs, ref["noise"], nfe).actions
    fast = run_fast(LeRobotFastPath(model, backend="torch"), inputs, ref["noise"], nfe)
    assert_rel(fast, eager, what="fused vs eager")
    assert np.array_equal(sample_actions(model, inputs, ref["noise"], nfe).actions, eager)


@pytest.mark.parametrize("case", ["pi05", "generated/pi05_quantiles_1cam"])
def test_pi05_cfg_fast_path_matches_sampler(case: str) -> None:
    """RECAP CFG (batch-2 [cond, uncond], one vision pass) == the engine's Euler/CFG loop."""
    _, processor, model = built(case)
    ref = dict(np.load(sorted((DATA / case / "fixtures").glob("*.npz"))[0], allow_pickle=False))
    images = {k[len("obs."):]: v for k, v in ref.items() if k.startswith("obs.observation.images.")}
    inputs = processor.prepare(images, ref["obs.observation.state"], str(ref["task"]), cfg_beta=1.5)
    assert inputs["lang_tokens"].shape[0] == 2 and not np.array_equal(*inputs["lang_tokens"])
    nfe = 4
    with torch.inference_mode():
        want = engine_sample(model, as_tensors(inputs), torch.as_tensor(ref["noise"]), nfe, 1.5).numpy()
    got = run_fast(LeRobotFastPath(model, backend="torch"), inputs, ref["noise"], nfe, beta=1.5)
    assert_rel(got, want, what="CFG")
    plain = run_fast(LeRobotFastPath(model, backend="torch"), processor.prepare(images, ref["obs.observation.state"],
                                                                                str(ref["task"])), ref["noise"], nfe)
    assert float(np.abs(plain - got).max()) > 1e-4  # guidance changes the chunk


def _engine(case: str) -> TorchEngine:
    ckpt, processor, model = built(case)
    fam = get_family(ckpt.model_type)
    return TorchEngine(model, ObservationProcessor(processor), fast_path=fam.fast_path, model_type=ckpt.model_type)


def _fill(runner, arrays: dict, beta: float | None) -> None:  # noqa: ANN001
    for name, arr in arrays.items():
        runner.inputs[name].copy_(torch.from_numpy(np.ascontiguousarray(runner.stage(name, arr))))
    if beta is not None:
        runner.inputs["beta"].fill_(beta)


def runner_case(case: str, beta: float | None) -> tuple[TorchEngine, Observation, np.ndarray, np.ndarray]:
    """A CPU engine on the fixture checkpoint, a two-camera 40x48 observation (resized), noise,
    and the eager engine's chunk for them at NFE 4: what a graph runner must reproduce."""
    engine = _engine(case)
    proc = engine.processor
    rng = np.random.default_rng(3)
    obs = Observation(images={n: rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for n in proc.camera_names[:2]},
                      state=rng.standard_normal(proc.state_dim).astype(np.float32), instruction="pick up the cube")
    noise = make_noise(5, proc.chunk_size, proc.action_width)
    return engine, obs, noise, engine.infer(obs, nfe=4, cfg_beta=beta, noise=noise[0]).actions


@pytest.mark.parametrize(("case", "beta"), [("pi0", None), ("pi05", 1.5), ("smolvla", None)])
def test_engine_runner_dispatches_to_fast_path(case: str, beta: float | None) -> None:
    """The family's fast_path is what TorchEngine.build_runner captures; its stage functions
    give the eager engine's chunk for an Observation (shared-image staging under CFG)."""
    engine, obs, noise, want = runner_case(case, beta)
    assert isinstance(engine.fused, LeRobotFastPath) and engine.fused.backend == "torch"
    proc = engine.processor
    key = graph_key(4, proc.chunk_size, beta)
    arrays = proc.prepare(obs, beta)
    arrays["noise"] = noise
    runner = engine.build_runner(key)
    assert runner.fused is engine.fused
    if beta is not None:
        assert runner.inputs["images"].shape[0] == 1 and runner.inputs["lang_tokens"].shape[0] == 2
    _fill(runner, arrays, beta)
    with torch.inference_mode():
        out = runner.run_denoise(runner.run_prefix())
    got = proc.postprocess(out.numpy().reshape(proc.chunk_size, proc.action_width))
    assert_rel(got, want, what="runner vs eager engine")


@pytest.mark.parametrize("case", ["pi0", "pi05", "smolvla", "generated/smolvla_halfexpert_special"])
def test_kv_buffer_layout_and_key_bias(case: str) -> None:
    """Prefix rows of valid tokens hold the model's own K/V (SmolVLA cross slots: the expert's
    re-projection), pad rows stay zero, the bias masks padded tokens and pad rows, a step writes only its
    suffix rows (and never a cross slot)."""
    _, _, model = built(case)
    inputs, ref = fixture_inputs(case, "fixture_00.npz")
    t = as_tensors(inputs)
    fp = LeRobotFastPath(model, backend="torch")
    with torch.inference_mode():
        kv, mask = model.prefix(**{n: t[n] for n in model.prefix_input_names})
        buf = fp.allocate(1, 2)
        fp.prefix(buf, **t)
        P, Ls, S = fp.P, fp.Ls, fp.S
        assert S % 16 == 0 and S >= P + Ls and buf.k.shape[0] == len(kv) // 2
        for j in range(buf.k.shape[0]):
            # valid tokens only: a padded token's own row differs (LeRobot masks it entirely, we
            # let it read the valid keys), and its K/V are masked for every reader anyway
            valid = mask[0]
            for got, want in ((buf.k[j, :, :, :P], kv[2 * j]), (buf.v[j, :, :, :P], kv[2 * j + 1])):
                torch.testing.assert_close(got[:, :, valid], want[:, :, valid], rtol=REL,
                                           atol=REL * max(1.0, float(want.abs().max())))
        assert not buf.k[:, :, :, P:].any() and not buf.v[:, :, :, P:].any()
        want = torch.full((1, S), MASKED)
        want[:, :P] = torch.where(mask, 0.0, MASKED)
        want[:, P:P + Ls] = 0.0
        assert torch.equal(buf.bias, want[:, None, :].expand(1, fp.KVH, S))
        assert int((buf.bias[:, :, :P] == MASKED).sum()) > 0  # some prompt padding is masked
        before = buf.k.clone()
        fp.denoise(buf, torch.as_tensor(ref["noise"]), None)
        assert torch.equal(buf.k[:, :, :, :P], before[:, :, :, :P]) and not buf.k[:, :, :, P + Ls:].any()
        for j, ly in enumerate(fp.expert_layers):
            written = bool(buf.k[j, :, :, P:P + Ls].abs().sum() > 0)
            assert written == (not ly.cross), f"slot {j}: cross={ly.cross}, suffix rows written={written}"


def test_suffix_masks_follow_the_models() -> None:
    """pi0's state token sees the prefix and itself; SmolVLA's actions are causal and its
    prefix tokens do not see the state token; pi0.5 needs no limits."""
    fps = {c: LeRobotFastPath(built(c)[2], backend="torch") for c in ("pi0", "pi05", "smolvla")}
    p0, p5, sv = fps["pi0"], fps["pi05"], fps["smolvla"]
    assert p0.suffix_limit.tolist() == [p0.P + 1] + [p0.P + p0.Ls] * p0.C and p0.prefix_limit is None
    assert p5.suffix_limit is None and p5.prefix_limit is None and p5.Ls == p5.C
    assert sv.suffix_limit.tolist() == [sv.P + i + 1 for i in range(sv.C)]
    assert sv.prefix_limit.tolist() == [sv.P - 1] * (sv.P - 1) + [sv.P]


def test_supports_and_family_hook() -> None:
    _, _, model = built("pi0")  # head_dim 8: the Triton kernels need a power of two >= 16
    ok, why = supports(model, "triton")
    assert not ok and "head_dim" in why
    assert supports(model, "torch") == (True, "")
    assert isinstance(get_family("pi0").fast_path(model), LeRobotFastPath)  # CPU: torch backend
    assert get_family("pi05").fast_path(built("pi05")[2], fp8=True).fp8


# -- the published-size builder, at its tiny size -------------------------------------------------


@functools.cache
def tiny(family: str, dtype: str = "fp32"):  # noqa: ANN201
    return build_published(family, "tiny", dtype=dtype, seed=1, tokens=12, chunk_size=10)


def tiny_inputs(family: str, beta: float | None = None) -> dict:
    spec = published_spec(family, "tiny", tokens=12, chunk_size=10)
    proc = synthetic_processor(spec)
    rng = np.random.default_rng(0)
    s = spec.image_hw[0]
    obs = Observation(images={n: rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for n in spec.camera_keys},
                      state=rng.standard_normal(spec.state_dim).astype(np.float32), instruction="stack the cups")
    return proc.prepare(obs, beta)


@pytest.mark.parametrize("family", ["pi0", "pi05", "smolvla"])
def test_published_builder_tiny(family: str) -> None:
    """Seeded, finite, the spec's shapes; the fused chunk == eager in fp32; bf16 fused keeps
    cos >= 0.999 against fp32 eager; fp8 (torch twin of the e4m3 GEMMs) stays close."""
    model = tiny(family)
    again = build_published(family, "tiny", seed=1, tokens=12, chunk_size=10)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))
    assert {n: b.dtype for n, b in model.named_buffers()}.get("time_embedding.scale") == torch.float64
    inputs = tiny_inputs(family)
    assert inputs["lang_masks"].all() and inputs["lang_tokens"].shape == (1, 12)
    noise = make_noise(2, 10, 32)
    eager = sample_actions(model, inputs, noise, 10).actions
    assert np.isfinite(eager).all() and np.abs(eager).max() > 1e-3
    fast = run_fast(LeRobotFastPath(model, backend="torch"), inputs, noise, 10)
    assert_rel(fast, eager, what="fused vs eager")
    bf16 = run_fast(LeRobotFastPath(tiny(family, "bf16"), backend="torch"), inputs, noise, 10)
    assert cosine(bf16, eager) >= 0.999
    fp8 = run_fast(LeRobotFastPath(tiny(family, "bf16"), backend="torch", fp8=True, fp8_scope="all"), inputs, noise, 10)
    assert cosine(fp8, eager) >= 0.99 and not np.array_equal(fp8, bf16)


@pytest.mark.skipif(not TRITON_OK, reason="Triton kernels need a CUDA GPU (or TRITON_INTERPRET=1)")
@pytest.mark.parametrize("family", ["pi0", "pi05", "smolvla"])
def test_triton_fast_path_matches_torch_backend(family: str) -> None:
    """The whole chunk through the Triton kernels (tiny published size: head_dim 16)."""
    pytest.importorskip("triton")
    dev = "cuda" if CUDA else "cpu"
    model = build_published(family, "tiny", device=dev, seed=1, tokens=12, chunk_size=10)
    inputs = {k: v for k, v in tiny_inputs(family, 1.5 if family == "pi05" else None).items()}
    beta = 1.5 if family == "pi05" else None
    noise = make_noise(2, 10, 32)
    t = {k: v.to(dev) for k, v in as_tensors(inputs).items()}
    outs = []
    for backend in ("triton", "torch"):
        fp = LeRobotFastPath(model, backend=backend)
        with torch.inference_mode():
            buf = fp.allocate(t["lang_tokens"].shape[0], 4)
            tt = dict(t, images=t["images"][:1])
            fp.prefix(buf, **tt)
            b = torch.tensor(beta, device=dev) if beta is not None else None
            outs.append(fp.denoise(buf, torch.as_tensor(noise, device=dev), b).cpu().numpy())
    assert_rel(outs[0], outs[1], rel=1e-5, what="triton vs torch")


# -- GPU (skip here) ---------------------------------------------------------------------------


@pytest.mark.skipif(not CUDA, reason="CUDA GPU not available (CUDA Graph path runs on the GPU only)")
@pytest.mark.parametrize("case", ["pi0", "pi05", "smolvla", "generated/smolvla_selfattn", "generated/pi0_minmax_3cam"])
def test_cuda_graph_fp32_matches_lerobot_fixtures(case: str) -> None:
    """The captured graphs in fp32 against LeRobot's recorded chunks (tiny checkpoints; the
    Triton kernels where head_dim allows, else the generic captured path)."""
    torch.backends.cudnn.allow_tf32 = False  # fp32 convolutions, as on the CPU
    torch.backends.cuda.matmul.allow_tf32 = False
    ckpt, processor, _ = built(case)
    with hf_env(case):
        _, _, model = build_from_checkpoint(str(DATA / case / "checkpoint"))
    fam = get_family(ckpt.model_type)
    engine = TorchEngine(model, ObservationProcessor(processor), device="cuda", cuda_graph=True,
                         fast_path=fam.fast_path, model_type=ckpt.model_type)
    worst = 0.0
    for f in sorted((DATA / case / "fixtures").glob("*.npz")):
        ref = dict(np.load(f, allow_pickle=False))
        images = {k[len("obs."):]: v for k, v in ref.items() if k.startswith("obs.observation.images.")}
        obs = Observation(images=images, state=ref["obs.observation.state"], instruction=str(ref["task"]))
        got = engine.infer(obs, nfe=int(ref["num_steps"]), noise=ref["noise"][0]).actions
        want = ref["out.actions"][0]
        worst = max(worst, float(np.abs(got - want).max()) / max(1.0, float(np.abs(want).max())))
        assert cosine(got, want) >= 0.99999
    print(f"{case}: graph path {engine.info.extra.get('graph_path')}, worst relative error {worst:.2e}")
    assert worst <= 1e-4
    engine.close()


@pytest.mark.skipif(not CUDA, reason="CUDA GPU not available")
def test_cuda_fp8_engine_on_published_smolvla() -> None:
    """fp8 is refused below sm_89 and otherwise keeps cos >= 0.999 against fp32 eager."""
    from reflex_ros.engine.bench import make_fixtures
    from reflex_ros.engine.fp8 import check_chunk_cosine, fp8_capable
    from reflex_ros.engine.types import ProviderUnavailableError
    from reflex_ros.policies.lerobot.published import published_engine

    ok, why = fp8_capable("cuda")
    if not ok:
        with pytest.raises(ProviderUnavailableError):
            published_engine("smolvla", device="cuda", dtype="fp8", cuda_graph=True)
        return
    ref_engine = published_engine("smolvla", device="cuda", dtype="fp32", tokens=48)
    fixtures = make_fixtures(ref_engine.info, n=2)
    reference = [ref_engine.infer(o, nfe=10, noise=n).actions for o, n in fixtures]
    ref_engine.close()
    engine = published_engine("smolvla", device="cuda", dtype="fp8", cuda_graph=True, tokens=48)
    assert engine.info.dtype == "fp8" and engine.fused.fp8
    cos = check_chunk_cosine(engine, reference, fixtures, nfe=10)
    print(f"smolvla published fp8 graph: cos {cos:.6f}")
    engine.close()


# -- floor counts and the bench CLI (CPU) ---------------------------------------------------------


@pytest.mark.parametrize("family", ["pi0", "pi05", "smolvla"])
def test_floor_counts_every_weight_once(family: str) -> None:
    """model_work classifies each parameter of the published model exactly once (embeddings
    aside), and pi0's counts agree with the reference pi0 preset's config arithmetic."""
    from reflex_ros.engine.floor import model_work, prefix_flops, weight_bytes_per_chunk
    from reflex_ros.policies.lerobot.families import model_class
    from reflex_ros.policies.reference.config import get_preset

    with torch.device("meta"):
        model = model_class(family)(published_spec(family, tokens=48))
    work = model_work(model)
    emb = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding)
              and m is not getattr(getattr(model, "backbone", model).vision.embeddings, "position_embedding", None))
    assert work.once_params + work.step_params == sum(p.numel() for p in model.parameters()) - emb
    assert 0 < work.mlp_params[1] < work.step_params and 0 < work.mlp_params[0] < work.once_params
    assert work.weight_bytes(10, fp8_mlp=True) < work.weight_bytes(10)
    if family == "pi0":
        ref = get_preset("pi0")
        assert abs(work.weight_bytes(10) / weight_bytes_per_chunk(ref, 10) - 1) < 0.01
        assert abs(work.prefix_flops / prefix_flops(ref) - 1) < 0.01


def test_bench_cli_family_tiny(capsys) -> None:  # noqa: ANN001
    from reflex_ros.cli import main as cli_main

    rc = cli_main(["bench", "--family", "smolvla", "--size", "tiny", "--iters", "2", "--warmup", "1", "--nfe", "2",
                   "--device", "cpu", "--tokens", "8"])
    out = capsys.readouterr().out
    assert rc == 0 and "denoise" in out and "iterations: 2" in out
    if not CUDA:
        assert cli_main(["bench", "--family", "pi0", "--compare"]) == 2
        assert "needs a CUDA GPU" in capsys.readouterr().err
        assert cli_main(["bench", "--family", "pi0", "--size", "tiny", "--device", "cpu", "--dtype", "fp8",
                         "--cuda-graph", "--iters", "1"]) == 2


@pytest.mark.skipif(not CUDA, reason="CUDA GPU not available")
def test_cuda_family_compare_runs_at_tiny_size() -> None:
    """The issue-10 table's code end to end on the GPU, at tiny size (seconds)."""
    from reflex_ros.engine.bench import family_source, format_family_compare, run_family_compare

    rows, floor, floor8, notes = run_family_compare(family_source("pi05", "tiny", tokens=12, device="cuda"),
                                                    iters=3, warmup=1, nfe=10, log=lambda *_: None)
    names = [r.name for r in rows]
    assert names[:3] == ["eager fp32", "eager bf16", "cuda graph bf16"] and any("cfg" in n for n in names)
    assert sum("nfe=" in n for n in names) == 5 and "cuda graph fp16" in names
    assert all(r.cos_vs_fp32 is None or r.cos_vs_fp32 > 0.99 for r in rows)
    print(format_family_compare(rows, floor, floor8))
    print("\n".join(notes))
