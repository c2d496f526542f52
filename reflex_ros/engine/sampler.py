"""Euler flow-matching sampler with optional RECAP CFG (torch reference).

The prefix runs once per chunk and its KV feeds every denoising step. With CFG the inputs are
batch 2 ``[cond, uncond]``: one batch-2 velocity call per step from the same x (expanded to
2), combined as ``v = v_u + beta (v_c - v_u)``, so both branches always enter the next step
from the same x. The loop is plain Python over a fixed schedule, so it unrolls cleanly in a
CUDA graph capture and in the monolithic ONNX export.
"""

from __future__ import annotations

import torch
from torch import nn

from reflex_ros.engine.model import FlowPolicy
from reflex_ros.engine.schedule import check_cfg_beta, euler_schedule


def denoise(
    model: FlowPolicy,
    prefix_k: torch.Tensor,
    prefix_v: torch.Tensor,
    prefix_mask: torch.Tensor,
    noise: torch.Tensor,
    nfe: int,
    cfg_beta: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Integrate from ``noise`` [1, C, A] (t=1) to actions (t=0) in ``nfe`` Euler steps.

    The state x is kept in fp32 whatever the model dtype, so bf16/fp16 runs only round the
    velocity, not the accumulated trajectory. ``cfg_beta`` may be a 0-d tensor (the CUDA
    graph keeps it in a static buffer so changing beta needs no re-capture).
    """
    batch = prefix_mask.shape[0]
    ctx = model.expert_context(prefix_mask)
    x = noise.to(torch.float32)
    for t_i, dt in euler_schedule(nfe):
        t = torch.full((batch,), t_i, dtype=torch.float32, device=x.device)
        xb = x.expand(batch, -1, -1) if batch > 1 else x
        v = model.velocity(xb, t, prefix_k, prefix_v, prefix_mask, context=ctx).to(torch.float32)
        if cfg_beta is not None:
            v_cond, v_uncond = v[0:1], v[1:2]
            v = v_uncond + cfg_beta * (v_cond - v_uncond)
        x = x + dt * v
    return x


def sample_actions(
    model: FlowPolicy,
    images_u8: torch.Tensor,
    lang_tokens: torch.Tensor,
    lang_mask: torch.Tensor,
    state: torch.Tensor,
    noise: torch.Tensor,
    nfe: int,
    cfg_beta: float | None = None,
) -> torch.Tensor:
    """Actions [1, C, A] (fp32) for one observation.

    Without CFG the inputs are batch 1; with ``cfg_beta`` they are batch 2 ``[cond, uncond]``
    as built by :func:`reflex_ros.engine.preprocess.prepare_inputs`.
    """
    check_cfg_beta(cfg_beta)
    batch = images_u8.shape[0]
    want = 2 if cfg_beta is not None else 1
    if batch != want:
        raise ValueError(f"sample_actions: inputs have batch {batch}; expected {want} "
                         f"({'[cond, uncond] for CFG' if want == 2 else 'no CFG'})")
    prefix_k, prefix_v, prefix_mask = model.prefix(images_u8, lang_tokens, lang_mask, state)
    return denoise(model, prefix_k, prefix_v, prefix_mask, noise, nfe, cfg_beta)


class MonolithicPolicy(nn.Module):
    """(images, lang_tokens, lang_mask, state, noise) -> actions with the NFE loop unrolled.

    ``nfe`` (and optionally ``cfg_beta``) are fixed at construction: this is the module the
    exporter traces into one ONNX graph.
    """

    def __init__(self, model: FlowPolicy, nfe: int, cfg_beta: float | None = None) -> None:
        super().__init__()
        self.model = model
        self.nfe = int(nfe)
        self.cfg_beta = check_cfg_beta(cfg_beta)
        euler_schedule(self.nfe)  # validates nfe

    def forward(
        self,
        images: torch.Tensor,
        lang_tokens: torch.Tensor,
        lang_mask: torch.Tensor,
        state: torch.Tensor,
        noise: torch.Tensor,
    ) -> torch.Tensor:
        prefix_k, prefix_v, prefix_mask = self.model.prefix(images, lang_tokens, lang_mask, state)
        return denoise(self.model, prefix_k, prefix_v, prefix_mask, noise, self.nfe, self.cfg_beta)
