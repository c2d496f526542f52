"""reflex_ros vs LeRobot 0.6.1's own ``predict_action_chunk``, same family, same shapes, one process.

    PYTHONPATH=/tmp/site:$PYTHONPATH python3 benchmarks/vs_lerobot.py --family pi0 [--compile] [--iters 50]

Both sides get random weights at the published size (ours: ``policies/lerobot/published.py``;
LeRobot's: its own ``PI0Policy`` / ``PI05Policy`` / ``SmolVLAPolicy`` built from a config, no hub
access), the workload of issue 10 (batch 1, 2 cameras at 224 px, SmolVLA at its own 512, 48 language
tokens all valid, chunk 50, NFE 10), and are timed the same way: the wall clock of one chunk from
host numpy arrays (uint8 images, float32 state, token ids) to host numpy actions, synchronised by
the copy back, over ``--iters`` calls after ``--warmup``. LeRobot's side starts at its own
``prepare_observation_for_inference`` step (uint8 -> float32 / 255 on the device) and feeds
the token ids directly (its tokenizer step, like ours, is left out: neither is the model);
ours is ``TorchEngine.infer`` (processor + CUDA graph replay + postprocess).

LeRobot rows: eager bf16 (``dtype="bfloat16"``: LeRobot keeps SigLIP, the projector and the
norms in fp32 and forces eager attention; SmolVLA has no dtype option: its VLM is cast to bf16
and the expert and heads stay fp32, as LeRobot holds a pretrained SmolVLA), and
with ``--compile`` its ``compile_model=True`` (``torch.compile(sample_actions)``, mode
``--compile-mode``; ~6.5 min for pi0 in mode "default" on an H200).

SmolVLA builds its backbone from ``AutoConfig.from_pretrained`` / ``AutoProcessor`` of
SmolVLM2-500M; with no hub access both are answered here with the published config (the same
numbers as ``published.py``) and a stand-in processor whose tokenizer carries the three
special-token ids LeRobot reads.

It runs wherever ``lerobot`` imports (the GPU machine gets it from the wheels of
``benchmarks/fetch_lerobot_wheels.sh``) and exits 0 with a clear message where it does not.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FAMILIES = ("pi0", "pi05", "smolvla")
TOKENS = 48
SMOLVLM_SPECIAL = {"fake_image_token_id": 49189, "global_image_token_id": 49152, "image_token_id": 49190}


def lerobot_available() -> tuple[bool, str]:
    try:
        import lerobot  # noqa: F401
        import transformers
    except Exception as exc:  # noqa: BLE001 - any import failure means "not here"
        return False, f"{type(exc).__name__}: {exc}"
    return True, f"lerobot {getattr(sys.modules['lerobot'], '__version__', '?')}, transformers {transformers.__version__}"


def percentiles(ms: list[float]) -> tuple[float, float, float]:
    a = np.asarray(ms, dtype=np.float64)
    return tuple(float(x) for x in np.percentile(a, [50, 95, 99]))  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------
# LeRobot side
# ---------------------------------------------------------------------------------------


def _smolvlm_config() -> Any:
    from transformers import SmolVLMConfig

    text = {"model_type": "llama", "hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 32,
            "num_attention_heads": 15, "num_key_value_heads": 5, "head_dim": 64, "vocab_size": 49280,
            "rms_norm_eps": 1e-5, "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
            "max_position_embeddings": 8192, "hidden_act": "silu", "tie_word_embeddings": False}
    vision = {"model_type": "smolvlm_vision", "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
              "num_attention_heads": 12, "patch_size": 16, "image_size": 512, "layer_norm_eps": 1e-6,
              "hidden_act": "gelu_pytorch_tanh"}
    return SmolVLMConfig(text_config=text, vision_config=vision, scale_factor=4,
                         image_token_id=SMOLVLM_SPECIAL["image_token_id"], tie_word_embeddings=False)


def _answer_smolvlm_hub() -> None:
    """SmolVLA's AutoConfig / AutoProcessor lookups, answered locally (no hub here)."""
    from lerobot.policies.smolvla import smolvlm_with_expert as swe

    cfg = _smolvlm_config()
    tok = types.SimpleNamespace(**SMOLVLM_SPECIAL)
    swe.AutoConfig = types.SimpleNamespace(from_pretrained=lambda *a, **k: cfg)
    swe.AutoProcessor = types.SimpleNamespace(from_pretrained=lambda *a, **k: types.SimpleNamespace(tokenizer=tok))


def build_lerobot(family: str, compile_model: bool, compile_mode: str, side: int, cameras: list[str],
                  device: str = "cuda", **overrides: Any) -> Any:
    import torch
    from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature

    Config: Any
    Policy: Any
    if family == "pi0":
        from lerobot.policies.pi0.configuration_pi0 import PI0Config as Config
        from lerobot.policies.pi0.modeling_pi0 import PI0Policy as Policy
    elif family == "pi05":
        from lerobot.policies.pi05.configuration_pi05 import PI05Config as Config
        from lerobot.policies.pi05.modeling_pi05 import PI05Policy as Policy
    else:
        from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig as Config
        from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy as Policy

        _answer_smolvlm_hub()
    inputs = {k: PolicyFeature(type=FeatureType.VISUAL, shape=(3, side, side)) for k in cameras}
    inputs["observation.state"] = PolicyFeature(type=FeatureType.STATE, shape=(32,))
    outputs = {"action": PolicyFeature(type=FeatureType.ACTION, shape=(32,))}
    norm = {"VISUAL": NormalizationMode.IDENTITY, "STATE": NormalizationMode.IDENTITY,
            "ACTION": NormalizationMode.IDENTITY}
    extra: dict[str, Any] = {"tokenizer_max_length": TOKENS, "compile_model": compile_model,
                             "compile_mode": compile_mode}
    if family == "smolvla":
        extra.update(load_vlm_weights=False, resize_imgs_with_padding=(side, side))
    else:
        extra.update(dtype="bfloat16", image_resolution=(side, side))
    extra.update(overrides)
    config = Config(input_features=inputs, output_features=outputs, normalization_mapping=norm, device=device, **extra)
    torch.manual_seed(0)
    try:  # initialise on the GPU (seconds) rather than on the host (minutes at 4 B parameters)
        with torch.device(device):
            policy = Policy(config)
    except Exception as exc:  # noqa: BLE001 - fall back to LeRobot's default path
        print(f"  (LeRobot policy could not be built under torch.device({device!r}): {exc}; building on the host)")
        policy = Policy(config)
    policy = policy.to(device)
    if family == "smolvla":  # as LeRobot loads pretrained SmolVLA: the VLM in bf16, the expert and heads fp32
        policy.model.vlm_with_expert.vlm.to(torch.bfloat16)
    policy.eval()
    if hasattr(policy, "reset"):
        policy.reset()
    return policy


def lerobot_inputs(seed: int, cameras: list[str], side: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    obs = {k: rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for k in cameras}
    obs["observation.state"] = rng.standard_normal(32).astype(np.float32)
    obs["observation.language.tokens"] = rng.integers(1, 1000, TOKENS).astype(np.int64)
    return obs


def lerobot_chunk(policy: Any, obs: dict[str, np.ndarray], device: str = "cuda") -> np.ndarray:
    """Host arrays -> host actions through LeRobot's own inference path."""
    import torch

    batch: dict[str, Any] = {}
    for key, arr in obs.items():
        t = torch.from_numpy(arr).to(device, non_blocking=True)
        if t.dtype == torch.uint8:  # prepare_observation_for_inference: HWC uint8 -> CHW float / 255
            t = t.permute(2, 0, 1).to(torch.float32) / 255.0
        batch[key] = t[None]
    batch["observation.language.attention_mask"] = torch.ones_like(batch["observation.language.tokens"],
                                                                   dtype=torch.bool)
    with torch.inference_mode():
        actions = policy.predict_action_chunk(batch)
    return actions.float().cpu().numpy()


def time_calls(fn: Any, iters: int, warmup: int) -> list[float]:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


# ---------------------------------------------------------------------------------------
# our side
# ---------------------------------------------------------------------------------------


def ours(family: str, iters: int, warmup: int, log: Any, fp8: bool = False) -> list[tuple[str, list[float]]]:
    """Our CUDA-graph rows (bf16; with ``fp8`` also fp8 where the GPU runs it), host arrays in ->
    actions out."""
    from reflex_ros.engine.bench import run_bench
    from reflex_ros.engine.fp8 import fp8_capable
    from reflex_ros.policies.lerobot.published import build_published, published_engine

    rows = []
    model = build_published(family, "published", device="cuda", dtype="bf16", seed=0, tokens=TOKENS)
    variants = ["bf16"] + (["fp8"] if fp8 and fp8_capable("cuda")[0] else [])
    for dtype in variants:
        eng = published_engine(family, device="cuda", dtype=dtype, cuda_graph=True, model=model, tokens=TOKENS)
        log(f"  reflex_ros graph {dtype}: {eng.info.extra.get('graph_path')}")
        stats = run_bench(eng, iters=iters, warmup=warmup, nfe=10)
        rows.append((f"reflex_ros cuda graph {dtype}", stats["total"]))
        eng.close()
    del model
    gc.collect()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", choices=FAMILIES, action="append", help="repeatable; default: all three")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="also time LeRobot with compile_model=True (minutes)")
    ap.add_argument("--compile-mode", default="default")
    ap.add_argument("--fp8", action="store_true", help="also our fp8 graph (the bench --compare table has it too)")
    args = ap.parse_args(argv)
    ok, why = lerobot_available()
    if not ok:
        print(f"vs_lerobot: skipped: LeRobot is not importable here ({why}). On the GPU machine install the wheels "
              "of benchmarks/fetch_lerobot_wheels.sh into /tmp/site and put it first on PYTHONPATH.")
        return 0
    import torch

    if not torch.cuda.is_available():
        print("vs_lerobot: skipped: no CUDA GPU (both sides are timed on the GPU)")
        return 0
    print(f"vs_lerobot: {why}; torch {torch.__version__}; {torch.cuda.get_device_name()}")
    print(f"workload: batch 1, 2 cameras (224 px; SmolVLA 512 px), {TOKENS} tokens, chunk 50, NFE 10; "
          f"random weights; {args.iters} timed calls after {args.warmup}; ms per chunk, host arrays -> host actions")
    status = 0
    for family in args.family or FAMILIES:
        side = 512 if family == "smolvla" else 224
        cameras = [f"observation.images.camera{i}" for i in range(2)]
        print(f"\n== {family}")
        table: list[tuple[str, list[float]]] = []
        try:
            table += ours(family, args.iters, args.warmup, print, fp8=args.fp8)
        except Exception as exc:  # noqa: BLE001 - report and go on with LeRobot's rows
            print(f"  reflex_ros failed: {type(exc).__name__}: {exc}")
            status = 1
        torch.cuda.empty_cache()
        modes = [(False, "LeRobot eager bf16")] + ([(True, f"LeRobot compiled ({args.compile_mode})")] if args.compile else [])
        for compiled, label in modes:
            try:
                t0 = time.perf_counter()
                policy = build_lerobot(family, compiled, args.compile_mode, side, cameras)
                n = sum(p.numel() for p in policy.parameters())
                print(f"  {label}: built in {time.perf_counter() - t0:.1f} s ({n / 1e9:.3f} B params)")
                obs = lerobot_inputs(0, cameras, side)
                t0 = time.perf_counter()
                lerobot_chunk(policy, obs)
                print(f"  {label}: first call {time.perf_counter() - t0:.1f} s")
                table.append((label, time_calls(lambda p=policy, o=obs: lerobot_chunk(p, o), args.iters, args.warmup)))
                del policy
            except Exception as exc:  # noqa: BLE001
                print(f"  {label} failed: {type(exc).__name__}: {exc}")
                status = 1
            gc.collect()
            torch.cuda.empty_cache()
        if not table:
            continue
        ref = {name: percentiles(v)[0] for name, v in table}
        print(f"  {'row':<36}{'p50':>9}{'p95':>9}{'p99':>9}   speed-up of ours (p50)")
        for name, ms in table:
            p50, p95, p99 = percentiles(ms)
            extra = ""
            if name.startswith("LeRobot"):
                extra = "  ".join(f"{o.split()[-1]}: {p50 / v:.1f}x" for o, v in ref.items() if o.startswith("reflex_ros"))
            print(f"  {name:<36}{p50:>9.2f}{p95:>9.2f}{p99:>9.2f}   {extra}")
    return status


if __name__ == "__main__":
    sys.exit(main())
