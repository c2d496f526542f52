"""Constant tables that keep their own dtype when a model is cast (``model.to(bfloat16)``).

``nn.Module.to(dtype)`` casts every floating-point buffer, so a bf16 engine would round the
RoPE frequencies (float32) and the flow-time scales (float64) to 8 mantissa bits: at
position ~500 a rotation would be off by a radian and at ``t * 2 pi / 4e-3`` the time
embedding by several, so a bf16 chunk would share little with the fp32 one. LeRobot computes
these tables once in full precision whatever the weights' dtype; modules that own such
tables inherit :class:`FixedDtypeBuffers`, which lets a cast move them to the new device but
keeps their dtype and their exact values (the float32 arithmetic is unchanged).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class FixedDtypeBuffers(nn.Module):
    """An ``nn.Module`` whose own buffers follow device moves but never dtype casts."""

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> nn.Module:
        before = {name: buf for name, buf in self._buffers.items() if buf is not None}
        super()._apply(fn, recurse)
        for name, old in before.items():
            new = self._buffers[name]
            if new is not None and new.dtype != old.dtype:
                self._buffers[name] = old.to(device=new.device)
        return self
