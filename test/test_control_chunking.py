"""Latency compensation, delta -> absolute, safety clamps, refusal of non-finite chunks."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from reflex_ros.control.chunking import (
    ChunkError,
    SafetyLimits,
    control_period_ns,
    finite_differences,
    gate_positions,
    plan_chunk,
    skipped_steps,
    state_fault,
)

J = 3
WIDE = SafetyLimits.from_lists([-10] * J, [10] * J, [100] * J)


def _plan(actions, **kw):
    args = dict(state=np.zeros(J), obs_stamp_ns=1_000_000_000, control_frequency_hz=50.0,
                latency_compensation_ms=0.0, limits=WIDE)
    args.update(kw)
    return plan_chunk(np.asarray(actions, dtype=np.float32), **args)


@pytest.mark.parametrize(
    ("latency_ms", "hz", "expected"),
    [(0, 50, 0), (40, 25, 1), (40, 50, 2), (41, 50, 3), (60, 30, 2), (100, 30, 3), (100.1, 30, 4),
     (1, 50, 1), (20, 50, 1), (19.99, 50, 1), (60, 50, 3), (33.4, 30, 2)],
)
def test_skipped_steps_is_ceil_latency_over_dt(latency_ms: float, hz: float, expected: int) -> None:
    assert skipped_steps(latency_ms, hz) == expected


def test_compensation_drops_rows_and_shifts_stamp() -> None:
    actions = np.arange(10 * 4, dtype=np.float32).reshape(10, 4) * 0.01  # 4th dim is not a joint
    plan = _plan(actions, latency_compensation_ms=45.0)  # k = ceil(45 / 20) = 3
    assert plan.skipped_steps == 3
    assert plan.dt_ns == control_period_ns(50.0) == 20_000_000
    assert plan.stamp_ns == 1_000_000_000 + 3 * 20_000_000
    assert plan.positions.shape == (7, J)
    np.testing.assert_allclose(plan.positions, actions[3:, :J], atol=1e-6)
    times = plan.point_times_ns()
    assert times[0] == plan.stamp_ns and (np.diff(times) == 20_000_000).all()


def test_chunk_size_truncates_before_skipping() -> None:
    actions = np.zeros((10, J), np.float32)
    plan = _plan(actions, chunk_size=6, latency_compensation_ms=20.0)
    assert plan.positions.shape == (5, J) and plan.skipped_steps == 1


def test_skip_everything_is_a_clear_error() -> None:
    with pytest.raises(ChunkError, match=r"skips 5 steps.*only 5 rows"):
        _plan(np.zeros((5, J)), latency_compensation_ms=100.0)


def test_delta_mode_adds_the_observed_state() -> None:
    state = np.array([0.5, -0.5, 1.0])
    deltas = np.tile([[0.01, 0.02, -0.03]], (4, 1))
    plan = _plan(deltas, state=state, action_mode="delta")
    np.testing.assert_allclose(plan.positions, state + deltas, atol=1e-6)


def test_position_limits_clamp_every_point() -> None:
    limits = SafetyLimits.from_lists([-1, -1, -1], [1, 1, 1], [10, 10, 10])
    actions = np.array([[0.0, 2.0, -3.0], [5.0, 0.0, 0.5]])
    plan = _plan(actions, limits=limits)
    np.testing.assert_allclose(plan.positions, [[0, 1, -1], [1, 0, 0.5]])
    assert plan.n_position_clamped == 3 and plan.n_delta_clamped == 0


def test_step_limit_first_point_relative_to_state_then_between_points() -> None:
    limits = SafetyLimits.from_lists([-10] * J, [10] * J, [0.1, 0.1, 0.1])
    actions = np.array([[1.0, 0.0, 0.0]] * 5)
    plan = _plan(actions, limits=limits)  # k = 0: first point one step from the state
    np.testing.assert_allclose(plan.positions[:, 0], [0.1, 0.2, 0.3, 0.4, 0.5])
    assert plan.n_delta_clamped == 5
    # k = 2: two steps elapse between observation and the first point
    plan = _plan(np.array([[1.0, 0, 0]] * 6), limits=limits, latency_compensation_ms=40.0)
    np.testing.assert_allclose(plan.positions[:, 0], [0.2, 0.3, 0.4, 0.5])
    assert (np.abs(np.diff(plan.positions, axis=0)) <= 0.1 + 1e-12).all()


def test_a_state_just_outside_the_limits_is_brought_inside_on_the_first_point_at_the_step_limit() -> None:
    """Issue 13 item 1: drift within the tolerance; the first point is inside the limits and
    moves at most one step (it used to start outside and step back 0.1 per point)."""
    limits = SafetyLimits.from_lists([-1] * J, [1] * J, [0.2] * J)
    for target in (0.0, 1.0, 5.0):  # far inside, at the limit, beyond it
        plan = _plan(np.full((4, J), target), state=np.array([1.04, 0, 0]), limits=limits, state_tolerance=0.05)
        first = plan.positions[0, 0]
        assert -1.0 <= first <= 1.0 and abs(first - 1.04) <= 0.2 + 1e-12
        assert (plan.positions >= -1.0).all() and (plan.positions <= 1.0).all()
        assert (np.abs(np.diff(plan.positions, axis=0)) <= 0.2 + 1e-12).all()
    np.testing.assert_allclose(_plan(np.zeros((4, J)), state=np.array([1.04, 0, 0]), limits=limits,
                                     state_tolerance=0.05).positions[:, 0], [0.84, 0.64, 0.44, 0.24])


@pytest.mark.parametrize("reading", [10.0, 1e30, -1.2, 1.0 + 0.051])
def test_a_state_beyond_the_limits_by_more_than_the_tolerance_refuses_the_chunk(reading: float) -> None:
    """A reading of 10 rad (limit 1) used to give a chunk starting at 9.8, 1e30 one at 1e30."""
    limits = SafetyLimits.from_lists([-1] * J, [1] * J, [0.2] * J)
    with pytest.raises(ChunkError, match=rf"joint 'elbow' reads {re.escape(f'{reading:.6g}')}, beyond its limits \[-1, 1\] by more "
                                         r"than 0\.05 .*chunk refused"):
        _plan(np.zeros((4, J)), state=np.array([0.0, reading, 0.0]), limits=limits, state_tolerance=0.05,
              joint_names=["shoulder", "elbow", "wrist"])


def test_the_tolerance_is_capped_at_one_step_and_nothing_outside_the_limits_is_planned() -> None:
    limits = SafetyLimits.from_lists([-1] * J, [1] * J, [0.02] * J)
    assert state_fault(np.array([1.03, 0, 0]), limits, 0.05) is not None  # 0.03 beyond > one step
    assert state_fault(np.array([1.02, -1.02, 0]), limits, 0.05) is None
    # without a tolerance (offline tools) the limits still win over the step limit
    plan = _plan(np.zeros((3, J)), state=np.array([3.0, -3.0, 0.0]), limits=limits)
    assert (np.abs(plan.positions) <= 1.0).all()


def test_the_publish_gate_clips_into_the_limits_and_refuses_non_finite_values() -> None:
    limits = SafetyLimits.from_lists([-1] * J, [1] * J, [0.2] * J)
    safe, changed = gate_positions(np.array([[0.5, 2.0, -1e30]]), limits)
    np.testing.assert_array_equal(safe, [[0.5, 1.0, -1.0]])
    assert changed == 2
    assert gate_positions(np.array([0.0, 0.5, -0.5]), limits)[1] == 0
    with pytest.raises(ChunkError, match="joint 'wrist' is nan; nothing published"):
        gate_positions(np.array([0.0, 0.0, np.nan]), limits, ["shoulder", "elbow", "wrist"])
    with pytest.raises(ChunkError, match="one value per joint"):
        gate_positions(np.zeros(4), limits)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_chunk_is_refused_naming_row_and_joint(bad: float) -> None:
    actions = np.zeros((6, J + 1), np.float32)
    actions[4, 1] = bad
    with pytest.raises(ChunkError, match=r"row 4 joint 'elbow'"):
        _plan(actions, joint_names=["shoulder", "elbow", "wrist"])
    # a non-finite value in a dim that drives no joint does not matter
    actions = np.zeros((6, J + 1), np.float32)
    actions[2, J] = bad
    assert _plan(actions).positions.shape == (6, J)


def test_shape_errors() -> None:
    with pytest.raises(ChunkError, match="action_dim 2 is smaller than the 3 joints"):
        _plan(np.zeros((5, 2)))
    with pytest.raises(ChunkError, match="2-D"):
        _plan(np.zeros(5))
    with pytest.raises(ChunkError, match="for 2 joints"):
        _plan(np.zeros((5, J)), limits=SafetyLimits.from_lists([-1, -1], [1, 1], [1, 1]))
    with pytest.raises(ValueError, match="position_lower must be < position_upper"):
        SafetyLimits.from_lists([1, 0], [0, 1], [1, 1])
    with pytest.raises(ValueError, match="one value per joint"):
        SafetyLimits.from_lists([0, 0], [1, 1], [1])


def test_velocities_are_finite_differences_ending_at_rest() -> None:
    pos = np.array([[0.0], [0.1], [0.3], [0.6]])
    vel = finite_differences(pos, 0.1)
    np.testing.assert_allclose(vel[:, 0], [1.0, 1.5, 2.5, 0.0])
    plan = _plan(np.linspace(0, 0.5, 6)[:, None].repeat(J, axis=1))
    np.testing.assert_allclose(plan.velocities[:-1], 0.1 * 50, rtol=1e-5)
    assert (plan.velocities[-1] == 0).all()


def test_control_period_exact_in_ns() -> None:
    assert control_period_ns(30.0) == 33_333_333
    assert control_period_ns(1000.0) == 1_000_000
    with pytest.raises(ValueError):
        control_period_ns(0.0)
    with pytest.raises(ValueError):
        skipped_steps(-1.0, 50.0)
    assert math.isclose(_plan(np.zeros((2, J))).dt_s, 0.02)


def test_rate_limit_matches_a_reference_scan_on_random_chunks() -> None:
    from reflex_ros.control.chunking import rate_limit

    rng = np.random.default_rng(3)
    for trial in range(50):
        targets = np.cumsum(rng.normal(0, 0.08, (30, 4)), axis=0)
        start = rng.normal(0, 0.1, 4)
        dmax = rng.uniform(0.02, 0.2, 4)
        scale = int(rng.integers(1, 4))
        out, changed = rate_limit(targets, start, dmax, first_step_scale=scale)
        prev, ref, ref_changed = start.copy(), [], 0
        for i, row in enumerate(targets):
            m = dmax * (scale if i == 0 else 1)
            delta = np.clip(row - prev, -m, m)
            ref_changed += int(np.count_nonzero(delta != row - prev))
            prev = prev + delta
            ref.append(prev)
        np.testing.assert_allclose(out, np.array(ref), atol=1e-12, err_msg=f"trial {trial}")
        assert changed == ref_changed
    smooth = np.linspace(0, 0.1, 10)[:, None].repeat(2, axis=1)
    out, changed = rate_limit(smooth, np.zeros(2), np.array([0.05, 0.05]))
    assert changed == 0 and np.array_equal(out, smooth) and out is not smooth
