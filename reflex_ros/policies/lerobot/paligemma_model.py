"""pi0 / pi0.5's PaliGemma prefix and Gemma action expert (torch), shared by both families.

The prefix is ``[image tokens of every camera slot, language tokens]`` attending
bidirectionally (masked slots and padding excluded); each VLM layer's post-RoPE keys and
values are the KV list the expert reads. The expert runs its own Gemma layers over the
suffix tokens the family builds, attending to ``[prefix KV (pad-masked), suffix]``, with
positions continuing after the last real prefix token. This is LeRobot's
``sample_actions`` / ``denoise_step`` with the DynamicCache replaced by explicit tensors.

Facts the math rests on (transformers 5.5.4 as LeRobot drives it): language embeddings are
scaled by ``sqrt(width)`` (``GemmaTextScaledWordEmbedding``, the scale rounded to float32);
image features are the projector output with no scaling; PiGemma layers do not rescale
``inputs_embeds``; the attention is eager with a float32 softmax.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from reflex_ros.policies.lerobot.attention import attend, make_att_2d_masks
from reflex_ros.policies.lerobot.decoder_layers import (
    AdaRMSNorm,
    AttentionProjections,
    DecoderLayer,
    GemmaRMSNorm,
)
from reflex_ros.policies.lerobot.paligemma_spec import EXPERT, LANG, PALI, VISION
from reflex_ros.policies.lerobot.rope import RotaryEmbedding
from reflex_ros.policies.lerobot.siglip import SiglipVisionTower
from reflex_ros.policies.lerobot.spec import FamilySpec
from reflex_ros.policies.lerobot.weights import load_lerobot_weights

#: our module prefix -> LeRobot key prefix
PREFIX_MAP = {
    "vision.": VISION,
    "projector.": PALI + "multi_modal_projector.linear.",
    "embed_tokens.": LANG + "embed_tokens.",
    "vlm_layers.": LANG + "layers.",
    "expert_layers.": EXPERT + "layers.",
    "expert_norm.": EXPERT + "norm.",
}


def unused_weight_patterns(num_layers: int) -> list[str]:
    """Checkpoint tensors that never reach the actions (regexes)."""
    last = re.escape(f"{LANG}layers.{num_layers - 1}.")
    return [
        r"model\.paligemma_with_expert\.paligemma\.lm_head\.weight",
        r"model\.paligemma_with_expert\.gemma_expert\.lm_head\.weight",
        re.escape(LANG) + r"norm\.weight",
        last + r"(self_attn\.(q_proj|o_proj)|post_attention_layernorm|mlp\.\w+)\.weight",
    ]


class PaliGemmaWithExpert(nn.Module):
    """Vision tower + projector + Gemma VLM (prefix) and the Gemma expert (suffix)."""

    def __init__(self, spec: FamilySpec) -> None:
        super().__init__()
        vision, vlm, expert = spec.vision, spec.vlm, spec.expert
        assert vision is not None and vlm is not None and expert is not None
        self.spec = spec
        self.vision = SiglipVisionTower(vision)
        self.projector = nn.Linear(vision.hidden_size, vlm.hidden_size)
        self.embed_tokens = nn.Embedding(vlm.vocab_size, vlm.hidden_size)
        self.vlm_layers = nn.ModuleList(
            DecoderLayer(vlm.hidden_size, vlm.intermediate_size, vlm.num_heads, vlm.num_kv_heads, vlm.head_dim,
                         vlm.rms_norm_eps, norm="gemma", activation="gelu_tanh", kv_only=i == vlm.num_layers - 1)
            for i in range(vlm.num_layers)
        )
        norm = "adarms" if spec.expert_adarms else "gemma"
        self.expert_layers = nn.ModuleList(
            DecoderLayer(expert.hidden_size, expert.intermediate_size, expert.num_heads, expert.num_kv_heads,
                         expert.head_dim, expert.rms_norm_eps, norm=norm, activation="gelu_tanh",
                         cond_dim=expert.hidden_size)
            for _ in range(expert.num_layers)
        )
        self.expert_norm = (
            AdaRMSNorm(expert.hidden_size, expert.hidden_size, expert.rms_norm_eps)
            if spec.expert_adarms else GemmaRMSNorm(expert.hidden_size, expert.rms_norm_eps)
        )
        self.rope = RotaryEmbedding(vlm.head_dim, vlm.rope_theta, "gemma")
        self.lang_scale = float(np.float32(math.sqrt(vlm.hidden_size)))  # LeRobot scales by a float32 sqrt
        self.scaling = vlm.head_dim**-0.5
        side = vision.image_size // vision.patch_size
        self.tokens_per_image = side * side

    # ------------------------------------------------------------------ prefix
    def embed_prefix(
        self, images: torch.Tensor, image_masks: torch.Tensor, lang_tokens: torch.Tensor, lang_masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(embs [B, P, D], pad [B, P], ar [B, P])`` with ``P = n_img * T + L``."""
        return self.assemble_prefix(self.image_features(images), image_masks, lang_tokens, lang_masks)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Projected image tokens ``[B, n_img * T, D]`` (SigLIP, then the projector, unscaled)."""
        b, n, c, h, w = images.shape
        feats = self.projector(self.vision(images.reshape(b * n, c, h, w)))
        return feats.reshape(b, n * feats.shape[1], feats.shape[-1])

    def assemble_prefix(
        self, img: torch.Tensor, image_masks: torch.Tensor, lang_tokens: torch.Tensor, lang_masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The prefix layout from image tokens (:meth:`image_features`; batch 1 is broadcast,
        as under CFG where both slots share their images): the one place it is defined, for
        the eager model and the fused path (``lerobot/fused.py``)."""
        b, n = image_masks.shape
        t = img.shape[1] // n
        if img.shape[0] != b:
            img = img.expand(b, -1, -1)
        lang = self.embed_tokens(lang_tokens) * self.lang_scale
        embs = torch.cat([img, lang], dim=1)
        pad = torch.cat([image_masks[:, :, None].expand(b, n, t).reshape(b, n * t), lang_masks], dim=1)
        return embs, pad, torch.zeros_like(pad)

    def prefix_kv(self, embs: torch.Tensor, pad: torch.Tensor, ar: torch.Tensor) -> list[torch.Tensor]:
        """Run the VLM over the prefix; ``[k_0, v_0, ...]`` each ``[B, KVH, P, head_dim]`` (k post-RoPE)."""
        mask = make_att_2d_masks(pad, ar)
        cos, sin = self.rope.angles(torch.cumsum(pad.to(torch.int64), dim=1) - 1)
        hidden = embs
        kv: list[torch.Tensor] = []
        last = len(self.vlm_layers) - 1
        for i, layer in enumerate(self.vlm_layers):
            attn: AttentionProjections = layer.self_attn
            x = layer.input_layernorm(hidden)
            k = self.rope.rotate(attn.split_heads(attn.k_proj(x), attn.head_dim), cos, sin)
            v = attn.split_heads(attn.v_proj(x), attn.head_dim)
            kv += [k, v]
            if i == last:
                break
            q = self.rope.rotate(attn.split_heads(attn.q_proj(x), attn.head_dim), cos, sin)
            hidden = hidden + attn.o_proj(attend(q, k, v, mask, self.scaling, attn.groups))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return kv

    def kv_shapes(self, batch: int | str, prefix_len: int) -> list[tuple[int | str, ...]]:
        vlm = self.spec.vlm
        assert vlm is not None
        return [(batch, vlm.num_kv_heads, prefix_len, vlm.head_dim)] * (2 * vlm.num_layers)

    # ------------------------------------------------------------------ expert
    def expert(
        self,
        suffix: torch.Tensor,
        suffix_pad: torch.Tensor,
        suffix_ar: torch.Tensor,
        kv: list[torch.Tensor],
        prefix_mask: torch.Tensor,
        cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The expert's final hidden states ``[B, S, width]`` (``cond``: pi0.5's AdaRMS input)."""
        b, s = suffix_pad.shape
        mask = torch.cat(
            [prefix_mask[:, None, :].expand(b, s, prefix_mask.shape[1]), make_att_2d_masks(suffix_pad, suffix_ar)],
            dim=2,
        )
        offset = prefix_mask.to(torch.int64).sum(dim=-1, keepdim=True)
        cos, sin = self.rope.angles(offset + torch.cumsum(suffix_pad.to(torch.int64), dim=1) - 1)
        hidden = suffix
        for i, layer in enumerate(self.expert_layers):
            attn: AttentionProjections = layer.self_attn
            x, gate = self._norm(layer.input_layernorm, hidden, cond)
            q = self.rope.rotate(attn.split_heads(attn.q_proj(x), attn.head_dim), cos, sin)
            k = self.rope.rotate(attn.split_heads(attn.k_proj(x), attn.head_dim), cos, sin)
            v = attn.split_heads(attn.v_proj(x), attn.head_dim)
            keys = torch.cat([kv[2 * i], k], dim=2)
            values = torch.cat([kv[2 * i + 1], v], dim=2)
            hidden = _gated(hidden, attn.o_proj(attend(q, keys, values, mask, self.scaling, attn.groups)), gate)
            x, gate = self._norm(layer.post_attention_layernorm, hidden, cond)
            hidden = _gated(hidden, layer.mlp(x), gate)
        out, _ = self._norm(self.expert_norm, hidden, cond)
        return out

    @staticmethod
    def _norm(norm: nn.Module, x: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(norm, AdaRMSNorm):
            assert cond is not None
            return norm(x, cond)
        return norm(x), None


class PaliGemmaPolicy:
    """What pi0 and pi0.5 share around their :class:`PaliGemmaWithExpert` backbone (a mixin:
    the model sets ``spec``, ``backbone`` and ``weight_prefix_map``): strict LeRobot weight
    loading, the prefix length and KV shapes, and the prefix pass (images + language -> the
    per-layer KV the expert attends to)."""

    def load_lerobot_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load LeRobot-named tensors (``LeRobotCheckpoint.load_state_dict()``), strictly."""
        assert self.spec.vlm is not None
        load_lerobot_weights(self, state_dict, self.weight_prefix_map(), unused_weight_patterns(self.spec.vlm.num_layers))

    @property
    def prefix_len(self) -> int:
        return self.spec.num_cameras * self.backbone.tokens_per_image + self.spec.tokenizer_max_length

    def kv_shapes(self, batch: int | str) -> list[tuple[int | str, ...]]:
        return self.backbone.kv_shapes(batch, self.prefix_len)

    def embed_prefix(self, images, image_masks, lang_tokens, lang_masks):  # noqa: ANN001, ANN201
        """``(embs, pad_masks, att_masks)`` as LeRobot's ``embed_prefix`` (for stage tests)."""
        return self.backbone.embed_prefix(images, image_masks, lang_tokens, lang_masks)

    def prefix(
        self, images: torch.Tensor, image_masks: torch.Tensor, lang_tokens: torch.Tensor, lang_masks: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        embs, pad, ar = self.backbone.embed_prefix(images, image_masks, lang_tokens, lang_masks)
        return self.backbone.prefix_kv(embs, pad, ar), pad


def _gated(residual: torch.Tensor, branch: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    """LeRobot's ``_gated_residual``: ``x + y`` or ``x + y * gate``."""
    return residual + branch if gate is None else residual + branch * gate
