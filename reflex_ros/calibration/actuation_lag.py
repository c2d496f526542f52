"""How long the arm takes to follow a command, from motion it was commanded anyway.

Given the commanded trajectory (what the node published, as ros2_control's
joint_trajectory_controller executes it: :func:`reflex_ros.control.jtc.commanded_series`, the
same model the simulated arm runs) and the measured joint states, the actuation lag is the
delay L for which "command delayed by L" best explains the measurement.

Robustness, and why:
- Each joint's residual is de-meaned, so a constant offset (gravity sag, a servo's
  steady-state error, a calibration offset between command and encoder) does not bias L.
- Only joints whose command moves by at least ``min_motion`` count: a still joint carries
  no timing information, only noise.
- Every candidate L is scored on the *same* measured samples (those at least ``max_lag``
  after the command starts), so a longer shift is not rewarded for overlapping less.
- The grid minimum is refined by a parabola through its neighbours (sub-step resolution).
- None when there is not enough motion (too few samples, a flat cost curve, or a best lag at
  the edge of the search range, which means the true lag lies outside it).

A pure ramp cannot separate a delay from an offset; varied motion (chunks of a policy,
reversals, accelerations) can. Plain numpy, no ROS: the node feeds its live history, the
replay tool feeds bag messages.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MIN_SAMPLES = 20
MIN_MOTION = 1e-3  # rad (or m): smaller command ranges are treated as "not moving"
MIN_CONTRAST = 0.05  # the cost must vary by >= 5% over the lag range to trust its minimum


def _sorted_unique(t_ns: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort by time; for repeated stamps keep the last sample (what a controller would hold)."""
    order = np.argsort(t_ns, kind="stable")
    t_sorted, v_sorted = t_ns[order], values[order]
    keep = np.ones(t_sorted.size, dtype=bool)
    keep[:-1] = t_sorted[1:] != t_sorted[:-1]
    return t_sorted[keep], v_sorted[keep]


def _as_series(t_ns: Sequence[int] | np.ndarray, pos: Sequence[Sequence[float]] | np.ndarray,
               what: str) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(t_ns, dtype=np.int64).reshape(-1)
    p = np.asarray(pos, dtype=np.float64)
    if p.ndim == 1:
        p = p[:, None]
    if p.ndim != 2 or p.shape[0] != t.size:
        raise ValueError(f"{what}: positions must be [n, joints] with n = {t.size} timestamps, got {p.shape}")
    finite = np.all(np.isfinite(p), axis=1)
    return _sorted_unique(t[finite], p[finite])


def lag_cost_curve(
    cmd_t_ns: Sequence[int] | np.ndarray,
    cmd_pos: Sequence[Sequence[float]] | np.ndarray,
    meas_t_ns: Sequence[int] | np.ndarray,
    meas_pos: Sequence[Sequence[float]] | np.ndarray,
    max_lag_ms: float = 300.0,
    step_ms: float = 2.0,
    min_motion: float = MIN_MOTION,
    min_samples: int = MIN_SAMPLES,
) -> tuple[np.ndarray, np.ndarray] | None:
    """(lags_ms, cost) over the grid 0..max_lag_ms, or None when there is too little motion.

    cost(L) = sum over moving joints of the de-meaned squared mismatch between the measured
    positions and the command interpolated at (t - L), averaged over the scored samples.
    """
    ct, cp = _as_series(cmd_t_ns, cmd_pos, "command")
    mt, mp = _as_series(meas_t_ns, meas_pos, "measurement")
    if cp.shape[1] != mp.shape[1]:
        raise ValueError(f"command has {cp.shape[1]} joints but measurement has {mp.shape[1]}")
    if max_lag_ms <= 0 or step_ms <= 0:
        raise ValueError(f"max_lag_ms and step_ms must be > 0, got {max_lag_ms}, {step_ms}")
    if ct.size < 2 or mt.size < min_samples:
        return None
    max_lag_ns = int(round(max_lag_ms * 1e6))
    scored = (mt >= ct[0] + max_lag_ns) & (mt <= ct[-1])
    if int(scored.sum()) < min_samples:
        return None
    t_eval, m_eval = mt[scored], mp[scored]
    # Joints whose command moves within the span that the scored samples can see.
    span = (ct >= t_eval[0] - max_lag_ns) & (ct <= t_eval[-1])
    seen = cp[span] if span.sum() >= 2 else cp
    moving = np.ptp(seen, axis=0) >= min_motion
    if not moving.any():
        return None
    cmd_rel = (ct - ct[0]).astype(np.float64)
    eval_rel = (t_eval - ct[0]).astype(np.float64)
    lags_ms = np.arange(0.0, max_lag_ms + 0.5 * step_ms, step_ms)
    cost = np.empty(lags_ms.size)
    joints = np.flatnonzero(moving)
    for k, lag in enumerate(lags_ms):
        at = eval_rel - lag * 1e6
        total = 0.0
        for j in joints:
            residual = m_eval[:, j] - np.interp(at, cmd_rel, cp[:, j])
            residual -= residual.mean()
            total += float(np.mean(residual * residual))
        cost[k] = total
    return lags_ms, cost


def estimate_actuation_lag_ms(
    cmd_t_ns: Sequence[int] | np.ndarray,
    cmd_pos: Sequence[Sequence[float]] | np.ndarray,
    meas_t_ns: Sequence[int] | np.ndarray,
    meas_pos: Sequence[Sequence[float]] | np.ndarray,
    max_lag_ms: float = 300.0,
    step_ms: float = 2.0,
    min_motion: float = MIN_MOTION,
    min_samples: int = MIN_SAMPLES,
) -> float | None:
    """The delay (ms) that best aligns the commanded trajectory with the measured one.

    ``cmd_pos`` is ``[n, J]`` at ``cmd_t_ns`` (the trajectory's points, linearly interpolated
    between them), ``meas_pos`` is ``[m, J]`` at ``meas_t_ns`` in the same joint order.
    Returns None when there is not enough motion to tell (see the module docstring).
    """
    curve = lag_cost_curve(cmd_t_ns, cmd_pos, meas_t_ns, meas_pos, max_lag_ms, step_ms, min_motion, min_samples)
    if curve is None:
        return None
    return best_lag_ms(*curve)


def best_lag_ms(lags: np.ndarray, cost: np.ndarray) -> float | None:
    """The minimum of a cost curve (:func:`lag_cost_curve`, or a sum of curves on the same
    grid from separate stretches of motion), refined by a parabola; None when the curve is too
    flat to trust or the minimum sits at the far edge (the lag is longer than searched)."""
    lags, cost = np.asarray(lags, dtype=np.float64), np.asarray(cost, dtype=np.float64)
    best = int(np.argmin(cost))
    high = float(cost.max())
    if high <= 0 or (high - float(cost[best])) / high < MIN_CONTRAST:
        return None
    if best == 0 or best == lags.size - 1:
        # At the edge: a zero lag is a real answer (a simulator without delay), the far edge
        # means "longer than we searched".
        return 0.0 if best == 0 and cost[1] > cost[0] else None
    c0, c1, c2 = cost[best - 1], cost[best], cost[best + 1]
    denom = c0 - 2.0 * c1 + c2
    offset = 0.5 * (c0 - c2) / denom if denom > 0 else 0.0
    return float(lags[best] + np.clip(offset, -0.5, 0.5) * (lags[1] - lags[0]))


def split_at_holds(segments: Sequence[tuple]) -> list[tuple[list[tuple], int, int | None]]:
    """Stretches of commanded motion: ``(segments, start_ns, end_ns)`` between one-point
    trajectories (a hold: the node's ``~/hold``, deactivate, or an operator's stop), which
    end what was executing. ``start_ns`` is the arrival of a stretch's first trajectory,
    ``end_ns`` the arrival of the hold that ends it (None: the last one runs to the end).
    Segments are ``(start_ns, offsets_ns, positions[k, J][, arrival_ns])`` in arrival order."""
    stretches: list[tuple[list[tuple], int, int | None]] = []
    current: list[tuple] = []
    for seg in segments:
        arrival = int(seg[3]) if len(seg) > 3 and seg[3] is not None else int(seg[0])
        if np.asarray(seg[2]).shape[0] == 1:  # a hold
            if current:
                stretches.append((current, _arrival(current[0]), arrival))
            current = []
            continue
        current.append(seg)
    if current:
        stretches.append((current, _arrival(current[0]), None))
    return stretches


def _arrival(seg: tuple) -> int:
    return int(seg[3]) if len(seg) > 3 and seg[3] is not None else int(seg[0])


def estimate_actuation_lag_ms_over_holds(
    segments: Sequence[tuple],
    meas_t_ns: Sequence[int] | np.ndarray,
    meas_pos: Sequence[Sequence[float]] | np.ndarray,
    max_lag_ms: float = 300.0,
    step_ms: float = 2.0,
    columns: np.ndarray | None = None,
) -> float | None:
    """:func:`estimate_actuation_lag_ms` for a recording that holds more than once (a demo's
    episodes, a robot stopped and restarted): each stretch's commands face only its own
    measurements and the cost curves are summed. Across a hold the arm may be moved (a scene
    reset, a hand), and the stale hold command next to it would pull the estimate towards 0 ms
    (measured: 7 ms for a 150 ms delay). ``columns``: the joints to use (bool mask)."""
    from reflex_ros.control.jtc import commanded_series

    meas_t = np.asarray(meas_t_ns, dtype=np.int64).reshape(-1)
    meas = np.asarray(meas_pos, dtype=np.float64)
    total = lags = None
    for group, start_ns, end_ns in split_at_holds(segments):
        inside = (meas_t >= start_ns) & (meas_t < (end_ns if end_ns is not None else np.iinfo(np.int64).max))
        if len(group) < 2 or inside.sum() < MIN_SAMPLES:
            continue
        cmd_t, cmd_pos = commanded_series(group)
        m = meas[inside]
        if columns is not None:
            cmd_pos, m = cmd_pos[:, columns], m[:, columns]
        curve = lag_cost_curve(cmd_t, cmd_pos, meas_t[inside], m, max_lag_ms, step_ms)
        if curve is None:
            continue
        lags, cost = curve
        total = cost if total is None else total + cost
    return None if total is None else best_lag_ms(lags, total)
