#!/usr/bin/env python3
"""Generate extra LeRobot parity fixtures with LeRobot itself (a developer cross-check).

LeRobot is never a dependency of reflex_ros: run this in a separate Python 3.12 venv, e.g.

    python3.12 -m venv /work/lerobot-venv
    /work/lerobot-venv/bin/pip install torch==2.11.0 torchvision==0.26.0 lerobot==0.6.1 \
        transformers==5.5.4 tokenizers==0.22.2 numpy==2.2.6 num2words accelerate scipy
    /work/lerobot-venv/bin/python tools/make_lerobot_fixtures.py --out test/data/lerobot/generated

Each case builds a TINY random-weight policy (pi0 / pi0.5 sizes forced by swapping
LeRobot's size tables in-process; SmolVLA sized by the fake SmolVLM2 backbone in the test
hub cache), saves it with LeRobot's ``save_pretrained`` (model + processors), reloads it
with ``from_pretrained`` and records every intermediate of LeRobot's inference call path
(``prepare_observation_for_inference`` -> preprocessor -> ``predict_action_chunk(noise=...)``
-> postprocessor) in the npz schema of ``test/data/lerobot/README.md``. The cases vary what
the public fixtures keep fixed: seeds, camera counts (and missing ones), state/action dims,
chunk sizes, normalization modes, image sizes, tokenizer lengths, SmolVLA's layer layout
(num_vlm_layers, num_expert_layers, self_attn_every_n_layers, attention_mode, expert width,
image special tokens) and, for one pi0 case, the architecture itself (with its own fake hub
config for the SigLIP head count). CPU, float32, one thread, like the public fixtures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
BASE_CACHE = REPO / "test" / "data" / "lerobot" / "hf_cache"
PALI_REPO = "models--google--paligemma-3b-pt-224"

CASES: list[dict[str, Any]] = [
    {   # pi0: 3 cameras, small dims, MIN_MAX, short chunk, odd image sizes
        "name": "pi0_minmax_3cam", "type": "pi0", "seed": 11,
        "cameras": ["observation.images.top", "observation.images.wrist", "observation.images.side"],
        "state_dim": 5, "action_dim": 4, "norm": "MIN_MAX",
        "cfg": {"chunk_size": 8, "n_action_steps": 8, "max_state_dim": 16, "max_action_dim": 16,
                "image_resolution": (32, 32), "tokenizer_max_length": 24, "num_inference_steps": 3},
    },
    {   # pi0 with a different tiny architecture (and its own hub config for the SigLIP heads)
        "name": "pi0_arch_b", "type": "pi0", "seed": 12,
        "cameras": ["observation.images.base_0_rgb"], "state_dim": 9, "action_dim": 9, "norm": "QUANTILE10",
        "cfg": {"chunk_size": 6, "n_action_steps": 6, "max_state_dim": 12, "max_action_dim": 10,
                "image_resolution": (16, 16), "empty_cameras": 2, "tokenizer_max_length": 20,
                "num_inference_steps": 4},
        "arch": {"vlm": (48, 3, 96, 4, 12), "expert": (24, 3, 40, 2, 12),
                 "vision": {"hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 3,
                            "num_attention_heads": 4, "patch_size": 4}},
    },
    {   # pi0.5: MEAN_STD, states far outside [-1, 1], empty camera, 2 real cameras
        "name": "pi05_meanstd", "type": "pi05", "seed": 21,
        "cameras": ["observation.images.cam_high", "observation.images.cam_low"],
        "state_dim": 7, "action_dim": 6, "norm": "MEAN_STD", "state_scale": 6.0,
        "cfg": {"chunk_size": 10, "n_action_steps": 10, "max_state_dim": 8, "max_action_dim": 8,
                "image_resolution": (32, 32), "empty_cameras": 1, "tokenizer_max_length": 40,
                "num_inference_steps": 4},
    },
    {   # pi0.5: QUANTILES (its default), one camera, prompt truncation at 48 tokens
        "name": "pi05_quantiles_1cam", "type": "pi05", "seed": 22,
        "cameras": ["observation.images.front"], "state_dim": 3, "action_dim": 3, "norm": "QUANTILES",
        "cfg": {"chunk_size": 5, "n_action_steps": 5, "max_state_dim": 32, "max_action_dim": 32,
                "image_resolution": (32, 32), "tokenizer_max_length": 48, "num_inference_steps": 2},
    },
    {   # SmolVLA: all 6 backbone layers, SA every 3rd, narrow expert, 32px input (bucketed positions)
        "name": "smolvla_6layers_sa3", "type": "smolvla", "seed": 31,
        "cameras": ["observation.images.up", "observation.images.side"], "state_dim": 4, "action_dim": 5,
        "norm": "MIN_MAX",
        "cfg": {"chunk_size": 12, "n_action_steps": 12, "max_state_dim": 8, "max_action_dim": 8,
                "resize_imgs_with_padding": (32, 32), "tokenizer_max_length": 30, "num_steps": 3,
                "num_vlm_layers": 6, "self_attn_every_n_layers": 3, "expert_width_multiplier": 0.5},
    },
    {   # SmolVLA: fewer expert layers than VLM layers (all cross-attention), image special
        # tokens, an empty camera, max_length padding
        "name": "smolvla_halfexpert_special", "type": "smolvla", "seed": 32,
        "cameras": ["observation.images.cam"], "state_dim": 6, "action_dim": 6, "norm": "MEAN_STD",
        "cfg": {"chunk_size": 7, "n_action_steps": 7, "max_state_dim": 16, "max_action_dim": 16,
                "resize_imgs_with_padding": (64, 64), "empty_cameras": 1, "tokenizer_max_length": 20,
                "num_steps": 4, "num_vlm_layers": 4, "num_expert_layers": 2,
                "self_attn_every_n_layers": -1, "add_image_special_tokens": True,
                "pad_language_to": "max_length"},
    },
    {   # SmolVLA: plain self-attention expert over 3 layers
        "name": "smolvla_selfattn", "type": "smolvla", "seed": 33,
        "cameras": ["observation.images.a", "observation.images.b", "observation.images.c"],
        "state_dim": 2, "action_dim": 3, "norm": "QUANTILES",
        "cfg": {"chunk_size": 6, "n_action_steps": 6, "max_state_dim": 8, "max_action_dim": 8,
                "resize_imgs_with_padding": (64, 64), "tokenizer_max_length": 16, "num_steps": 2,
                "num_vlm_layers": 3, "attention_mode": "self_attn", "expert_width_multiplier": 0.75},
    },
]

TASKS = [
    "stack the blue cup on the red one",
    "Slide_the drawer shut\n",
    "pick up the small green block near the left edge of the table, place it into the blue bowl "
    "behind the robot, then wave (très bien ✓)",
]

# the public pi0/pi0.5 tiny sizes: (width, depth, mlp_dim, num_heads, head_dim), kv heads = 1
DEFAULT_ARCH = {
    "vlm": (64, 2, 128, 8, 8),
    "expert": (32, 2, 64, 8, 8),
    "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
               "patch_size": 8},
}
VOCAB = 1024


_ORIGINALS: dict[str, tuple[Any, Any, Any]] = {}


def patch_paligemma_sizes(module: Any, arch: dict[str, Any]) -> None:
    """Swap LeRobot's size tables for tiny ones (pi0 / pi0.5 modeling module); the
    replacements always wrap LeRobot's original classes, so cases do not stack."""
    if module.__name__ not in _ORIGINALS:
        _ORIGINALS[module.__name__] = (
            module.get_gemma_config, module.PaliGemmaForConditionalGenerationWithPiGemma, module.PiGemmaForCausalLM
        )
    _, pali_cls, expert_cls = _ORIGINALS[module.__name__]
    gemma_config = module.GemmaConfig

    def get_gemma_config(variant: str) -> Any:
        width, depth, mlp, heads, head_dim = arch["vlm"] if variant == "gemma_2b" else arch["expert"]
        return gemma_config(width=width, depth=depth, mlp_dim=mlp, num_heads=heads, num_kv_heads=1, head_dim=head_dim)


    class TinyPali(pali_cls):  # type: ignore[misc, valid-type]
        def __init__(self, config: Any) -> None:
            config.text_config.vocab_size = VOCAB
            config._vocab_size = VOCAB  # noqa: SLF001
            config.image_token_index = VOCAB - 1
            for k, v in arch["vision"].items():
                setattr(config.vision_config, k, v)
            config.vision_config.projection_dim = config.text_config.hidden_size
            super().__init__(config)

    class TinyExpert(expert_cls):  # type: ignore[misc, valid-type]
        def __init__(self, config: Any, **kwargs: Any) -> None:
            config.vocab_size = VOCAB
            super().__init__(config, **kwargs)

    module.get_gemma_config = get_gemma_config
    module.PaliGemmaForConditionalGenerationWithPiGemma = TinyPali
    module.PiGemmaForCausalLM = TinyExpert


def make_hf_cache(case: dict[str, Any], out: Path) -> Path:
    """The case's hub cache: the shared fake one, or a copy whose PaliGemma config.json
    describes the case's vision tower (LeRobot ignores it; our loader reads the SigLIP head
    count from it)."""
    if "arch" not in case:
        return BASE_CACHE
    cache = out / "hf_cache"
    if cache.exists():
        shutil.rmtree(cache)
    shutil.copytree(BASE_CACHE / "hub" / PALI_REPO, cache / "hub" / PALI_REPO)
    for config_path in (cache / "hub" / PALI_REPO / "snapshots").glob("*/config.json"):
        config = json.loads(config_path.read_text())
        config["vision_config"].update(case["arch"]["vision"])
        width, depth, mlp, heads, head_dim = case["arch"]["vlm"]
        config["text_config"].update(hidden_size=width, num_hidden_layers=depth, intermediate_size=mlp,
                                     num_attention_heads=heads, head_dim=head_dim, num_key_value_heads=1)
        config["projection_dim"] = width
        config_path.write_text(json.dumps(config, indent=2))
    return cache


def make_stats(rng: np.random.Generator, dim: int, scale: float = 1.0) -> dict[str, np.ndarray]:
    mean = rng.normal(0.3, 0.5, dim).astype(np.float32)
    std = rng.uniform(0.2, 1.5, dim).astype(np.float32)
    lo, hi = mean - 2 * std, mean + 2 * std
    return {
        "mean": mean, "std": std, "min": lo, "max": hi,
        "q01": lo + 0.1 * std, "q99": hi - 0.1 * std, "q10": lo + 0.5 * std, "q90": hi - 0.5 * std,
        "count": np.array([1000], np.float32),
        "_scale": np.float32(scale),
    }


def build_policy(case: dict[str, Any], ckpt_dir: Path) -> None:
    """Create the tiny policy with random weights and save model + processors."""
    import torch
    from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature

    torch.manual_seed(case["seed"])
    rng = np.random.default_rng(case["seed"])
    kind = case["type"]
    if kind == "pi0":
        from lerobot.policies.pi0 import modeling_pi0 as mod
        from lerobot.policies.pi0.configuration_pi0 import PI0Config as Config
        from lerobot.policies.pi0.processor_pi0 import make_pi0_pre_post_processors as make_proc
    elif kind == "pi05":
        from lerobot.policies.pi05 import modeling_pi05 as mod
        from lerobot.policies.pi05.configuration_pi05 import PI05Config as Config
        from lerobot.policies.pi05.processor_pi05 import make_pi05_pre_post_processors as make_proc
    else:
        from lerobot.policies.smolvla import modeling_smolvla as mod
        from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig as Config
        from lerobot.policies.smolvla.processor_smolvla import make_smolvla_pre_post_processors as make_proc
    side = case["cfg"].get("image_resolution", case["cfg"].get("resize_imgs_with_padding", (32, 32)))
    inputs = {k: PolicyFeature(type=FeatureType.VISUAL, shape=(3, side[0], side[1])) for k in case["cameras"]}
    inputs["observation.state"] = PolicyFeature(type=FeatureType.STATE, shape=(case["state_dim"],))
    outputs = {"action": PolicyFeature(type=FeatureType.ACTION, shape=(case["action_dim"],))}
    mode = NormalizationMode(case["norm"])
    norm = {"VISUAL": NormalizationMode.IDENTITY, "STATE": mode, "ACTION": mode}
    extra = {"load_vlm_weights": False} if kind == "smolvla" else {"dtype": "float32"}
    config = Config(input_features=inputs, output_features=outputs, normalization_mapping=norm, device="cpu",
                    **extra, **case["cfg"])
    policy_cls = getattr(mod, {"pi0": "PI0Policy", "pi05": "PI05Policy", "smolvla": "SmolVLAPolicy"}[kind])
    policy = policy_cls(config)
    with torch.no_grad():  # LeRobot zero-initialises some heads; random weights exercise every path
        for name, p in policy.named_parameters():
            if "layer_norm" in name or "post_layernorm" in name:  # SigLIP LayerNorms
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
            elif name.endswith("norm.weight"):  # RMSNorms: Gemma stores w - 1, Llama stores w
                p.normal_(0.0 if kind != "smolvla" else 1.0, 0.1)
            elif p.ndim == 4:  # patch convolution
                p.normal_(0, 1.0 / float(np.prod(p.shape[1:])) ** 0.5)
            elif "embedding" in name or "embed_tokens" in name or "lm_head" in name:
                p.normal_(0, 1.0)
            elif name.endswith("bias"):
                p.normal_(0, 0.05)
            else:
                p.normal_(0, 1.0 / max(1, p.shape[-1]) ** 0.5)
    stats = {
        "observation.state": {k: v for k, v in make_stats(rng, case["state_dim"]).items() if k != "_scale"},
        "action": {k: v for k, v in make_stats(rng, case["action_dim"]).items() if k != "_scale"},
    }
    pre, post = make_proc(config, dataset_stats=stats)
    policy.save_pretrained(ckpt_dir)
    pre.save_pretrained(ckpt_dir)
    post.save_pretrained(ckpt_dir)


def record_fixtures(case: dict[str, Any], ckpt_dir: Path, fix_dir: Path) -> list[dict[str, Any]]:
    """Reload the saved policy with LeRobot and record every intermediate per observation."""
    import torch
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors
    from lerobot.policies.utils import prepare_observation_for_inference

    kind = case["type"]
    policy = get_policy_class(kind).from_pretrained(str(ckpt_dir))
    policy.eval()
    pre, post = make_pre_post_processors(policy.config, pretrained_path=str(ckpt_dir))
    model = policy.model
    rng = np.random.default_rng(case["seed"] + 1000)
    cams = case["cameras"]
    side = policy.config.image_features[cams[0]].shape[1:]
    records = []
    scenarios = [
        {"missing": [], "sizes": {}, "task": TASKS[0]},
        {"missing": [cams[-1]] if len(cams) > 1 else [], "sizes": {cams[0]: (side[0] + 8, side[1] + 24)},
         "task": TASKS[1]},
        {"missing": [], "sizes": {cams[-1]: (side[0] * 2, side[1])}, "task": TASKS[2]},
    ]
    fix_dir.mkdir(parents=True, exist_ok=True)
    for idx, sc in enumerate(scenarios):
        obs: dict[str, np.ndarray] = {}
        for cam in cams:
            if cam in sc["missing"]:
                continue
            h, w = sc["sizes"].get(cam, side)
            obs[cam] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        scale = case.get("state_scale", 1.0)
        obs["observation.state"] = (rng.normal(0.3, 1.0, case["state_dim"]) * scale).astype(np.float32)
        steps = int(getattr(policy.config, "num_inference_steps", getattr(policy.config, "num_steps", 10)))
        chunk, width = policy.config.chunk_size, policy.config.max_action_dim
        noise = rng.standard_normal((1, chunk, width)).astype(np.float32)
        raw = {k: v.copy() for k, v in obs.items()}

        captured: dict[str, Any] = {"t": [], "x": [], "v": []}
        restore = _instrument(model, captured)
        try:
            with torch.no_grad():
                batch = prepare_observation_for_inference(dict(obs), torch.device("cpu"), sc["task"])
                batch = pre(batch)
                chunk_out = policy.predict_action_chunk(batch, noise=torch.from_numpy(noise))
                actions = post(chunk_out)
        finally:
            restore()
        sample = captured["sample"]
        out = {
            **{f"obs.{k}": v for k, v in raw.items()},
            "task": np.array(sc["task"]), "noise": noise, "num_steps": np.array(steps),
            "camera_keys_present": np.array([c for c in cams if c in raw]),
            "out.lang_tokens": batch["observation.language.tokens"].numpy(),
            "out.lang_attention_mask": batch["observation.language.attention_mask"].numpy().astype(bool),
            "out.state_normalized": batch["observation.state"].numpy(),
            "out.model_images": torch.stack(captured["images"]).numpy(),
            "out.model_image_masks": torch.stack(captured["image_masks"]).numpy(),
            "out.prefix_embs": captured["prefix"][0].numpy(),
            "out.prefix_pad_masks": captured["prefix"][1].numpy(),
            "out.prefix_att_masks": captured["prefix"][2].numpy().astype(bool),
            "out.denoise_t": torch.stack(captured["t"]).numpy(),
            "out.denoise_x_t": torch.stack(captured["x"]).numpy(),
            "out.denoise_v_t": torch.stack(captured["v"]).numpy(),
            "out.sample_actions": sample.numpy(),
            "out.predict_action_chunk": chunk_out.numpy(),
            "out.actions": actions.numpy(),
        }
        task_after = _task_after(kind, sc["task"], batch)
        out["out.task_after_preprocessor"] = np.array(task_after)
        if kind != "pi05":
            from lerobot.policies.common.vla_utils import pad_vector

            out["out.model_state_padded"] = pad_vector(batch["observation.state"], policy.config.max_state_dim).numpy()
        np.savez_compressed(fix_dir / f"fixture_{idx:02d}.npz", **out)
        records.append({"file": f"fixtures/fixture_{idx:02d}.npz", "task": sc["task"], "missing": sc["missing"],
                        "sizes": {k: list(v) for k, v in sc["sizes"].items()}, "num_steps": steps})
    return records


def _instrument(model: Any, captured: dict[str, Any]) -> Any:
    """Wrap the LeRobot model's embed_prefix / denoise_step / sample_actions to record their
    inputs and outputs into ``captured``; returns the function that undoes it."""
    orig_embed, orig_step, orig_sample = model.embed_prefix, model.denoise_step, model.sample_actions

    def sample_actions(*a: Any, **k: Any) -> Any:
        out = orig_sample(*a, **k)
        captured["sample"] = out.detach().clone()
        return out

    def embed_prefix(*a: Any, **k: Any) -> Any:
        out = orig_embed(*a, **k)
        captured["prefix"] = [t.detach().clone() for t in out]
        captured["images"] = [t.detach().clone() for t in a[0]]
        captured["image_masks"] = [t.detach().clone() for t in a[1]]
        return out

    def denoise_step(*a: Any, **k: Any) -> Any:
        v = orig_step(*a, **k)
        captured["t"].append(k["timestep"].detach().clone())
        captured["x"].append(k["x_t"].detach().clone())
        captured["v"].append(v.detach().clone())
        return v

    model.embed_prefix, model.denoise_step, model.sample_actions = embed_prefix, denoise_step, sample_actions

    def restore() -> None:
        model.embed_prefix, model.denoise_step, model.sample_actions = orig_embed, orig_step, orig_sample

    return restore


def _task_after(kind: str, task: str, batch: dict[str, Any]) -> str:
    """The string LeRobot tokenized (the preprocessor keeps it in complementary data)."""
    value = batch.get("task")
    if isinstance(value, list):
        value = value[0]
    return str(value if value is not None else task)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "test" / "data" / "lerobot" / "generated")
    parser.add_argument("--only", nargs="*", help="case names to (re)generate")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    versions = {}
    for case in CASES:
        if args.only and case["name"] not in args.only:
            continue
        out = args.out / case["name"]
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        cache = make_hf_cache(case, out)
        os.environ.update({"HF_HOME": str(cache), "HF_HUB_OFFLINE": "1"})
        if case["type"] in ("pi0", "pi05"):
            import importlib

            mod = importlib.import_module(f"lerobot.policies.{case['type']}.modeling_{case['type']}")
            patch_paligemma_sizes(mod, case.get("arch", DEFAULT_ARCH))
        build_policy(case, out / "checkpoint")
        records = record_fixtures(case, out / "checkpoint", out / "fixtures")
        import lerobot
        import transformers

        versions = {"lerobot": lerobot.__version__ if hasattr(lerobot, "__version__") else "0.6.1",
                    "torch": torch.__version__, "transformers": transformers.__version__,
                    "numpy": np.__version__}
        manifest = {k: v for k, v in case.items() if k != "cfg"}
        manifest.update(config_overrides=case["cfg"], fixtures=records, versions=versions)
        (out / "manifest.json").write_text(json.dumps(manifest, indent=1, default=list))
        print(f"{case['name']}: {len(records)} fixtures")


if __name__ == "__main__":
    main()
