#!/usr/bin/env python3
"""Train the SO-101 pick demo policy (a tiny LeRobot pi0) on scripted-expert demonstrations.

    .venv/bin/python tools/train_demo_policy.py \\
        --dataset /work/data/so101_pick/demos_96_seed0_n100.npz \\
        --output demo/so101_pick_pi0 --seed 0

Writes, under ``--output``:

* ``checkpoint/``: a LeRobot 0.6.1 pi0 checkpoint in LeRobot's on-disk layout
  (``config.json``, ``model.safetensors`` with LeRobot's tensor names,
  ``policy_preprocessor.json`` + its normalizer statistics, ``policy_postprocessor.json`` +
  its un-normalizer statistics), so ``reflex-ros export`` reads it exactly as a user's;
* ``hf_cache/``: an offline Hugging Face cache holding the tiny tokenizer repo the checkpoint
  names (:data:`TOKENIZER_REPO`), with a ``config.json`` whose ``vision_config`` states the
  SigLIP head count (the one size the weights cannot tell). Export with
  ``HF_HOME=<output>/hf_cache``;
* ``training.json``: command, seeds, datasets, architecture, parameter count, loss curve,
  final loss and wall time.

Why it is built this way:

* **pi0 and its objective, as LeRobot 0.6.1 trains it** (``PI0Pytorch.forward``): time
  ``t ~ Beta(1.5, 1) * 0.999 + 0.001``, ``x_t = t * noise + (1 - t) * actions``, target
  ``u = noise - actions``, MSE on the first ``action_dim`` of the ``max_action_dim`` padded
  dims, mean over the chunk (padding rows included: LeRobot 0.6.1 does not mask
  ``action_is_pad``, and our padding repeats the last action, i.e. "hold"). The model is
  the one serving runs (:class:`~reflex_ros.policies.pi0.model.Pi0Model`): ``prefix`` then
  ``velocity`` with gradients through the prefix KV, which is the same computation as
  LeRobot's joint prefix+suffix pass (the prefix never attends to the suffix).
* **Train on what serving feeds.** Images, state and prompt go through the package's numpy
  pi0 processor (:class:`~reflex_ros.policies.pi0.processor.Pi0Processor`), built from the
  same spec and statistics the checkpoint carries; images are 96x96, the model's
  ``image_resolution``, so the processor's resize-with-pad is the identity and only maps
  [0, 255] to [-1, 1] (checked against the processor at start-up).
* **Normalization from the demonstrations**: MEAN_STD for state and action over every
  recorded 30 Hz tick, IDENTITY for images (pi0's defaults), saved as LeRobot saves dataset
  statistics (mean, std, min, max, quantiles, count).
* **Tiny, on two CPU cores**: SigLIP 64 wide, 2 layers, 12 px patches (8x8 = 64 tokens,
  the cube ~9 px spans one or two), Gemma 128 wide x 2 layers with one KV head, expert 64
  wide; ~0.6 M parameters. A 16-token prompt budget (the instruction takes 6).
* **Deterministic from --seed** on one machine and thread count: torch's global RNG drives
  init, noise and time; numpy's ``default_rng(seed)`` the batches.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: hub id of the bundled tokenizer: a tiny GemmaTokenizer-compatible BPE (543 entries), not
#: the 257k-entry PaliGemma one, so the checkpoint stays a few MB. Only "pick up the cube"
#: matters, and it tokenizes to whole words.
TOKENIZER_REPO = "reflex-ros/so101-demo-tokenizer"
#: where its files come from: the fake PaliGemma tokenizer of the LeRobot test fixtures
TOKENIZER_SOURCE = REPO / "test" / "data" / "lerobot" / "hf_cache" / "hub" / "models--google--paligemma-3b-pt-224"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")

CAMERA_KEY = "observation.images.front"
STATE_KEY = "observation.state"
ACTION_KEY = "action"
NORM_MAP = {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"}
NORM_EPS = 1e-8

#: LeRobot's flow-matching time distribution (PI0Config defaults)
TIME_BETA_ALPHA, TIME_BETA_BETA, TIME_SCALE, TIME_OFFSET = 1.5, 1.0, 0.999, 0.001

#: The default tiny architecture (see the module docstring). Gemma keeps LeRobot's one KV head.
DEFAULT_ARCH: dict[str, Any] = {
    "vision": {"hidden_size": 64, "intermediate_size": 256, "num_layers": 2, "num_heads": 4, "patch_size": 12},
    "vlm": {"hidden_size": 128, "intermediate_size": 512, "num_layers": 2, "num_heads": 4, "head_dim": 32},
    "expert": {"hidden_size": 64, "intermediate_size": 256, "num_heads": 4},
}


def _load_sim_dataset_module() -> Any:
    """``tools/sim_dataset.py`` (a script, not a package module) for ``load_dataset``."""
    spec = importlib.util.spec_from_file_location("sim_dataset", Path(__file__).with_name("sim_dataset.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["sim_dataset"] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------- data
class Demos:
    """All training samples of one or more datasets, concatenated.

    A sample is one camera frame (15 Hz) with the joint state of its tick and the 50-row
    chunk of targets from that tick on (``PickDemos.chunk``: rows past the episode's end
    repeat the last target)."""

    def __init__(self, paths: list[Path], chunk: int) -> None:
        sd = _load_sim_dataset_module()
        images, states, chunks, tick_states, tick_actions = [], [], [], [], []
        self.meta: list[dict] = []
        self.instruction = ""
        for path in paths:
            d = sd.load_dataset(path)
            if self.instruction and d.instruction != self.instruction:
                raise SystemExit(f"{path}: instruction {d.instruction!r} differs from {self.instruction!r}")
            self.instruction = d.instruction
            ticks = d.episode_start[d.frame_episode] + d.frame_step
            images.append(d.images)
            states.append(d.state[ticks])
            chunks.append(np.stack([d.chunk(f, chunk)[0] for f in range(len(d.images))]))
            tick_states.append(d.state)
            tick_actions.append(d.action)
            self.meta.append({
                "path": str(path),
                "episodes": int(len(d.episode_seed)),
                "seeds": [int(d.episode_seed.min()), int(d.episode_seed.max())],
                "frames": int(len(d.images)),
                "perturb_rad": d.meta.get("perturb_rad", 0.0),
                "image_size": d.meta["image_size"],
                "control_hz": d.meta["control_hz"],
                "camera_hz": d.meta["camera_hz"],
                "generation_command": d.meta.get("generation", {}).get("command"),
            })
        self.images = np.concatenate(images)
        self.states = np.concatenate(states).astype(np.float32)
        self.chunks = np.concatenate(chunks).astype(np.float32)
        self.tick_states = np.concatenate(tick_states).astype(np.float64)
        self.tick_actions = np.concatenate(tick_actions).astype(np.float64)

    def __len__(self) -> int:
        return len(self.images)


def dataset_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """LeRobot's per-feature dataset statistics (what ``save_pretrained`` stores for the
    normalizer): mean, std, min, max, the q01..q99 quantiles and the count, float32."""
    x = np.asarray(x, np.float64)
    out = {"mean": x.mean(0), "std": x.std(0), "min": x.min(0), "max": x.max(0)}
    for q in (1, 10, 50, 90, 99):
        out[f"q{q:02d}"] = np.quantile(x, q / 100.0, axis=0)
    out["count"] = np.array([len(x)])
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


# ---------------------------------------------------------------------- checkpoint files
def lerobot_config(arch: dict[str, Any], args: argparse.Namespace, image_size: int, state_dim: int,
                   action_dim: int) -> dict[str, Any]:
    """``config.json`` as LeRobot 0.6.1's ``PI0Config`` saves it. The variants still say
    gemma_2b / gemma_300m (LeRobot builds from its size tables, never from this file); the
    true sizes are in the weights, which is where every loader must read them."""
    visual = {"type": "VISUAL", "shape": [3, image_size, image_size]}
    return {
        "type": "pi0",
        "n_obs_steps": 1,
        "input_features": {CAMERA_KEY: visual, STATE_KEY: {"type": "STATE", "shape": [state_dim]}},
        "output_features": {ACTION_KEY: {"type": "ACTION", "shape": [action_dim]}},
        "device": "cpu",
        "use_amp": False,
        "use_peft": False,
        "push_to_hub": False,
        "repo_id": None,
        "private": None,
        "tags": None,
        "license": None,
        "pretrained_path": None,
        "pretrained_revision": None,
        "paligemma_variant": "gemma_2b",
        "action_expert_variant": "gemma_300m",
        "dtype": "float32",
        "chunk_size": args.chunk_size,
        "n_action_steps": args.chunk_size,
        "max_state_dim": args.max_dim,
        "max_action_dim": args.max_dim,
        "num_inference_steps": args.num_inference_steps,
        "time_sampling_beta_alpha": TIME_BETA_ALPHA,
        "time_sampling_beta_beta": TIME_BETA_BETA,
        "time_sampling_scale": TIME_SCALE,
        "time_sampling_offset": TIME_OFFSET,
        "min_period": 0.004,
        "max_period": 4.0,
        "use_relative_actions": False,
        "relative_exclude_joints": ["gripper"],
        "action_feature_names": None,
        "rtc_config": None,
        "image_resolution": [image_size, image_size],
        "empty_cameras": 0,
        "normalization_mapping": dict(NORM_MAP),
        "gradient_checkpointing": False,
        "compile_model": False,
        "compile_mode": "max-autotune",
        "freeze_vision_encoder": False,
        "train_expert_only": False,
        "optimizer_lr": args.lr,
        "optimizer_betas": [0.9, 0.95],
        "optimizer_eps": 1e-08,
        "optimizer_weight_decay": args.weight_decay,
        "optimizer_grad_clip_norm": 1.0,
        "scheduler_warmup_steps": args.warmup_steps,
        "scheduler_decay_steps": args.steps,
        "scheduler_decay_lr": args.lr * 0.1,
        "tokenizer_max_length": args.tokenizer_max_length,
    }


def processor_configs(image_size: int, state_dim: int, action_dim: int,
                      tokenizer_max_length: int) -> tuple[dict, dict]:
    """``policy_preprocessor.json`` / ``policy_postprocessor.json`` with LeRobot 0.6.1's pi0
    pipeline (``make_pi0_pre_post_processors``), the tokenizer step naming our tiny repo."""
    visual = {"type": "VISUAL", "shape": [3, image_size, image_size]}
    features = {CAMERA_KEY: visual, STATE_KEY: {"type": "STATE", "shape": [state_dim]},
                ACTION_KEY: {"type": "ACTION", "shape": [action_dim]}}
    pre = {
        "name": "policy_preprocessor",
        "steps": [
            {"registry_name": "rename_observations_processor", "config": {"rename_map": {}}},
            {"registry_name": "to_batch_processor", "config": {}},
            {"registry_name": "pi0_new_line_processor", "config": {}},
            {"registry_name": "tokenizer_processor", "config": {
                "max_length": tokenizer_max_length, "task_key": "task", "padding_side": "right",
                "padding": "max_length", "truncation": True, "tokenizer_name": TOKENIZER_REPO}},
            {"registry_name": "device_processor", "config": {"device": "cpu", "float_dtype": None}},
            {"registry_name": "relative_actions_processor",
             "config": {"enabled": False, "exclude_joints": ["gripper"], "action_names": None}},
            {"registry_name": "normalizer_processor",
             "config": {"eps": NORM_EPS, "features": features, "norm_map": dict(NORM_MAP)},
             "state_file": "policy_preprocessor_step_6_normalizer_processor.safetensors"},
        ],
    }
    post = {
        "name": "policy_postprocessor",
        "steps": [
            {"registry_name": "unnormalizer_processor",
             "config": {"eps": NORM_EPS, "features": {ACTION_KEY: features[ACTION_KEY]}, "norm_map": dict(NORM_MAP)},
             "state_file": "policy_postprocessor_step_0_unnormalizer_processor.safetensors"},
            {"registry_name": "absolute_actions_processor", "config": {"enabled": False}},
            {"registry_name": "device_processor", "config": {"device": "cpu", "float_dtype": None}},
        ],
    }
    return pre, post


def write_tokenizer_cache(cache: Path, arch: dict[str, Any], image_size: int, vocab_size: int) -> Path:
    """An offline HF cache with :data:`TOKENIZER_REPO`: the tokenizer files plus a PaliGemma
    ``config.json`` describing this model (its ``vision_config`` gives the SigLIP heads).
    The snapshot name is a hash of the files, so the same inputs give the same cache."""
    source = TOKENIZER_SOURCE / "snapshots" / (TOKENIZER_SOURCE / "refs" / "main").read_text().strip()
    files = {name: (source / name).read_bytes() for name in TOKENIZER_FILES}
    v, g = arch["vision"], arch["vlm"]
    config = {
        "model_type": "paligemma",
        "_comment": "reflex_ros SO-101 demo: tiny tokenizer + the sizes of the demo policy (not PaliGemma)",
        "hidden_size": g["hidden_size"],
        "projection_dim": g["hidden_size"],
        "image_token_index": vocab_size - 1,
        "vocab_size": vocab_size,
        "text_config": {
            "model_type": "gemma", "hidden_size": g["hidden_size"], "intermediate_size": g["intermediate_size"],
            "num_hidden_layers": g["num_layers"], "num_attention_heads": g["num_heads"],
            "num_key_value_heads": 1, "head_dim": g["head_dim"], "vocab_size": vocab_size,
            "rms_norm_eps": 1e-06, "hidden_act": "gelu_pytorch_tanh",
            "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
        },
        "vision_config": {
            "model_type": "siglip_vision_model", "hidden_size": v["hidden_size"],
            "intermediate_size": v["intermediate_size"], "num_hidden_layers": v["num_layers"],
            "num_attention_heads": v["num_heads"], "patch_size": v["patch_size"], "image_size": image_size,
            "num_channels": 3, "layer_norm_eps": 1e-06, "hidden_act": "gelu_pytorch_tanh",
            "projection_dim": g["hidden_size"],
        },
    }
    files["config.json"] = (json.dumps(config, indent=2) + "\n").encode()
    files["README.txt"] = (
        f"{TOKENIZER_REPO}: the tiny tokenizer bundled with the reflex_ros SO-101 demo policy.\n"
        "It is NOT the real PaliGemma tokenizer (257k entries): a GemmaTokenizer-compatible BPE with\n"
        "543 entries (byte fallback, ' '->'\u2581', <bos> prepended, <pad>=0 <eos>=1 <bos>=2 <unk>=3),\n"
        "copied from reflex_ros's LeRobot test fixtures. config.json describes the demo policy's\n"
        "SigLIP tower (num_attention_heads), which its weights cannot tell.\n"
    ).encode()
    digest = hashlib.sha1(b"".join(k.encode() + b"\0" + files[k] for k in sorted(files))).hexdigest()
    repo = cache / "hub" / ("models--" + TOKENIZER_REPO.replace("/", "--"))
    if repo.exists():
        shutil.rmtree(repo)
    snapshot = repo / "snapshots" / digest
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(digest)
    return snapshot


def lerobot_state_dict(model: Any, spec: Any, seed: int) -> dict[str, Any]:
    """Our parameters under LeRobot 0.6.1's names, plus the tensors LeRobot's model has but
    that never reach the actions (``lm_head`` s, the VLM's final norm, the last VLM layer's
    q/o projections, post-attention norm and MLP): they stay at their initial values in
    LeRobot's training too (no gradient reaches them), so they are written at init.
    The LM head is tied to the embedding, as PaliGemma's is."""
    import torch

    from reflex_ros.policies.lerobot.paligemma_spec import EXPERT, LANG, PALI
    from reflex_ros.policies.lerobot.weights import lerobot_name

    prefix_map = model.weight_prefix_map()
    out = {lerobot_name(name, prefix_map): p.detach().to(torch.float32).contiguous().clone()
           for name, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(seed + 7919)
    vlm, expert = spec.vlm, spec.expert
    last = f"{LANG}layers.{vlm.num_layers - 1}."
    w, hd = vlm.hidden_size, vlm.head_dim

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * 0.02

    out[last + "self_attn.q_proj.weight"] = normal(vlm.num_heads * hd, w)
    out[last + "self_attn.o_proj.weight"] = normal(w, vlm.num_heads * hd)
    out[last + "post_attention_layernorm.weight"] = torch.zeros(w)
    out[last + "mlp.gate_proj.weight"] = normal(vlm.intermediate_size, w)
    out[last + "mlp.up_proj.weight"] = normal(vlm.intermediate_size, w)
    out[last + "mlp.down_proj.weight"] = normal(w, vlm.intermediate_size)
    out[LANG + "norm.weight"] = torch.zeros(w)
    out[PALI.removesuffix("model.") + "lm_head.weight"] = out[LANG + "embed_tokens.weight"].clone()
    out[EXPERT.removesuffix("model.") + "lm_head.weight"] = normal(vlm.vocab_size, expert.hidden_size)
    return {k: out[k].contiguous() for k in sorted(out)}


def write_checkpoint(directory: Path, model: Any, spec: Any, stats: dict[str, dict[str, np.ndarray]],
                     config: dict[str, Any], pre: dict, post: dict, seed: int) -> None:
    """Write the LeRobot checkpoint files into ``directory`` (replaced if present)."""
    from safetensors.numpy import save_file as save_numpy
    from safetensors.torch import save_file

    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    save_file(lerobot_state_dict(model, spec, seed), str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config, indent=4) + "\n")
    (directory / "policy_preprocessor.json").write_text(json.dumps(pre, indent=2) + "\n")
    (directory / "policy_postprocessor.json").write_text(json.dumps(post, indent=2) + "\n")
    flat = {f"{key}.{name}": np.ascontiguousarray(v) for key in (ACTION_KEY, STATE_KEY)
            for name, v in stats[key].items()}
    for step in (pre["steps"][-1], post["steps"][0]):
        save_numpy(flat, str(directory / step["state_file"]))


# ---------------------------------------------------------------------- model
def build_spec(arch: dict[str, Any], args: argparse.Namespace, image_size: int, state_dim: int,
               action_dim: int, vocab_size: int) -> Any:
    """The FamilySpec the checkpoint will load as (checked after writing it)."""
    from reflex_ros.policies.lerobot.paligemma_spec import GEMMA_RMS_EPS, GEMMA_ROPE_THETA, SIGLIP_LN_EPS
    from reflex_ros.policies.lerobot.spec import DecoderArch, FamilySpec, VisionArch

    v, g, e = arch["vision"], arch["vlm"], arch["expert"]
    return FamilySpec(
        model_type="pi0", camera_keys=[CAMERA_KEY], state_dim=state_dim, action_dim=action_dim,
        chunk_size=args.chunk_size, max_state_dim=args.max_dim, max_action_dim=args.max_dim,
        image_hw=(image_size, image_size), tokenizer_max_length=args.tokenizer_max_length,
        num_inference_steps=args.num_inference_steps, tokenizer_hub_id=TOKENIZER_REPO,
        tokenizer_padding="max_length", norm_map=dict(NORM_MAP), norm_eps=NORM_EPS,
        vision=VisionArch(v["hidden_size"], v["intermediate_size"], v["num_layers"], v["num_heads"],
                          v["patch_size"], image_size, SIGLIP_LN_EPS),
        vlm=DecoderArch(g["hidden_size"], g["intermediate_size"], g["num_layers"], g["num_heads"], 1,
                        g["head_dim"], GEMMA_RMS_EPS, GEMMA_ROPE_THETA, vocab_size),
        expert=DecoderArch(e["hidden_size"], e["intermediate_size"], g["num_layers"], e["num_heads"], 1,
                           g["head_dim"], GEMMA_RMS_EPS, GEMMA_ROPE_THETA, 0),
    )


def init_weights(model: Any) -> None:
    """transformers' Gemma/PaliGemma scheme (``initializer_range`` 0.02): normal(0, 0.02)
    weights, zero biases; LayerNorm at identity; Gemma RMSNorm offsets at 0 (scale 1)."""
    import torch
    from torch import nn

    from reflex_ros.policies.lerobot.decoder_layers import GemmaRMSNorm

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d, nn.Embedding)):
                nn.init.normal_(module.weight, 0.0, 0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, GemmaRMSNorm):
                nn.init.zeros_(module.weight)


def lr_at(step: int, args: argparse.Namespace) -> float:
    """LeRobot's cosine-decay-with-warmup schedule: linear warmup, cosine to ``lr / 10``."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    progress = min(1.0, (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps))
    low = args.lr * 0.1
    return low + 0.5 * (args.lr - low) * (1.0 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, action="append", required=True,
                   help="demonstrations from tools/sim_dataset.py (.npz); repeat to combine several")
    p.add_argument("--output", type=Path, required=True, help="folder for checkpoint/, hf_cache/, training.json")
    p.add_argument("--seed", type=int, default=0, help="seed of init, batches, noise and time (default 0)")
    p.add_argument("--steps", type=int, default=8000, help="optimizer steps (default 8000)")
    p.add_argument("--batch-size", type=int, default=32, help="samples per step (default 32)")
    p.add_argument("--lr", type=float, default=5e-4, help="peak AdamW learning rate (default 5e-4)")
    p.add_argument("--warmup-steps", type=int, default=500, help="linear warmup steps (default 500)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (LeRobot's 0.01)")
    p.add_argument("--chunk-size", type=int, default=50, help="action chunk rows (default 50)")
    p.add_argument("--max-dim", type=int, default=32, help="max_state_dim = max_action_dim (pi0's 32)")
    p.add_argument("--tokenizer-max-length", type=int, default=16, help="prompt tokens (default 16)")
    p.add_argument("--num-inference-steps", type=int, default=10, help="config's Euler steps (default 10)")
    p.add_argument("--arch", type=json.loads, default=None,
                   help="JSON overriding parts of the architecture, e.g. '{\"vision\": {\"patch_size\": 8}}'")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2: the box's cores)")
    p.add_argument("--log-every", type=int, default=100, help="steps between loss lines (default 100)")
    p.add_argument("--save-every", type=int, default=0,
                   help="also write snapshots/step_<n>/ checkpoints every n steps (0: only the final one)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from reflex_ros.policies.lerobot.checkpoint import load_lerobot_checkpoint
    from reflex_ros.policies.lerobot.tokenizer import LeRobotTokenizer
    from reflex_ros.policies.pi0.model import Pi0Model
    from reflex_ros.policies.pi0.processor import Pi0Processor

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # denormal weights/gradients can slow CPU math many-fold
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    arch = json.loads(json.dumps(DEFAULT_ARCH))
    for part, values in (args.arch or {}).items():
        arch[part].update(values)

    t_load = time.perf_counter()
    demos = Demos(args.dataset, args.chunk_size)
    image_size = int(demos.images.shape[1])
    state_dim, action_dim = demos.states.shape[1], demos.chunks.shape[2]
    print(f"{len(demos)} samples from {sum(m['episodes'] for m in demos.meta)} episodes "
          f"({time.perf_counter() - t_load:.0f} s to load)", flush=True)

    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "hf_cache"
    tokenizer = LeRobotTokenizer(TOKENIZER_SOURCE / "snapshots" /
                                 (TOKENIZER_SOURCE / "refs" / "main").read_text().strip())
    vocab_size = int(math.ceil(tokenizer._tok.get_vocab_size(with_added_tokens=True) / 64) * 64)
    write_tokenizer_cache(cache, arch, image_size, vocab_size)
    os.environ["HF_HOME"] = str(cache.resolve())
    os.environ.pop("HF_HUB_CACHE", None)

    stats = {STATE_KEY: dataset_stats(demos.tick_states), ACTION_KEY: dataset_stats(demos.tick_actions)}
    spec = build_spec(arch, args, image_size, state_dim, action_dim, vocab_size)
    processor = Pi0Processor(spec, stats, TOKENIZER_REPO)

    # model inputs, through the serving processor
    one = processor.prepare({CAMERA_KEY: demos.images[0]}, demos.states[0], demos.instruction)
    lang_tokens = torch.as_tensor(one["lang_tokens"])
    lang_masks = torch.as_tensor(one["lang_masks"])
    states = np.stack([processor.padded_state(processor.normalized_state(s)) for s in demos.states])
    actions = processor.action_normalizer.normalize(demos.chunks)
    padded_actions = np.zeros((*actions.shape[:2], args.max_dim), np.float32)
    padded_actions[..., :action_dim] = actions

    def batch_images(idx: np.ndarray) -> np.ndarray:
        # the processor's resize_with_pad_centered at equal size, vectorized: /255 then *2-1
        x = demos.images[idx].astype(np.float32) / np.float32(255.0)
        return (x * np.float32(2.0) - np.float32(1.0)).transpose(0, 3, 1, 2)[:, None]

    for i in (0, len(demos) - 1):
        ref = processor.prepare({CAMERA_KEY: demos.images[i]}, demos.states[i], demos.instruction)
        assert np.array_equal(batch_images(np.array([i]))[0], ref["images"][0]), "image preprocessing drifted"
        assert np.array_equal(states[i], ref["state"][0]), "state preprocessing drifted"
        assert np.array_equal(lang_tokens, ref["lang_tokens"]), "prompt differs between samples"

    model = Pi0Model(spec)
    init_weights(model)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"pi0 tiny: {n_params / 1e6:.3f} M trainable parameters; arch {json.dumps(arch)}", flush=True)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    beta = torch.distributions.Beta(torch.tensor(TIME_BETA_ALPHA), torch.tensor(TIME_BETA_BETA))
    image_masks = torch.ones(args.batch_size, 1, dtype=torch.bool)
    tokens_b = lang_tokens.expand(args.batch_size, -1)
    masks_b = lang_masks.expand(args.batch_size, -1)
    config = lerobot_config(arch, args, image_size, state_dim, action_dim)
    pre, post = processor_configs(image_size, state_dim, action_dim, args.tokenizer_max_length)

    curve: list[dict[str, float]] = []
    running, t0 = [], time.perf_counter()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        idx = rng.integers(0, len(demos), args.batch_size)
        images = torch.from_numpy(batch_images(idx))
        state = torch.from_numpy(states[idx])
        target = torch.from_numpy(padded_actions[idx])
        noise = torch.randn(target.shape)
        t = beta.sample((args.batch_size,)) * TIME_SCALE + TIME_OFFSET
        x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * target
        kv, prefix_mask = model.prefix(images, image_masks, tokens_b, masks_b)
        v_t = model.velocity(x_t, t, kv, prefix_mask, state=state)
        loss = torch.nn.functional.mse_loss(v_t, noise - target, reduction="none")[..., :action_dim].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running.append(loss.item())
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            mean = float(np.mean(running))
            running = []
            elapsed = time.perf_counter() - t0
            curve.append({"step": step + 1, "loss": round(mean, 5), "lr": lr_at(step, args), "wall_s": round(elapsed, 1)})
            print(f"step {step + 1:>6}/{args.steps}  loss {mean:.4f}  lr {lr_at(step, args):.2e}  "
                  f"{elapsed:6.0f} s", flush=True)
        if args.save_every and (step + 1) % args.save_every == 0 and step + 1 < args.steps:
            write_checkpoint(out / "snapshots" / f"step_{step + 1}", model, spec, stats, config, pre, post, args.seed)
    train_s = time.perf_counter() - t0

    model.eval()
    ckpt_dir = out / "checkpoint"
    write_checkpoint(ckpt_dir, model, spec, stats, config, pre, post, args.seed)
    # the written checkpoint must read back as exactly the spec we trained
    loaded = load_lerobot_checkpoint(ckpt_dir)
    if loaded.spec.to_dict() != spec.to_dict():
        raise SystemExit(f"checkpoint reads back as a different spec:\n{loaded.spec}\nvs\n{spec}")
    check = Pi0Model(loaded.spec, loaded.load_state_dict())
    for (name, a), b in zip(model.state_dict().items(), check.state_dict().values(), strict=True):
        if not torch.equal(a, b):
            raise SystemExit(f"checkpoint weight {name} does not read back")

    info = {
        "command": "tools/train_demo_policy.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "seed": args.seed,
        "datasets": demos.meta,
        "samples": len(demos),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "optimizer": {"name": "AdamW", "lr": args.lr, "betas": [0.9, 0.95], "eps": 1e-8,
                      "weight_decay": args.weight_decay, "grad_clip_norm": 1.0,
                      "schedule": f"linear warmup {args.warmup_steps} steps, cosine to {args.lr * 0.1:g}"},
        "objective": "LeRobot 0.6.1 pi0 flow matching: t ~ Beta(1.5,1)*0.999+0.001, x_t = t*noise + (1-t)*a, "
                     "u = noise - a, MSE over the first action_dim dims",
        "architecture": arch,
        "vocab_size": vocab_size,
        "parameters": n_params,
        "final_loss": curve[-1]["loss"],
        "loss_last_1000_steps": round(float(np.mean([c["loss"] for c in curve if c["step"] > args.steps - 1000])), 5),
        "train_wall_s": round(train_s, 1),
        "threads": args.threads,
        "torch": torch.__version__,
        "curve": curve,
    }
    (out / "training.json").write_text(json.dumps(info, indent=1) + "\n")
    size = sum(p.stat().st_size for p in ckpt_dir.iterdir())
    print(f"wrote {ckpt_dir} ({size / 1e6:.1f} MB) and {cache}; final loss {info['final_loss']:.4f}; "
          f"training {train_s / 60:.1f} min on {args.threads} CPU threads")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
