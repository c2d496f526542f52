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

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from reflex_ros.engine.types import (
    GUIDE_GUIDED,
    GUIDE_MODES,
    GUIDE_SCHEDULES,
    NFE_CHOICES,
    ChunkGuide,
    ObservationError,
    UsageError,
)


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


#: ``guide(x, t_i, velocity_at) -> v``: the step's velocity steered towards a target;
#: ``velocity_at(x)`` is the (CFG-combined) velocity of step ``t_i`` at any x
Guide = Callable[[Any, float, Callable[[Any], Any]], Any]


def euler_loop(velocity: Velocity, noise: Any, nfe: int, cfg_beta: Any = None, guide: Guide | None = None) -> Any:
    """Integrate x from ``noise`` [1, C, A] (t=1) to the actions (t=0) in ``nfe`` Euler steps.

    ``cfg_beta`` None means no guidance; otherwise a float or a 0-d tensor (the CUDA graph
    keeps beta in a static buffer, so a new beta needs no re-capture). The velocity must be
    returned as float32 (the state is never rounded to a lower precision). ``guide`` (real-time
    chunking, :func:`inpaint_guide` or ``sampler.vjp_guide``) replaces each step's velocity
    by a steered one; it gets the CFG-combined velocity as a function of x.
    """
    x = noise
    for t_i, dt in euler_schedule(nfe):
        if guide is None:
            v = velocity(x, t_i)
            if cfg_beta is not None:
                v = cfg_combine(v[0:1], v[1:2], cfg_beta)
        else:
            def velocity_at(x_: Any, t_i: float = t_i) -> Any:
                v_ = velocity(x_, t_i)
                return cfg_combine(v_[0:1], v_[1:2], cfg_beta) if cfg_beta is not None else v_

            v = guide(x, t_i, velocity_at)
        x = x + dt * v
    return x


# ---------------------------------------------------------------------- real-time chunking
#
# Our time runs from noise (t=1) to data (t=0) with x += dt*v, dt = -1/N; the model's
# velocity is v ~ noise - action, so the predicted clean chunk at (x_t, t) is
#     x1 = x_t - t * v(x_t).
# Guidance pulls the weighted rows of x1 towards the target Y. The gradient of
# -1/2 |W (Y - x1)|^2 with respect to x_t is J^T W (Y - x1), J = dx1/dx_t, and x must move
# along it; since dt < 0, the step x + dt*v moves x along -v, so the guided velocity
# SUBTRACTS the guidance term:
#     v_g = v - w(t) * J^T [W (Y - x1)],   w(t) = min(beta, c * inv_r2)
# with tau = 1 - t (the paper's time), c = (1 - tau) / tau, inv_r2 = ((1-tau)^2 + tau^2) /
# (1-tau)^2, i.e. w(t) = min(beta, (t^2 + (1 - t)^2) / (t (1 - t))) (beta at t = 1).
# The gradient-free inpainting variant makes x1 of the weighted rows the target directly:
# v* = (x_t - Y) / t gives x_t - t v* = Y, and v_g = v + W (v* - v) blends towards it (W = 1:
# the last step lands exactly on Y).


def prefix_weights(delay: int, horizon: int, total: int, schedule: str) -> np.ndarray:
    """Per-row guidance weights ``(total,)`` float32: 1 for the ``delay`` frozen rows, the
    ``schedule``'s decay over rows ``delay .. horizon-1``, 0 from ``horizon`` on (LeRobot's
    ``get_prefix_weights``: ``delay`` is capped at ``horizon``; linear = the interior of a
    1 -> 0 ramp, exp = linear * expm1(linear) / (e - 1))."""
    end = max(0, min(int(horizon), int(total)))
    start = max(0, min(int(delay), end))
    w = np.zeros(int(total), dtype=np.float64)
    kind = str(schedule).lower()
    if kind == "zeros":
        w[:start] = 1.0
    elif kind == "ones":
        w[:end] = 1.0
    elif kind in ("linear", "exp"):
        w[:start] = 1.0
        n = end - start
        if n > 0:
            ramp = np.linspace(1.0, 0.0, n + 2)[1:-1]
            if kind == "exp":
                ramp = ramp * np.expm1(ramp) / (np.e - 1.0)
            w[start:end] = ramp
    else:
        raise UsageError(f"prefix attention schedule must be one of {GUIDE_SCHEDULES}, got {schedule!r}")
    return w.astype(np.float32)


def guidance_weight(t: float, max_weight: Any) -> Any:
    """``min(beta, c * inv_r2)`` at flow time ``t`` (1 = noise): ``(t^2 + (1-t)^2) / (t (1-t))``
    capped at ``max_weight`` (a float, or a 0-d tensor: a CUDA graph's static buffer)."""
    t = float(t)
    raw = float("inf") if t <= 0.0 or t >= 1.0 else (t * t + (1.0 - t) ** 2) / (t * (1.0 - t))
    if isinstance(max_weight, int | float):
        return min(float(max_weight), raw)
    return max_weight.clamp(max=raw)  # a tensor: stays on the device, no sync


def inpaint_velocity(x: Any, t: float, v: Any, target: Any, weights: Any) -> Any:
    """The gradient-free guided velocity ``v + W ((x - Y) / t - v)`` (numpy or torch)."""
    return v + weights * ((x - target) / t - v)


def inpaint_guide(target: Any, weights: Any) -> Guide:
    """A :data:`Guide` for :func:`euler_loop`: gradient-free inpainting of the weighted rows."""

    def guide(x: Any, t_i: float, velocity_at: Callable[[Any], Any]) -> Any:
        return inpaint_velocity(x, t_i, velocity_at(x), target, weights)

    return guide


def check_guide(guide: ChunkGuide, modes: Iterable[str], chunk_size: int, action_dim: int) -> None:
    """Refuse a guide this engine cannot run or whose values make no sense, naming the fix."""
    modes = tuple(modes)
    if guide.mode not in GUIDE_MODES:
        raise UsageError(f"rtc_mode must be one of {GUIDE_MODES}, got {guide.mode!r}")
    if guide.mode not in modes:
        offered = ", ".join(modes) if modes else "none"
        raise UsageError(f"this engine cannot run real-time chunking in mode {guide.mode!r} (it offers: {offered}); "
                         + ("use rtc_mode inpaint (gradient-free) or the torch engine for the exact guidance"
                            if guide.mode == GUIDE_GUIDED and modes else
                            "serve a decomposed export, or use another chunk_strategy"))
    if str(guide.schedule).lower() not in GUIDE_SCHEDULES:
        raise UsageError(f"prefix attention schedule must be one of {GUIDE_SCHEDULES}, got {guide.schedule!r}")
    target = np.asarray(guide.target)
    if target.ndim != 2 or target.shape[1] != action_dim or not 1 <= target.shape[0] <= chunk_size:
        raise UsageError(f"guide target has shape {target.shape}; expected (rows <= {chunk_size}, {action_dim})")
    if not np.all(np.isfinite(target)):
        raise UsageError("guide target has non-finite values")
    if guide.delay < 0 or guide.horizon < 0:
        raise UsageError(f"guide delay and horizon must be >= 0, got {guide.delay}, {guide.horizon}")
    if not (math.isfinite(guide.max_weight) and guide.max_weight > 0):
        raise UsageError(f"rtc max guidance weight must be > 0, got {guide.max_weight}")


def guide_arrays(guide: ChunkGuide, normalize: Callable[[np.ndarray], np.ndarray], chunk_size: int,
                 width: int, action_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``(target, weights)``, both float32 ``(1, chunk_size, width)`` in the model's action
    space: the target normalized by the processor (rows past it zero), the weights the
    schedule's per row on the robot's ``action_dim`` columns (the padding columns a LeRobot
    model samples are never steered)."""
    rows = np.asarray(guide.target).shape[0]
    model_rows = np.asarray(normalize(np.asarray(guide.target, dtype=np.float32)), dtype=np.float32)
    if model_rows.shape != (rows, width):
        raise UsageError(f"normalize_actions returned {model_rows.shape}, expected ({rows}, {width})")
    target = np.zeros((1, chunk_size, width), dtype=np.float32)
    target[0, :rows] = model_rows
    row_w = prefix_weights(guide.delay, min(guide.horizon, rows), chunk_size, guide.schedule)
    weights = np.zeros((1, chunk_size, width), dtype=np.float32)
    weights[0, :, :action_dim] = row_w[:, None]
    return target, weights


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
