"""A reference Euler rollout of a LeRobot family model in torch (tests, parity, debugging).

The engine integrates with its own loop; this one exists so a model can be checked stage by
stage against LeRobot's recordings, with the same schedule (``engine.schedule``: x(t=1) is
the noise, ``t_i = 1 + i * dt`` in float64 then float32, ``x += dt * v``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from reflex_ros.engine.schedule import euler_schedule


@dataclass
class Rollout:
    """The sampler's output and every step's inputs and velocity (numpy, float32)."""

    actions: np.ndarray
    t: list[float] = field(default_factory=list)
    x_t: list[np.ndarray] = field(default_factory=list)
    v_t: list[np.ndarray] = field(default_factory=list)


def as_tensors(inputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """numpy model inputs (a processor's ``prepare`` output) -> torch tensors."""
    return {k: torch.as_tensor(np.asarray(v)) for k, v in inputs.items()}


@torch.no_grad()
def sample_actions(model: torch.nn.Module, inputs: Mapping[str, Any], noise: np.ndarray, nfe: int) -> Rollout:
    """Run ``prefix`` once and ``velocity`` ``nfe`` times from ``noise`` ``[B, chunk, width]``."""
    tensors = as_tensors(inputs)
    kv, prefix_mask = model.prefix(**{n: tensors[n] for n in model.prefix_input_names})
    expert = {n: tensors[n] for n in model.expert_input_names}
    x = torch.as_tensor(np.asarray(noise, dtype=np.float32))
    out = Rollout(actions=np.empty(0, np.float32))
    for t_i, dt in euler_schedule(nfe):
        t = torch.full((x.shape[0],), t_i, dtype=torch.float32)
        v = model.velocity(x, t, kv, prefix_mask, **expert)
        out.t.append(float(t[0]))
        out.x_t.append(x.numpy().copy())
        out.v_t.append(v.numpy().copy())
        x = x + dt * v
    out.actions = x.numpy()
    return out
