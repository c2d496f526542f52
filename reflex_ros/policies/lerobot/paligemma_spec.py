"""pi0 / pi0.5 architecture sizes from the weight shapes (torch-free).

LeRobot builds PaliGemma and the action expert from its own size tables
(``get_gemma_config``: gemma_2b / gemma_300m, both 8 query heads and ONE key/value head),
not from ``config.json`` and not from the hub. We read the sizes from the tensors instead,
so any checkpoint whose tables were changed still loads:

- widths, depths, MLP sizes, vocab, patch size and the vision position table: shapes;
- Gemma heads: the key/value projection is ``num_kv_heads * head_dim`` wide with
  ``num_kv_heads = 1`` in every LeRobot table, so ``head_dim`` is its width and
  ``num_heads = q_width / head_dim``. The expert attends over the VLM's cached keys, so it
  shares ``head_dim``;
- SigLIP heads cannot be read from shapes (q/k/v are all ``hidden x hidden``). The
  tokenizer repo's ``config.json`` (``google/paligemma-3b-pt-224``, already needed for the
  tokenizer) states them; we use it when its vision width and depth match the weights, else
  the SigLIP-So400m default of 16 heads for a 1152-wide tower, else a clear error.
"""

from __future__ import annotations

import math
from typing import Any

from reflex_ros.policies.lerobot.checkpoint import CheckpointFacts
from reflex_ros.policies.lerobot.errors import CheckpointError
from reflex_ros.policies.lerobot.hub_cache import resolve_repo_dir
from reflex_ros.policies.lerobot.spec import DecoderArch, VisionArch
from reflex_ros.policies.lerobot.spec_common import read_hub_config

PALI = "model.paligemma_with_expert.paligemma.model."
VISION = PALI + "vision_tower.vision_model."
LANG = PALI + "language_model."
EXPERT = "model.paligemma_with_expert.gemma_expert.model."

#: LeRobot's Gemma / SigLIP constants (transformers defaults it does not override)
GEMMA_RMS_EPS = 1e-6
GEMMA_ROPE_THETA = 10000.0
SIGLIP_LN_EPS = 1e-6


def vision_arch(facts: CheckpointFacts, tokenizer_hub_id: str) -> VisionArch:
    """SigLIP tower sizes; heads from the hub config when it agrees with the weights."""
    width, _, patch, _ = facts.shape(VISION + "embeddings.patch_embedding.weight")
    positions = facts.shape(VISION + "embeddings.position_embedding.weight")[0]
    side = math.isqrt(positions)
    if side * side != positions:
        raise CheckpointError(f"vision position table has {positions} rows, not a square grid")
    layers = facts.layer_count(VISION + "encoder.layers.")
    mlp = facts.shape(VISION + "encoder.layers.0.mlp.fc1.weight")[0]
    heads = _vision_heads(width, layers, tokenizer_hub_id)
    return VisionArch(
        hidden_size=width,
        intermediate_size=mlp,
        num_layers=layers,
        num_heads=heads,
        patch_size=patch,
        image_size=side * patch,
        layer_norm_eps=SIGLIP_LN_EPS,
    )


def _vision_heads(width: int, layers: int, hub_id: str) -> int:
    hub = read_hub_config(hub_id) if hub_id else None
    vision: dict[str, Any] = (hub or {}).get("vision_config") or {}
    if vision.get("hidden_size") == width and vision.get("num_attention_heads"):
        if vision.get("num_hidden_layers", layers) == layers:
            return int(vision["num_attention_heads"])
    if width == 1152:
        return 16
    if hub is None and hub_id:
        # the tokenizer repo the checkpoint names is not cached at all: that is the problem
        # to report (with its download command), and fetching it also answers the head count
        resolve_repo_dir(hub_id, required=("config.json",))
    raise CheckpointError(
        f"cannot tell the SigLIP head count of a {width}-wide vision tower from the weights, and the "
        f"config.json of {hub_id!r} in the HF cache does not describe it; pass overrides="
        "{'vision': {..., 'num_heads': N}} to load_lerobot_checkpoint"
    )


def gemma_arch(facts: CheckpointFacts, prefix: str, head_dim: int | None, adarms: bool = False) -> DecoderArch:
    """A Gemma stack under ``prefix`` (``...language_model.`` or ``...gemma_expert.model.``)."""
    layer0 = prefix + "layers.0."
    norm_key = layer0 + ("input_layernorm.dense.weight" if adarms else "input_layernorm.weight")
    width = facts.shape(norm_key)[1] if adarms else facts.shape(norm_key)[0]
    q_out = facts.shape(layer0 + "self_attn.q_proj.weight")[0]
    kv_out = facts.shape(layer0 + "self_attn.k_proj.weight")[0]
    if head_dim is None:
        head_dim = kv_out  # LeRobot's tables: one key/value head
    if q_out % head_dim or kv_out % head_dim:
        raise CheckpointError(
            f"{layer0}self_attn: q width {q_out} / kv width {kv_out} are not multiples of head_dim {head_dim}"
        )
    vocab = facts.shapes.get(prefix + "embed_tokens.weight", (0,))[0]
    return DecoderArch(
        hidden_size=width,
        intermediate_size=facts.shape(layer0 + "mlp.gate_proj.weight")[0],
        num_layers=facts.layer_count(prefix + "layers."),
        num_heads=q_out // head_dim,
        num_kv_heads=kv_out // head_dim,
        head_dim=head_dim,
        rms_norm_eps=GEMMA_RMS_EPS,
        rope_theta=GEMMA_ROPE_THETA,
        vocab_size=vocab,
    )


def paligemma_arch(facts: CheckpointFacts, tokenizer_hub_id: str, expert_adarms: bool) -> dict[str, Any]:
    """vision / vlm / expert architectures of a pi0 or pi0.5 checkpoint, cross-checked."""
    vision = vision_arch(facts, tokenizer_hub_id)
    vlm = gemma_arch(facts, LANG, None)
    facts.shape(LANG + "embed_tokens.weight")  # required (possibly tied from lm_head)
    expert = gemma_arch(facts, EXPERT, vlm.head_dim, adarms=expert_adarms)
    if vlm.num_layers != expert.num_layers:
        raise CheckpointError(f"VLM has {vlm.num_layers} layers but the expert {expert.num_layers}; LeRobot pairs them 1:1")
    if expert.num_kv_heads != vlm.num_kv_heads:
        raise CheckpointError(f"expert has {expert.num_kv_heads} KV heads, the VLM {vlm.num_kv_heads}; they share the cache")
    proj = facts.shape(PALI + "multi_modal_projector.linear.weight")
    if tuple(proj) != (vlm.hidden_size, vision.hidden_size):
        raise CheckpointError(f"multi_modal_projector is {proj}, expected ({vlm.hidden_size}, {vision.hidden_size})")
    return {"vision": vision, "vlm": vlm, "expert": expert}
