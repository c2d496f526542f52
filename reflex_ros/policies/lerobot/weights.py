"""Fill a family model from LeRobot-named tensors, checking both directions.

Each family model declares a prefix map (our module path -> LeRobot key prefix) and the
LeRobot keys it deliberately leaves out because they never reach the actions (the
``lm_head`` s, the VLM's final norm, the last VLM layer's attention output and MLP). Every
parameter we need must be present with the right shape, and every tensor in the checkpoint
must be either used or known-unused: a silently ignored weight is how a wrong mapping goes
unnoticed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from reflex_ros.policies.lerobot.errors import CheckpointError


def lerobot_name(ours: str, prefix_map: Mapping[str, str]) -> str:
    """Our parameter name -> the LeRobot key (longest matching prefix wins)."""
    for prefix in sorted(prefix_map, key=len, reverse=True):
        if ours.startswith(prefix):
            return prefix_map[prefix] + ours[len(prefix):]
    raise KeyError(f"no LeRobot prefix for parameter {ours!r}")


def required_keys(module: nn.Module, prefix_map: Mapping[str, str]) -> dict[str, str]:
    """``{LeRobot key: our parameter name}`` for every parameter of ``module``."""
    return {lerobot_name(name, prefix_map): name for name, _ in module.named_parameters()}


def load_lerobot_weights(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    prefix_map: Mapping[str, str],
    unused_patterns: Iterable[str] = (),
) -> None:
    """Copy ``state_dict`` (LeRobot names) into ``module``.

    Raises CheckpointError naming the key for a missing weight, a shape mismatch, or a
    tensor that is neither used nor listed in ``unused_patterns`` (regexes)."""
    wanted = required_keys(module, prefix_map)
    params = dict(module.named_parameters())
    for key, ours in wanted.items():
        if key not in state_dict:
            raise CheckpointError(f"the checkpoint has no weight {key!r} (needed for {ours})")
        tensor = state_dict[key]
        if tuple(tensor.shape) != tuple(params[ours].shape):
            raise CheckpointError(
                f"weight {key!r} has shape {tuple(tensor.shape)}, the model expects {tuple(params[ours].shape)}"
            )
    patterns = [re.compile(p) for p in unused_patterns]
    extra = [k for k in state_dict if k not in wanted and not any(p.fullmatch(k) for p in patterns)]
    if extra:
        raise CheckpointError(f"unexpected weight {extra[0]!r} in the checkpoint ({len(extra)} unexpected in all)")
    with torch.no_grad():
        for key, ours in wanted.items():
            params[ours].copy_(state_dict[key].to(params[ours].dtype))
