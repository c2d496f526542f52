"""pi0, pi0.5 and SmolVLA at their published sizes with seeded random weights (benchmarks).

Real weights cannot be downloaded here, and the speed of a model depends only on its shapes,
so the GPU benchmarks build the families' own torch models (the ones real checkpoints load
into) at the real dimensions:

- **pi0** (LeRobot ``PI0Config``: PaliGemma-3B + Gemma-300M expert): SigLIP-So400m (1152 wide,
  27 layers, 16 heads, MLP 4304, patch 14 at 224 px, 256 tokens per image), the 1152 -> 2048
  projector, Gemma-2B (2048 wide, 18 layers, 8 heads, 1 KV head of 256, MLP 16384, vocab
  257152), the Gemma-300M expert (1024 wide, 18 layers, 8 heads, 1 KV head of 256, MLP 4096),
  a state token; 48 language tokens;
- **pi0.5** (``PI05Config``): the same backbone, AdaRMS expert norms driven by the time MLP,
  the state as 256-bin text in the prompt, no state token; 200 language tokens by default
  (LeRobot's ``tokenizer_max_length``), 48 in the issue-10 workload;
- **SmolVLA** (``SmolVLAConfig`` over SmolVLM2-500M-Video-Instruct): the SigLIP-like tower (768
  wide, 12 layers, 12 heads, MLP 3072, patch 16 at 512 px), pixel shuffle by 4 (64 tokens per
  image), the 12288 -> 960 connector, the first 16 of the 32 Llama text layers (960 wide, 15
  heads, 5 KV heads of 64, MLP 2560, vocab 49280, RMS eps 1e-5), and the interleaved expert:
  width 960 x 0.75 = 720, MLP ``get_intermediate_size(720)`` = 2048 (LeRobot's rule:
  ``256 * ceil(4 * int(2 * 720 / 3) / 256)``), 16 layers, cross-attention except every 2nd
  layer (``self_attn_every_n_layers=2``), whose cross k/v project the VLM's 320-wide K/V;
  48 language tokens, a state token.

Parameter counts: pi0 3.13 B, pi0.5 3.24 B, SmolVLA 0.39 B; LeRobot counts 4.03 / 4.14 /
0.45 B, which include the never-used LM heads and the last VLM layer's q/o/MLP (only its K/V
reach the expert), which the family models do not build.

The model is built on the meta device and materialized once on the target device, each
tensor drawn from a seeded generator there (fp32 draws, cast to the model dtype), so a
3 B-parameter model takes seconds on a GPU and a bf16 build holds the same weights as the
fp32 one, rounded. The init is depth-aware as the reference model's (``reference/model.py:
init_weights``): std ``1/sqrt(fan_in)``, projections into a residual stream scaled by
``1/sqrt(2 * depth)``, norms at unit gain, embeddings at unit scale after their sqrt(width)
factor, AdaRMS modulation small with the residual gate's bias at 1; no NaN in bf16 at depth.

:class:`SyntheticProcessor` feeds them without a tokenizer (none is downloadable here): a
fixed count of valid language tokens hashed from the prompt (48 by default, every slot
valid), and otherwise the family's own processing (images at the model's resolution,
resize-with-pad, state padding, postprocess). Benchmark results therefore say "random
weights, synthetic tokens"; the latency does not depend on either.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from reflex_ros.policies.lerobot.spec import DecoderArch, FamilySpec, VisionArch

SIZES = ("published", "tiny")
FAMILIES = ("pi0", "pi05", "smolvla")
PALIGEMMA_HUB = "google/paligemma-3b-pt-224"
SMOLVLM_HUB = "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"


def smolvla_expert_mlp(width: int) -> int:
    """LeRobot's ``get_intermediate_size`` (smolvlm_with_expert.py) for the expert width."""
    hidden = int(4 * int(2 * width / 3))
    return 256 * ((hidden + 255) // 256)


def _paligemma_arch(size: str) -> dict[str, Any]:
    if size == "published":
        return {
            "vision": VisionArch(1152, 4304, 27, 16, 14, 224, 1e-6),
            "vlm": DecoderArch(2048, 16384, 18, 8, 1, 256, 1e-6, 10000.0, 257152),
            "expert": DecoderArch(1024, 4096, 18, 8, 1, 256, 1e-6, 10000.0),
        }
    return {  # tiny: every code path (MQA, head_dim 16 for the Triton kernels), CPU seconds
        "vision": VisionArch(32, 64, 2, 2, 8, 32, 1e-6),
        "vlm": DecoderArch(64, 128, 2, 4, 1, 16, 1e-6, 10000.0, 300),
        "expert": DecoderArch(32, 64, 2, 4, 1, 16, 1e-6, 10000.0),
    }


def _smolvla_arch(size: str) -> dict[str, Any]:
    from reflex_ros.policies.smolvla.config import SMOLVLA_ROPE_WAVELENGTH, expert_layout

    if size == "published":
        vision = VisionArch(768, 3072, 12, 12, 16, 512, 1e-6)
        text_width, text_mlp, layers, heads, kv, hd, vocab = 960, 2560, 16, 15, 5, 64, 49280
    else:
        vision = VisionArch(32, 64, 2, 2, 8, 64, 1e-6)
        text_width, text_mlp, layers, heads, kv, hd, vocab = 64, 128, 4, 6, 2, 16, 300
    ew = int(text_width * 0.75)
    vlm = DecoderArch(text_width, text_mlp, layers, heads, kv, hd, 1e-5, SMOLVLA_ROPE_WAVELENGTH, vocab)
    expert = DecoderArch(ew, smolvla_expert_mlp(ew), layers, heads, kv, hd, 1e-5, SMOLVLA_ROPE_WAVELENGTH)
    layer_map, cross = expert_layout(layers, layers, "cross_attn", 2)
    return {"vision": vision, "vlm": vlm, "expert": expert, "backbone_hub_id": SMOLVLM_HUB,
            "pixel_shuffle_factor": 4, "attention_mode": "cross_attn", "self_attn_every_n_layers": 2,
            "expert_layer_map": layer_map, "cross_attn_layers": cross}


def published_spec(model_type: str, size: str = "published", *, num_cameras: int = 2, tokens: int | None = None,
                   chunk_size: int = 50, state_dim: int = 32, action_dim: int = 32) -> FamilySpec:
    """The :class:`FamilySpec` of ``model_type`` at ``size`` ("published" or "tiny").

    ``tokens``: language slots (default LeRobot's: 48 for pi0 / SmolVLA, 200 for pi0.5).
    Normalization is IDENTITY (no dataset statistics exist for random weights)."""
    if model_type not in FAMILIES:
        raise ValueError(f"unknown family {model_type!r}; choose one of {FAMILIES}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {SIZES}")
    if tokens is None:
        tokens = 200 if model_type == "pi05" else 48
    if model_type == "smolvla":
        arch = _smolvla_arch(size)
        hub = SMOLVLM_HUB
    else:
        arch = _paligemma_arch(size)
        hub = PALIGEMMA_HUB
    side = arch["vision"].image_size
    return FamilySpec(
        model_type=model_type,
        camera_keys=[f"observation.images.camera{i}" for i in range(num_cameras)],
        state_dim=state_dim,
        action_dim=action_dim,
        chunk_size=chunk_size,
        max_state_dim=32,
        max_action_dim=32,
        image_hw=(side, side),
        tokenizer_max_length=int(tokens),
        num_inference_steps=10,
        tokenizer_hub_id=hub,
        tokenizer_padding="max_length",
        norm_map={"VISUAL": "IDENTITY", "STATE": "IDENTITY", "ACTION": "IDENTITY"},
        expert_adarms=model_type == "pi05",
        notes={"weights": f"random ({size} size, seeded)"},
        **arch,
    )


# ---------------------------------------------------------------------------------------
# the torch model
# ---------------------------------------------------------------------------------------

_RESIDUAL_OUT = ("o_proj", "down_proj", "out_proj", "fc2")


def _depths(spec: FamilySpec) -> dict[str, int]:
    return {"vision": spec.vision.num_layers, "vlm_layers": spec.vlm.num_layers,
            "expert_layers": spec.expert.num_layers}


def init_published(model: Any, seed: int = 0) -> Any:
    """Seeded, depth-aware init of a family model (see the module docstring), in place.

    Each tensor is drawn in fp32 from one generator on the model's device, in module order,
    and cast into the parameter, so every dtype gets the same weights (rounded)."""
    import torch
    from torch import nn

    from reflex_ros.policies.lerobot.decoder_layers import AdaRMSNorm, GemmaRMSNorm, LlamaRMSNorm

    p0 = next(model.parameters())
    gen = torch.Generator(device=p0.device)
    gen.manual_seed(int(seed))
    depths = _depths(model.spec)

    def normal(p: torch.Tensor, std: float) -> None:
        p.copy_(torch.randn(p.shape, generator=gen, device=p.device, dtype=torch.float32) * std)

    ada_denses = {id(m.dense) for m in model.modules() if isinstance(m, AdaRMSNorm)}
    with torch.no_grad():
        for name, mod in model.named_modules():
            leaf = name.rsplit(".", 1)[-1]
            depth = next((d for key, d in depths.items() if f"{key}." in f"{name}."), 1)
            if isinstance(mod, GemmaRMSNorm):
                mod.weight.zero_()  # Gemma stores (gain - 1)
            elif isinstance(mod, LlamaRMSNorm):
                mod.weight.fill_(1.0)
            elif isinstance(mod, nn.LayerNorm):
                mod.weight.fill_(1.0)
                mod.bias.zero_()
            elif isinstance(mod, AdaRMSNorm):  # scale/shift small, the residual gate near 1
                dense = mod.dense
                normal(dense.weight, 0.2 / math.sqrt(dense.weight.shape[1]))
                dense.bias.zero_()
                dense.bias[2 * dense.bias.shape[0] // 3:].fill_(1.0)
            elif isinstance(mod, nn.Embedding):
                normal(mod.weight, 1.0 / math.sqrt(mod.weight.shape[1]))
            elif isinstance(mod, (nn.Linear, nn.Conv2d)) and id(mod) not in ada_denses:
                std = 1.0 / math.sqrt(mod.weight[0].numel())
                if leaf in _RESIDUAL_OUT:
                    std /= math.sqrt(2.0 * depth)
                normal(mod.weight, std)
                if mod.bias is not None:
                    mod.bias.zero_()
    return model


def build_published(model_type: str, size: str = "published", *, device: Any = "cpu", dtype: Any = "fp32",
                    seed: int = 0, **spec_options: Any) -> Any:
    """The family's torch model at ``size`` with seeded random weights, on ``device`` in
    ``dtype``, built on the meta device and materialized there once (eval, no grad)."""
    import torch

    from reflex_ros.engine.precision import resolve_dtype
    from reflex_ros.policies.lerobot.families import model_class

    spec = published_spec(model_type, size, **spec_options)
    cls = model_class(model_type)
    with torch.device("meta"):
        model = cls(spec)
    model = model.to_empty(device=device)
    _restore_buffers(model, spec, device)
    model = model.to(resolve_dtype(dtype))
    init_published(model, seed)
    return model.eval().requires_grad_(False)


def _restore_buffers(model: Any, spec: FamilySpec, device: Any) -> None:
    """Constants computed at construction (RoPE frequencies, time scales, position ids) are
    lost by ``to_empty``; take them from a one-layer CPU twin (same widths, so the same
    tables), which costs milliseconds instead of a full-size CPU model."""
    from reflex_ros.policies.lerobot.families import model_class

    small = dataclasses.replace(
        spec,
        vision=dataclasses.replace(spec.vision, num_layers=1),
        vlm=dataclasses.replace(spec.vlm, num_layers=1, vocab_size=max(8, max(spec.image_special_token_ids or [0]) + 1)),
        expert=dataclasses.replace(spec.expert, num_layers=1),
        expert_layer_map=[0] if spec.expert_layer_map else [],
        cross_attn_layers=[False] if spec.cross_attn_layers else [],
    )
    twin = dict(model_class(spec.model_type)(small).named_buffers())
    for mod_name, mod in model.named_modules():
        for leaf in list(mod._buffers):
            key = f"{mod_name}.{leaf}".lstrip(".")
            mod._buffers[leaf] = twin[key].to(device)


# ---------------------------------------------------------------------------------------
# the synthetic processor
# ---------------------------------------------------------------------------------------


class SyntheticTokenizer:
    """Stands in for the PaliGemma / SmolVLM tokenizer in benchmarks: ``valid`` token ids per
    prompt hashed from its text (so the RECAP cond / uncond prompts differ), the rest padding."""

    def __init__(self, vocab_size: int, valid: int = 48) -> None:
        self.vocab_size, self.valid = int(vocab_size), int(valid)

    def encode(self, texts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.zeros((len(texts), max_length), dtype=np.int64)
        mask = np.zeros((len(texts), max_length), dtype=bool)
        n = min(self.valid, max_length)
        for row, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            ids[row, :n] = np.random.default_rng(seed).integers(1, self.vocab_size, n)
            mask[row, :n] = True
        return ids, mask

    def count_tokens(self, text: str) -> int:
        return min(self.valid, len(text))

    def special_token_id(self, config_key: str, default: str | None = None) -> int | None:
        return None


def synthetic_processor(spec: FamilySpec, valid_tokens: int | None = None) -> Any:
    """The family's own processor (images, state, prompt template, postprocess) with
    :class:`SyntheticTokenizer`, wrapped as the engines take it (``Observation`` in)."""
    from reflex_ros.policies.lerobot.families import processor_class
    from reflex_ros.policies.lerobot.family import ObservationProcessor
    from reflex_ros.policies.lerobot.tokenizer import LeRobotTokenizer

    cls = processor_class(spec.model_type)
    tok = SyntheticTokenizer(spec.vlm.vocab_size, valid_tokens or spec.tokenizer_max_length)

    class _Tok(SyntheticTokenizer, LeRobotTokenizer):  # passes the processor's type check
        def __init__(self) -> None:
            SyntheticTokenizer.__init__(self, tok.vocab_size, tok.valid)

    return ObservationProcessor(cls(spec, {}, _Tok()))


def published_engine(model_type: str, size: str = "published", *, device: Any = "cuda", dtype: str = "fp32",
                     cuda_graph: bool = False, seed: int = 0, model: Any = None, fused: bool | None = None,
                     device_images: bool | None = None, **spec_options: Any) -> Any:
    """A TorchEngine over a published-size random-weight model (bench, GPU tests): the family's
    fast path, a synthetic processor; ``dtype`` may be ``fp8`` (bf16 weights + e4m3 GEMMs)."""
    from reflex_ros.engine.torch_runtime import TorchEngine
    from reflex_ros.policies import get_family

    spec = published_spec(model_type, size, **spec_options)
    if model is None:
        model = build_published(model_type, size, device=device, dtype="bf16" if dtype == "fp8" else dtype,
                                seed=seed, **spec_options)
    family = get_family(model_type)
    return TorchEngine(model, synthetic_processor(spec), device=device, dtype=dtype, cuda_graph=cuda_graph,
                       fast_path=family.fast_path, fused=fused, model_type=model_type, device_images=device_images,
                       extra={"source": f"{model_type} {size} (random weights, synthetic tokens)"})
