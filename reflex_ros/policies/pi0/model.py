"""pi0's torch model: PaliGemma prefix, and an expert suffix of one state token + action tokens.

The suffix follows LeRobot's ``PI0Pytorch.embed_suffix``: the padded state projected to the
expert width (its own causal block, so it sees the prefix and itself), then one token per
action row mixing the noisy action with the sinusoidal time embedding through
``action_time_mlp_in -> SiLU -> action_time_mlp_out`` (a second block, bidirectional
inside). The state therefore belongs to each velocity step, not to the prefix.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from reflex_ros.policies.lerobot.paligemma_model import PREFIX_MAP, PaliGemmaPolicy, PaliGemmaWithExpert
from reflex_ros.policies.lerobot.spec import FamilySpec
from reflex_ros.policies.lerobot.time_embedding import SinusoidalTimeEmbedding


class Pi0Model(PaliGemmaPolicy, nn.Module):
    """``prefix`` once per chunk, ``velocity`` once per Euler step (both ONNX-traceable)."""

    prefix_input_names: tuple[str, ...] = ("images", "image_masks", "lang_tokens", "lang_masks")
    expert_input_names: tuple[str, ...] = ("state",)

    def __init__(self, spec: FamilySpec, state_dict: Mapping[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        assert spec.expert is not None
        width = spec.expert.hidden_size
        self.spec = spec
        self.backbone = PaliGemmaWithExpert(spec)
        self.state_proj = nn.Linear(spec.max_state_dim, width)
        self.action_in_proj = nn.Linear(spec.max_action_dim, width)
        self.action_out_proj = nn.Linear(width, spec.max_action_dim)
        self.action_time_mlp_in = nn.Linear(2 * width, width)
        self.action_time_mlp_out = nn.Linear(width, width)
        self.time_embedding = SinusoidalTimeEmbedding(width, spec.min_period, spec.max_period)
        if state_dict is not None:
            self.load_lerobot_state_dict(state_dict)
        self.eval()

    def weight_prefix_map(self) -> dict[str, str]:
        heads = ("state_proj", "action_in_proj", "action_out_proj", "action_time_mlp_in", "action_time_mlp_out")
        return {**{"backbone." + k: v for k, v in PREFIX_MAP.items()}, **{f"{h}.": f"model.{h}." for h in heads}}

    def embed_suffix(self, x_t: torch.Tensor, t: torch.Tensor, state: torch.Tensor):  # noqa: ANN201
        """``(embs [B, 1 + chunk, w], pad, ar)``: state token, then action+time tokens."""
        state_emb = self.state_proj(state.to(self.state_proj.weight.dtype))[:, None, :]
        action = self.action_in_proj(x_t.to(self.action_in_proj.weight.dtype))
        time = self.time_embedding(t).to(action.dtype)[:, None, :].expand_as(action)
        fused = self.action_time_mlp_out(F.silu(self.action_time_mlp_in(torch.cat([action, time], dim=2))))
        embs = torch.cat([state_emb, fused], dim=1)
        b, s = embs.shape[:2]
        pad = torch.ones(b, s, dtype=torch.bool, device=embs.device)
        ar = torch.zeros(b, s, dtype=torch.bool, device=embs.device)
        ar[:, :2] = True
        return embs, pad, ar

    def velocity(
        self, x_t: torch.Tensor, t: torch.Tensor, kv: list[torch.Tensor], prefix_mask: torch.Tensor, state: torch.Tensor
    ) -> torch.Tensor:
        embs, pad, ar = self.embed_suffix(x_t, t, state)
        out = self.backbone.expert(embs, pad, ar, kv, prefix_mask)
        head = self.action_out_proj
        return head(out[:, -self.spec.chunk_size:].to(head.weight.dtype)).to(torch.float32)
