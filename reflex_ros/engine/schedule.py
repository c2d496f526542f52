"""Euler flow-matching schedule and CFG math (numpy only).

Shared by the torch sampler, the ONNX runtime's numpy loop and the exporter's unrolled graph,
so all three integrate exactly the same way. Convention (Reflex / pi0): x(t=1) is noise,
``dt = -1/N``, ``t_i = 1 + i*dt``, ``x += dt * v``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from reflex_ros.engine.types import NFE_CHOICES, UsageError


def euler_schedule(nfe: int) -> list[tuple[float, float]]:
    """``[(t_i, dt)]`` for ``i in range(nfe)``: t runs 1 -> 1/N, dt = -1/N."""
    if int(nfe) != nfe or nfe < 1:
        raise UsageError(f"nfe must be a positive integer, got {nfe!r}")
    n = int(nfe)
    dt = -1.0 / n
    return [(1.0 + i * dt, dt) for i in range(n)]


def check_nfe(nfe: int, supported: Iterable[int] = NFE_CHOICES) -> int:
    """Return ``nfe`` if supported, else raise UsageError listing the supported values."""
    allowed = tuple(int(s) for s in supported)
    if not isinstance(nfe, (int, np.integer)) or isinstance(nfe, bool) or int(nfe) not in allowed:
        raise UsageError(f"nfe={nfe!r} is not supported; choose one of {list(allowed)}")
    return int(nfe)


def check_cfg_beta(beta: float | None) -> float | None:
    """None means no guidance. Beta < 1 would invert guidance, so it is refused (RECAP)."""
    if beta is None:
        return None
    b = float(beta)
    if not np.isfinite(b) or b < 1.0:
        raise UsageError(
            f"cfg_beta must be >= 1.0 (got {beta!r}); beta < 1 inverts the guidance. "
            "Use None to disable CFG, 1.0 for cond-only, 1.5-2.5 as in the pi*0.6 paper."
        )
    return b


def cfg_combine(v_cond: np.ndarray, v_uncond: np.ndarray, beta: float) -> np.ndarray:
    """RECAP guidance: ``v = v_u + beta (v_c - v_u)``."""
    return v_uncond + np.float32(beta) * (v_cond - v_uncond)
