"""pi0.5's torch model: pi0's backbone with time-conditioned (AdaRMS) expert norms.

There is no state token (the state is text in the prompt) and no action/time fusion: the
suffix is ``action_in_proj(x_t)`` alone, and the time embedding goes through
``time_mlp_in -> SiLU -> time_mlp_out -> SiLU`` to drive every expert norm's scale, shift
and residual gate (LeRobot's ``PI05Pytorch.embed_suffix``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from reflex_ros.policies.lerobot.paligemma_model import PREFIX_MAP, PaliGemmaPolicy, PaliGemmaWithExpert
from reflex_ros.policies.lerobot.spec import FamilySpec
from reflex_ros.policies.lerobot.time_embedding import SinusoidalTimeEmbedding


class Pi05Model(PaliGemmaPolicy, nn.Module):
    """``prefix`` once per chunk, ``velocity`` once per Euler step (both ONNX-traceable)."""

    prefix_input_names: tuple[str, ...] = ("images", "image_masks", "lang_tokens", "lang_masks")
    expert_input_names: tuple[str, ...] = ()

    def __init__(self, spec: FamilySpec, state_dict: Mapping[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        assert spec.expert is not None
        width = spec.expert.hidden_size
        self.spec = spec
        self.backbone = PaliGemmaWithExpert(spec)
        self.action_in_proj = nn.Linear(spec.max_action_dim, width)
        self.action_out_proj = nn.Linear(width, spec.max_action_dim)
        self.time_mlp_in = nn.Linear(width, width)
        self.time_mlp_out = nn.Linear(width, width)
        self.time_embedding = SinusoidalTimeEmbedding(width, spec.min_period, spec.max_period)
        if state_dict is not None:
            self.load_lerobot_state_dict(state_dict)
        self.eval()

    def weight_prefix_map(self) -> dict[str, str]:
        heads = ("action_in_proj", "action_out_proj", "time_mlp_in", "time_mlp_out")
        return {**{"backbone." + k: v for k, v in PREFIX_MAP.items()}, **{f"{h}.": f"model.{h}." for h in heads}}

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, kv: list[torch.Tensor], prefix_mask: torch.Tensor) -> torch.Tensor:
        action = self.action_in_proj(x_t.to(self.action_in_proj.weight.dtype))
        cond = F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(self.time_embedding(t).to(action.dtype)))))
        b, s = action.shape[:2]
        pad = torch.ones(b, s, dtype=torch.bool, device=action.device)
        ar = torch.zeros(b, s, dtype=torch.bool, device=action.device)
        ar[:, 0] = True
        out = self.backbone.expert(action, pad, ar, kv, prefix_mask, cond=cond)
        head = self.action_out_proj
        return head(out[:, -self.spec.chunk_size:].to(head.weight.dtype)).to(torch.float32)
