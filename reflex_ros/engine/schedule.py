"""The flow-matching schedule: Euler steps, RECAP CFG and the noise x(t=1). One module, one loop.

Every path integrates through :func:`euler_loop`: the ONNX runtime (numpy arrays), the torch
engine's eager path and CUDA-graph reference path (torch tensors), the monolithic export
(traced torch) and the parity check (both). The loop only adds, scales and slices, which
numpy arrays and torch tensors spell the same way, so one function serves both and the
served loop is exactly the verified one.

Convention (Reflex / pi0 / LeRobot 0.6.1): x(t=1) is noise, ``dt = -1/N``,
``t_i = 1 + i*dt`` (computed in float64, fed as float32: this matches LeRobot's recorded
times bit for bit), ``x += dt * v``. RECAP CFG: ``v = v_u + beta (v_c - v_u)`` with
``beta >= 1``; cond and uncond are one batch-2 velocity call and both step from the same x.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from reflex_ros.engine.types import NFE_CHOICES, ObservationError, UsageError


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
        contiguous = len(allowed) > 2 and allowed == tuple(range(allowed[0], allowed[-1] + 1))
        choices = f"{allowed[0]}..{allowed[-1]}" if contiguous else str(list(allowed))
        raise UsageError(f"nfe={nfe!r} is not supported; choose one of {choices}")
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


def cfg_combine(v_cond: Any, v_uncond: Any, beta: Any) -> Any:
    """RECAP guidance: ``v = v_u + beta (v_c - v_u)`` (numpy or torch)."""
    return v_uncond + beta * (v_cond - v_uncond)


#: ``velocity(x, t_i) -> v``: x is ``[1, C, A]`` (the caller expands it to the CFG batch), v is
#: ``[B, C, A]`` with B = 1, or 2 = [cond, uncond]
Velocity = Callable[[Any, float], Any]


def euler_loop(velocity: Velocity, noise: Any, nfe: int, cfg_beta: Any = None) -> Any:
    """Integrate x from ``noise`` [1, C, A] (t=1) to the actions (t=0) in ``nfe`` Euler steps.

    ``cfg_beta`` None means no guidance; otherwise a float or a 0-d tensor (the CUDA graph
    keeps beta in a static buffer, so a new beta needs no re-capture). The velocity must be
    returned as float32 (the state is never rounded to a lower precision).
    """
    x = noise
    for t_i, dt in euler_schedule(nfe):
        v = velocity(x, t_i)
        if cfg_beta is not None:
            v = cfg_combine(v[0:1], v[1:2], cfg_beta)
        x = x + dt * v
    return x


def validate_noise(noise: object, chunk_size: int, width: int) -> np.ndarray:
    """Accept ``(C, W)`` or ``(1, C, W)`` finite floats; return float32 ``(1, C, W)``.

    ``width`` is the sampler's action width (a LeRobot model's ``max_action_dim``, wider than
    the robot's ``action_dim``)."""
    expected = (chunk_size, width)
    if not isinstance(noise, np.ndarray):
        raise ObservationError(f"noise must be a numpy float32 array of shape {expected}, got {type(noise).__name__}")
    if noise.dtype.kind != "f":
        raise ObservationError(f"noise has dtype {noise.dtype}; expected float32 of shape {expected}")
    if noise.shape not in (expected, (1, *expected)):
        raise ObservationError(f"noise has shape {noise.shape}; expected {expected} (chunk_size, action width)")
    if not np.all(np.isfinite(noise)):
        raise ObservationError("noise contains NaN or inf; all values must be finite")
    return np.ascontiguousarray(noise, dtype=np.float32).reshape(1, *expected)


def make_noise(seed_or_rng: int | np.random.Generator | None, chunk_size: int, width: int) -> np.ndarray:
    """Standard-normal float32 ``(1, C, W)`` noise, the x(t=1) of the flow."""
    rng = seed_or_rng if isinstance(seed_or_rng, np.random.Generator) else np.random.default_rng(seed_or_rng)
    return rng.standard_normal((1, chunk_size, width), dtype=np.float32)
