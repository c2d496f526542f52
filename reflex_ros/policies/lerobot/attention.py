"""Attention with LeRobot's boolean 2-D masks (``make_att_2d_masks`` semantics).

Every LeRobot family describes attention with two per-token vectors: ``pad`` (a real token)
and ``ar`` (1 starts a new causal block). Token ``i`` sees token ``j`` iff both are real and
``cumsum(ar)[j] <= cumsum(ar)[i]``. Masked scores are replaced by a huge negative number
before a float32 softmax, which is what both LeRobot code paths amount to (pi0's additive
-2.38e38 and SmolVLA's ``where(mask, w, finfo.min)``) for any row with a visible key.
"""

from __future__ import annotations

import torch

#: the score given to masked pairs (openpi's constant; exp underflows to exactly 0)
MASKED_SCORE = -2.3819763e38


def make_att_2d_masks(pad_masks: torch.Tensor, ar_masks: torch.Tensor) -> torch.Tensor:
    """``[B, N, N]`` bool: row = query, column = key (big_vision's prefix-LM rule).

    The cumulative sum runs on int64: ONNX has no boolean CumSum."""
    cumsum = torch.cumsum(ar_masks.to(torch.int64), dim=1)
    causal = cumsum[:, None, :] <= cumsum[:, :, None]
    pad = pad_masks[:, None, :] & pad_masks[:, :, None]
    return causal & pad


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scaling: float, groups: int
) -> torch.Tensor:
    """Eager attention, grouped-query aware.

    q ``[B, H, S, D]``, k/v ``[B, H / groups, T, D]`` (query head ``h`` reads KV head
    ``h // groups``), mask bool ``[B, S, T]``. Returns ``[B, S, H * D]``. ``groups`` is a
    Python int from the architecture, so tracing sees no data-dependent branch."""
    b, heads, s, d = q.shape
    if groups > 1:
        kv_heads, t = k.shape[1], k.shape[2]
        k = k[:, :, None].expand(b, kv_heads, groups, t, d).reshape(b, heads, t, d)
        v = v[:, :, None].expand(b, kv_heads, groups, t, d).reshape(b, heads, t, d)
    # scores, the mask fill and the softmax in float32 (the fill value overflows fp16; in a
    # float32 model the cast is a no-op, so LeRobot's arithmetic is unchanged)
    scores = torch.matmul(q, k.transpose(2, 3)).to(torch.float32) * scaling
    scores = torch.where(mask[:, None], scores, torch.full_like(scores, MASKED_SCORE))
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    out = torch.matmul(probs, v)
    return out.transpose(1, 2).reshape(b, s, heads * d)
