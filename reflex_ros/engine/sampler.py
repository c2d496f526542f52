"""Any family's torch model through the one Euler/CFG loop (``schedule.euler_loop``).

The prefix runs once per chunk and its KV feeds every denoising step. With CFG the inputs are
batch 2 ``[cond, uncond]``: one batch-2 velocity call per step from the same x (expanded to
2), so both branches always enter the next step from the same x. The loop is plain Python
over a fixed schedule, so it unrolls cleanly in a CUDA graph capture and in the monolithic
ONNX export. Used by the torch engine (eager and the captured reference path), the
monolithic export and, through the torch engine, the parity check.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from reflex_ros.engine.schedule import Guide, check_cfg_beta, euler_loop, euler_schedule, guidance_weight


def denoise(
    model: Any,
    kv: list[torch.Tensor],
    prefix_mask: torch.Tensor,
    noise: torch.Tensor,
    nfe: int,
    cfg_beta: float | torch.Tensor | None = None,
    expert_inputs: Mapping[str, torch.Tensor] | None = None,
    guide: Guide | None = None,
) -> torch.Tensor:
    """Integrate from ``noise`` [1, C, W] (t=1) to actions (t=0) in ``nfe`` Euler steps.

    The state x is kept in fp32 whatever the model dtype, so bf16/fp16 runs only round the
    velocity, not the accumulated trajectory. ``cfg_beta`` may be a 0-d tensor (the CUDA
    graph keeps it in a static buffer so changing beta needs no re-capture). A model may
    offer ``step_context(prefix_mask)``: per-chunk constants of its velocity (RoPE tables,
    the expanded mask) computed once here instead of at every step. ``guide``: real-time
    chunking (:func:`vjp_guide`, ``schedule.inpaint_guide``).
    """
    batch = prefix_mask.shape[0]
    kwargs: dict[str, Any] = dict(expert_inputs or {})
    if hasattr(model, "step_context"):
        kwargs["context"] = model.step_context(prefix_mask)

    def velocity(x: torch.Tensor, t_i: float) -> torch.Tensor:
        t = torch.full((batch,), t_i, dtype=torch.float32, device=x.device)
        xb = x.expand(batch, -1, -1) if batch > 1 else x
        return model.velocity(xb, t, kv, prefix_mask, **kwargs).to(torch.float32)

    return euler_loop(velocity, noise.to(torch.float32), nfe, cfg_beta, guide)


def vjp_guide(target: torch.Tensor, weights: torch.Tensor, max_weight: float | torch.Tensor) -> Guide:
    """Real-time chunking's exact guidance (``schedule``'s derivation; the paper's Eq. 2 in
    our time convention) as a :data:`~reflex_ros.engine.schedule.Guide`: at each step

        x1 = x - t v(x),   v_g = v - min(beta, c inv_r2) * J^T [W (Y - x1)],   J = dx1/dx

    with J^T e = e - t (dv/dx)^T e computed by one vector-Jacobian product through the model.
    The step runs under ``torch.enable_grad`` (everything else under ``no_grad``: autograd
    refuses inference-mode tensors, so a guided inference must not run in
    ``torch.inference_mode``); the model's parameters never require grad, only x does.
    ``target``/``weights`` [1, C, W] fp32 in the model's action space, ``max_weight`` a float
    or a 0-d tensor (CUDA graph: static buffers refilled before each replay).

    Note LeRobot's ``RTCProcessor.denoise_step`` computes ``v`` before ``x`` requires grad,
    so its "VJP" is the identity (J = I): it guides with ``W (Y - x1)`` alone.
    """

    def guide(x: torch.Tensor, t_i: float, velocity_at: Any) -> torch.Tensor:
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            v = velocity_at(xr)
            x1 = xr - t_i * v
            err = ((target - x1) * weights).detach()
            (correction,) = torch.autograd.grad(x1, xr, err)
        return v.detach() - guidance_weight(t_i, max_weight) * correction

    return guide


def sample_actions(
    model: Any,
    inputs: Mapping[str, torch.Tensor],
    noise: torch.Tensor,
    nfe: int,
    cfg_beta: float | None = None,
) -> torch.Tensor:
    """The sampler's output [1, C, W] (fp32) for one observation's model inputs (the
    processor's arrays as tensors; batch 1, or 2 = [cond, uncond] with ``cfg_beta``)."""
    check_cfg_beta(cfg_beta)
    kv, mask = model.prefix(**{n: inputs[n] for n in model.prefix_input_names})
    want = 2 if cfg_beta is not None else 1
    if mask.shape[0] != want:
        raise ValueError(f"sample_actions: inputs have batch {mask.shape[0]}; expected {want} "
                         f"({'[cond, uncond] for CFG' if want == 2 else 'no CFG'})")
    extra = {n: inputs[n] for n in model.expert_input_names}
    return denoise(model, kv, mask, noise, nfe, cfg_beta, extra)


class MonolithicPolicy(nn.Module):
    """(model inputs..., noise) -> the sampler's output with the NFE loop unrolled.

    ``input_names`` fixes the positional order (the ONNX graph's inputs); ``nfe`` is fixed at
    construction: this is the module the exporter traces into one ONNX graph.
    """

    def __init__(self, model: nn.Module, nfe: int, input_names: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.nfe = int(nfe)
        self.input_names = tuple(input_names)
        euler_schedule(self.nfe)  # validates nfe

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        *obs, noise = args
        return sample_actions(self.model, dict(zip(self.input_names, obs, strict=True)), noise, self.nfe)
