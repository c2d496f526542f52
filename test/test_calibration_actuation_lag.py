"""Actuation-lag estimation from commanded vs measured joint positions (plain arrays; the
bag path is covered in test_replay_calibrate.py)."""

from __future__ import annotations

import numpy as np
import pytest

from reflex_ros.calibration.actuation_lag import estimate_actuation_lag_ms, lag_cost_curve
from reflex_ros.control.jtc import commanded_series

HZ = 50.0
DT_NS = int(1e9 / HZ)
T0 = 10**18


def chunked_command(seconds: float = 6.0, joints: int = 6, seed: int = 0):
    """Chunks of 50 points every 10 control steps, as the node publishes them."""
    rng = np.random.default_rng(seed)
    segments = []
    for start in range(T0, T0 + int(seconds * 1e9), 10 * DT_NS):
        offsets = np.arange(50, dtype=np.int64) * DT_NS
        t = (start + offsets - T0) / 1e9
        pos = 0.5 * np.sin(2 * np.pi * 0.3 * t[:, None] + np.arange(joints)) + 0.2 * np.sin(
            2 * np.pi * 1.3 * t[:, None] + 3 * np.arange(joints))
        segments.append((start, offsets, pos + rng.normal(0, 0.005, (1, joints))))
    return commanded_series(segments)


def measured(cmd_t, cmd_p, lag_ms, *, offset=0.0, noise=0.0, tau_ms=0.0, rate_hz=100.0, seed=1):
    """Joint states: the command delayed by lag_ms, optionally through a first-order servo."""
    rng = np.random.default_rng(seed)
    t = np.arange(cmd_t[0], cmd_t[-1], int(1e9 / rate_hz))
    pos = np.stack([np.interp(t - lag_ms * 1e6, cmd_t, cmd_p[:, j]) for j in range(cmd_p.shape[1])], axis=1)
    if tau_ms > 0:
        alpha = (1e3 / rate_hz) / (tau_ms + 1e3 / rate_hz)
        for k in range(1, len(pos)):
            pos[k] = pos[k - 1] + alpha * (pos[k] - pos[k - 1])
    return t, pos + offset + rng.normal(0, noise, pos.shape) if noise else pos + offset


@pytest.mark.parametrize("lag_ms", [0.0, 20.0, 80.0, 150.0, 250.0])
def test_recovers_injected_lag(lag_ms):
    cmd_t, cmd_p = chunked_command()
    meas_t, meas_p = measured(cmd_t, cmd_p, lag_ms, noise=0.002)
    estimate = estimate_actuation_lag_ms(cmd_t, cmd_p, meas_t, meas_p)
    assert estimate is not None and abs(estimate - lag_ms) <= 1000.0 / HZ, estimate


def test_robust_to_constant_offset_and_servo_tracking():
    cmd_t, cmd_p = chunked_command()
    meas_t, meas_p = measured(cmd_t, cmd_p, 80.0, offset=0.15, noise=0.002)  # sag / encoder offset
    estimate = estimate_actuation_lag_ms(cmd_t, cmd_p, meas_t, meas_p)
    assert estimate is not None and abs(estimate - 80.0) <= 5.0
    # A first-order servo adds its time constant to the delay the robot really has.
    meas_t, meas_p = measured(cmd_t, cmd_p, 80.0, offset=0.05, tau_ms=30.0)
    estimate = estimate_actuation_lag_ms(cmd_t, cmd_p, meas_t, meas_p)
    assert estimate is not None and 80.0 < estimate <= 80.0 + 30.0 + 1000.0 / HZ


def test_not_enough_motion_gives_none():
    cmd_t, cmd_p = chunked_command()
    still = np.zeros_like(cmd_p) + 0.3
    meas_t, meas_p = measured(cmd_t, still, 80.0, noise=0.001)
    assert estimate_actuation_lag_ms(cmd_t, still, meas_t, meas_p) is None
    # Too short a history (less than max_lag of overlap) is also "cannot tell".
    assert estimate_actuation_lag_ms(cmd_t[:10], cmd_p[:10], meas_t[:20], meas_p[:20]) is None


def test_lag_beyond_the_search_range_gives_none():
    cmd_t, cmd_p = chunked_command()
    meas_t, meas_p = measured(cmd_t, cmd_p, 400.0)
    assert estimate_actuation_lag_ms(cmd_t, cmd_p, meas_t, meas_p, max_lag_ms=300.0) is None
    assert abs(estimate_actuation_lag_ms(cmd_t, cmd_p, meas_t, meas_p, max_lag_ms=600.0) - 400.0) <= 1000.0 / HZ


def test_only_moving_joints_count():
    cmd_t, cmd_p = chunked_command(joints=3)
    cmd_p[:, 1] = 0.7  # a joint the policy holds still: its noise must not drag the estimate
    meas_t, meas_p = measured(cmd_t, cmd_p, 60.0, noise=0.002)
    meas_p[:, 1] += np.random.default_rng(5).normal(0, 0.05, len(meas_t))
    estimate = estimate_actuation_lag_ms(cmd_t, cmd_p, meas_t, meas_p)
    assert estimate is not None and abs(estimate - 60.0) <= 1000.0 / HZ


def test_cost_curve_has_its_minimum_at_the_lag():
    cmd_t, cmd_p = chunked_command()
    meas_t, meas_p = measured(cmd_t, cmd_p, 100.0)
    lags, cost = lag_cost_curve(cmd_t, cmd_p, meas_t, meas_p, step_ms=10.0)
    assert lags[np.argmin(cost)] == 100.0 and cost.min() < 1e-6 < cost.max()


def test_shape_errors_name_the_series():
    with pytest.raises(ValueError, match="command has 2 joints but measurement has 3"):
        lag_cost_curve([0, 1], np.zeros((2, 2)), np.arange(30), np.zeros((30, 3)))
    with pytest.raises(ValueError, match=r"measurement: positions must be \[n, joints\]"):
        lag_cost_curve([0, 1], np.zeros((2, 2)), np.arange(30), np.zeros((29, 2)))


def test_late_chunks_take_over_at_arrival_not_at_their_stamp():
    """Each chunk is stamped 40 ms before it is published (inference ran longer than the
    compensation). The controller can only act from the publish time, so with the arrival
    times the estimate recovers the true 60 ms lag; without them it blames the lateness on
    the actuator."""
    rng = np.random.default_rng(3)
    late_ns = 40_000_000
    segments = []
    for start in range(T0, T0 + int(6e9), 10 * DT_NS):
        offsets = np.arange(50, dtype=np.int64) * DT_NS
        pos = rng.uniform(-0.5, 0.5, (1, 3)) + np.cumsum(rng.normal(0, 0.02, (50, 3)), axis=0)
        segments.append((start, offsets, pos, start + late_ns))
    cmd_t, cmd_p = commanded_series(segments)
    meas = measured(cmd_t, cmd_p, 60.0, rate_hz=250.0)
    with_arrival = estimate_actuation_lag_ms(cmd_t, cmd_p, *meas)
    stamp_only_t, stamp_only_p = commanded_series([s[:3] for s in segments])
    without_arrival = estimate_actuation_lag_ms(stamp_only_t, stamp_only_p, *meas)
    assert with_arrival is not None and abs(with_arrival - 60.0) < DT_NS / 1e6
    assert without_arrival is None or abs(without_arrival - 60.0) > abs(with_arrival - 60.0)
