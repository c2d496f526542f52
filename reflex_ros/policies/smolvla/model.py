"""SmolVLA's torch model: a truncated SmolVLM prefix and the interleaved action expert.

Facts from LeRobot 0.6.1 (``modeling_smolvla.py`` / ``smolvlm_with_expert.py``) this
follows:

- prefix = ``[per camera slot: image tokens]`` (optionally wrapped in the
  ``<fake_token_around_image><global-img> ... <fake_token_around_image>`` embeddings),
  language tokens, one state token (``state_proj``); image and language embeddings are both
  scaled by ``sqrt(text width)``, the special tokens are not; the state token starts a new
  causal block, so image/language tokens never see it;
- images go through the SigLIP-like tower (bucketed NaViT positions), a pixel shuffle by
  the scale factor, and a bias-free projection;
- only the first ``num_vlm_layers`` text layers exist; each fills the KV cache with its
  post-RoPE keys and values;
- the expert's cross-attention layers do not use their own hidden states for keys/values:
  they RE-PROJECT the VLM layer's cached (post-RoPE) keys and values with the expert's
  ``k_proj``/``v_proj`` and apply no RoPE to them; queries get RoPE at positions 0..chunk-1
  and see the prefix only (pad-masked). Self-attention layers attend to
  ``[VLM cache; own keys]`` at absolute positions, causally among the action tokens. Since
  the re-projection does not depend on the noisy actions, :meth:`prefix` does it once and
  hands the expert ready-to-use K/V;
- RoPE is SmolVLA's own ``apply_rope`` with wavelength 10000 (not the backbone's
  rope_theta); attention is eager with a float32 softmax.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from reflex_ros.policies.lerobot.attention import attend, make_att_2d_masks
from reflex_ros.policies.lerobot.decoder_layers import AttentionProjections, DecoderLayer, LlamaRMSNorm
from reflex_ros.policies.lerobot.rope import RotaryEmbedding
from reflex_ros.policies.lerobot.siglip import SiglipVisionTower, navit_position_ids
from reflex_ros.policies.lerobot.spec import FamilySpec
from reflex_ros.policies.lerobot.time_embedding import SinusoidalTimeEmbedding
from reflex_ros.policies.lerobot.weights import load_lerobot_weights
from reflex_ros.policies.smolvla.config import EXPERT, TEXT, VISION, VLM


def pixel_shuffle(x: torch.Tensor, factor: int) -> torch.Tensor:
    """SmolVLM's connector shuffle: ``[N, s*s, d] -> [N, s*s / f^2, d * f^2]`` (space to depth)."""
    n, seq, dim = x.shape
    side = math.isqrt(seq)
    x = x.reshape(n, side, side // factor, dim * factor).permute(0, 2, 1, 3)
    x = x.reshape(n, side // factor, side // factor, dim * factor * factor).permute(0, 2, 1, 3)
    return x.reshape(n, seq // (factor * factor), dim * factor * factor)


class SmolVLAModel(nn.Module):
    """``prefix`` once per chunk, ``velocity`` once per Euler step (both ONNX-traceable)."""

    expert_input_names: tuple[str, ...] = ()

    def __init__(self, spec: FamilySpec, state_dict: Mapping[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        vision, vlm, expert = spec.vision, spec.vlm, spec.expert
        assert vision is not None and vlm is not None and expert is not None
        self.spec = spec
        side = vision.image_size // vision.patch_size
        self.vision = SiglipVisionTower(vision, navit_position_ids(spec.image_hw, vision.patch_size, side))
        factor = spec.pixel_shuffle_factor
        self.connector = nn.Linear(vision.hidden_size * factor * factor, vlm.hidden_size, bias=False)
        self.embed_tokens = nn.Embedding(vlm.vocab_size, vlm.hidden_size)
        self.vlm_layers = nn.ModuleList(
            DecoderLayer(vlm.hidden_size, vlm.intermediate_size, vlm.num_heads, vlm.num_kv_heads, vlm.head_dim,
                         vlm.rms_norm_eps, norm="llama", activation="silu", kv_only=i == vlm.num_layers - 1)
            for i in range(vlm.num_layers)
        )
        kv_width = vlm.num_kv_heads * vlm.head_dim
        cross_of = {e: spec.cross_attn_layers[i] for i, e in enumerate(spec.expert_layer_map) if e >= 0}
        self.expert_layers = nn.ModuleList(
            DecoderLayer(expert.hidden_size, expert.intermediate_size, expert.num_heads, expert.num_kv_heads,
                         expert.head_dim, expert.rms_norm_eps, norm="llama", activation="silu",
                         kv_in=kv_width if cross_of.get(e, False) else None)
            for e in range(expert.num_layers)
        )
        self.expert_norm = LlamaRMSNorm(expert.hidden_size, expert.rms_norm_eps)
        self.state_proj = nn.Linear(spec.max_state_dim, vlm.hidden_size)
        self.action_in_proj = nn.Linear(spec.max_action_dim, expert.hidden_size)
        self.action_out_proj = nn.Linear(expert.hidden_size, spec.max_action_dim)
        self.action_time_mlp_in = nn.Linear(2 * expert.hidden_size, expert.hidden_size)
        self.action_time_mlp_out = nn.Linear(expert.hidden_size, expert.hidden_size)
        self.time_embedding = SinusoidalTimeEmbedding(expert.hidden_size, spec.min_period, spec.max_period)
        self.rope = RotaryEmbedding(vlm.head_dim, vlm.rope_theta, "smolvla")
        self.scale = float(np.float32(vlm.hidden_size**0.5))  # a float32 sqrt, as LeRobot's
        self.scaling = vlm.head_dim**-0.5
        self.tokens_per_image = (spec.image_hw[0] // vision.patch_size) * (spec.image_hw[1] // vision.patch_size)
        self.tokens_per_image //= factor * factor
        self.register_buffer(
            "special_ids", torch.tensor(spec.image_special_token_ids or [0, 0], dtype=torch.int64), persistent=False
        )
        names = ("images", "image_masks", "lang_tokens", "lang_masks", "state")
        self.prefix_input_names: tuple[str, ...] = (*names, "image_slot_masks") if spec.add_image_special_tokens else names
        if state_dict is not None:
            self.load_lerobot_state_dict(state_dict)
        self.eval()

    # ------------------------------------------------------------------ weights
    def weight_prefix_map(self) -> dict[str, str]:
        heads = ("state_proj", "action_in_proj", "action_out_proj", "action_time_mlp_in", "action_time_mlp_out")
        return {
            "vision.": VISION,
            "connector.": VLM + "connector.modality_projection.proj.",
            "embed_tokens.": TEXT + "embed_tokens.",
            "vlm_layers.": TEXT + "layers.",
            "expert_layers.": EXPERT + "layers.",
            "expert_norm.": EXPERT + "norm.",
            **{f"{h}.": f"model.{h}." for h in heads},
        }

    def load_lerobot_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load LeRobot-named tensors (``LeRobotCheckpoint.load_state_dict()``), strictly."""
        assert self.spec.vlm is not None
        last = re.escape(f"{TEXT}layers.{self.spec.vlm.num_layers - 1}.")
        unused = [
            r"model\.vlm_with_expert\.vlm\.lm_head\.weight",
            re.escape(TEXT) + r"norm\.weight",
            last + r"(self_attn\.(q_proj|o_proj)|post_attention_layernorm|mlp\.\w+)\.weight",
        ]
        load_lerobot_weights(self, state_dict, self.weight_prefix_map(), unused)

    # ------------------------------------------------------------------ shapes
    @property
    def tokens_per_slot(self) -> int:
        return self.tokens_per_image + (3 if self.spec.add_image_special_tokens else 0)

    @property
    def prefix_len(self) -> int:
        return self.spec.num_cameras * self.tokens_per_slot + self.spec.tokenizer_max_length + 1

    def kv_shapes(self, batch: int | str) -> list[tuple[int | str, ...]]:
        vlm = self.spec.vlm
        assert vlm is not None
        n = sum(1 for e in self.spec.expert_layer_map if e >= 0)
        return [(batch, vlm.num_kv_heads, self.prefix_len, vlm.head_dim)] * (2 * n)

    # ------------------------------------------------------------------ prefix
    def embed_prefix(
        self,
        images: torch.Tensor,
        image_masks: torch.Tensor,
        lang_tokens: torch.Tensor,
        lang_masks: torch.Tensor,
        state: torch.Tensor,
        image_slot_masks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(embs [B, P, D], pad [B, P], ar [B, P])`` as LeRobot's ``embed_prefix``."""
        return self.assemble_prefix(self.image_features(images), image_masks, lang_tokens, lang_masks, state,
                                    image_slot_masks)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Scaled image tokens ``[B, n_img, T, D]``: SigLIP, pixel shuffle, connector, x sqrt(D)."""
        b, n, c, h, w = images.shape
        feats = self.connector(pixel_shuffle(self.vision(images.reshape(b * n, c, h, w)), self.spec.pixel_shuffle_factor))
        return (feats * self.scale).reshape(b, n, feats.shape[1], feats.shape[-1])

    def assemble_prefix(
        self,
        img: torch.Tensor,
        image_masks: torch.Tensor,
        lang_tokens: torch.Tensor,
        lang_masks: torch.Tensor,
        state: torch.Tensor,
        image_slot_masks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The prefix layout from image tokens (:meth:`image_features`; batch 1 is broadcast):
        the one place it is defined, for the eager model and the fused path."""
        b, n = image_masks.shape
        t = img.shape[2]
        if img.shape[0] != b:
            img = img.expand(b, -1, -1, -1)
        img_pad = image_masks[:, :, None].expand(b, n, t)
        if self.spec.add_image_special_tokens:
            slots = image_masks if image_slot_masks is None else image_slot_masks
            special = self.embed_tokens(self.special_ids)  # unscaled, as LeRobot embeds them
            start = special[None, None].expand(b, n, 2, special.shape[-1])
            end = special[None, None, :1].expand(b, n, 1, special.shape[-1])
            img = torch.cat([start, img, end], dim=2)
            img_pad = torch.cat([slots[:, :, None].expand(b, n, 2), img_pad, slots[:, :, None]], dim=2)
        per_slot = img.shape[2]
        lang = self.embed_tokens(lang_tokens) * self.scale
        state_emb = self.state_proj(state)[:, None, :]
        embs = torch.cat([img.reshape(b, n * per_slot, -1), lang, state_emb], dim=1)
        ones = torch.ones(b, 1, dtype=torch.bool, device=embs.device)
        pad = torch.cat([img_pad.reshape(b, n * per_slot), lang_masks, ones], dim=1)
        ar = torch.cat([torch.zeros_like(pad[:, :-1]), ones], dim=1)
        return embs, pad, ar

    def prefix(self, **inputs: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The expert-ready KV list (cross layers already re-projected) and the prefix mask."""
        embs, pad, ar = self.embed_prefix(**inputs)
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
            e = self.spec.expert_layer_map[i]
            if e >= 0:
                kv += self._expert_kv(e, k, v) if self.spec.cross_attn_layers[i] else [k, v]
            if i == last:
                break
            q = self.rope.rotate(attn.split_heads(attn.q_proj(x), attn.head_dim), cos, sin)
            hidden = hidden + attn.o_proj(attend(q, k, v, mask, self.scaling, attn.groups))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return kv, pad

    def _expert_kv(self, e: int, k: torch.Tensor, v: torch.Tensor) -> list[torch.Tensor]:
        """A cross-attention expert layer's keys/values: its projections of the VLM's cached
        (post-RoPE) K/V, flattened per token over heads, with no RoPE of their own."""
        attn: AttentionProjections = self.expert_layers[e].self_attn
        b, _, p, _ = k.shape

        def flat(x: torch.Tensor) -> torch.Tensor:
            return x.transpose(1, 2).reshape(b, p, -1)

        return [attn.split_heads(attn.k_proj(flat(k)), attn.head_dim), attn.split_heads(attn.v_proj(flat(v)), attn.head_dim)]

    # ------------------------------------------------------------------ expert
    def embed_suffix(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        action = self.action_in_proj(x_t.to(self.action_in_proj.weight.dtype))
        time = self.time_embedding(t).to(action.dtype)[:, None, :].expand_as(action)
        return self.action_time_mlp_out(F.silu(self.action_time_mlp_in(torch.cat([action, time], dim=2))))

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, kv: list[torch.Tensor], prefix_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.embed_suffix(x_t, t)
        b, s = hidden.shape[:2]
        p = prefix_mask.shape[1]
        suffix_pad = torch.ones(b, s, dtype=torch.bool, device=hidden.device)
        prefix_part = prefix_mask[:, None, :].expand(b, s, p)
        full_mask = torch.cat([prefix_part, make_att_2d_masks(suffix_pad, suffix_pad)], dim=2)
        steps = torch.cumsum(suffix_pad.to(torch.int64), dim=1) - 1
        abs_cos, abs_sin = self.rope.angles(prefix_mask.to(torch.int64).sum(dim=-1, keepdim=True) + steps)
        rel_cos, rel_sin = self.rope.angles(steps)
        j = 0
        for i, e in enumerate(self.spec.expert_layer_map):
            if e < 0:
                continue  # no expert layer beside this VLM layer: the hidden state passes through
            layer = self.expert_layers[e]
            attn: AttentionProjections = layer.self_attn
            x = layer.input_layernorm(hidden)
            q = attn.split_heads(attn.q_proj(x), attn.head_dim)
            if self.spec.cross_attn_layers[i]:
                q = self.rope.rotate(q, rel_cos, rel_sin)
                out = attend(q, kv[2 * j], kv[2 * j + 1], prefix_part, self.scaling, attn.groups)
            else:
                q = self.rope.rotate(q, abs_cos, abs_sin)
                k = self.rope.rotate(attn.split_heads(attn.k_proj(x), attn.head_dim), abs_cos, abs_sin)
                v = attn.split_heads(attn.v_proj(x), attn.head_dim)
                keys = torch.cat([kv[2 * j], k], dim=2)
                values = torch.cat([kv[2 * j + 1], v], dim=2)
                out = attend(q, keys, values, full_mask, self.scaling, attn.groups)
            j += 1
            hidden = hidden + attn.o_proj(out)
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        hidden = self.expert_norm(hidden)
        head = self.action_out_proj
        return head(hidden[:, -self.spec.chunk_size:].to(head.weight.dtype)).to(torch.float32)
