"""The one JTC model (control/jtc.py): the executor the sim runs, the commanded series the
actuation-lag estimator replays through it, the JointTrajectory parser; and the sim's
actuation delay line. ROS-free, except the parser check on a real rclpy message."""

from __future__ import annotations

import numpy as np
import pytest

from reflex_ros.control.jtc import (
    TimedTrajectory,
    TrajectoryExecutor,
    commanded_series,
    parse_joint_trajectory,
)
from reflex_ros.sim.delay_line import CommandDelayLine

JOINTS = ("a", "b", "c")
MS = 1_000_000
T0 = 1_000_000 * MS  # an arbitrary "now", far from 0 (0 means "start now")


def traj(times_ms, positions, start_ns=0, names=JOINTS) -> TimedTrajectory:
    return TimedTrajectory(
        tuple(names), np.asarray(times_ms, dtype=np.int64) * MS, np.asarray(positions, dtype=float), start_ns
    )


def executor(initial=(0.0, 0.0, 0.0)) -> TrajectoryExecutor:
    return TrajectoryExecutor(JOINTS, np.asarray(initial, dtype=float))


def test_future_stamp_waits_and_ramps_from_the_arrival_state():
    ex = executor()
    measured = np.array([0.2, 0.0, -0.2])
    result = ex.submit(traj([0], [[1.0, 2.0, 3.0]], start_ns=T0 + 100 * MS), T0, measured)
    assert result.accepted
    np.testing.assert_allclose(ex.sample(T0), measured)  # nothing happens at arrival
    np.testing.assert_allclose(ex.sample(T0 + 50 * MS), (measured + [1.0, 2.0, 3.0]) / 2)
    np.testing.assert_allclose(ex.sample(T0 + 100 * MS), [1.0, 2.0, 3.0])  # point 0 exactly at the stamp


def test_open_loop_start_uses_the_last_command():
    ex = executor(initial=(0.5, 0.5, 0.5))
    assert ex.submit(traj([100], [[1.5, 1.5, 1.5]]), T0, measured_positions=None).accepted
    np.testing.assert_allclose(ex.sample(T0 + 50 * MS), [1.0, 1.0, 1.0])


def test_linear_interpolation_between_points_by_time_from_start():
    ex = executor()
    points = [[0.0, 0.0, 0.0], [1.0, -1.0, 2.0], [1.0, 1.0, 0.0]]
    assert ex.submit(traj([0, 100, 300], points, start_ns=T0), T0, np.zeros(3)).accepted
    np.testing.assert_allclose(ex.sample(T0 + 25 * MS), [0.25, -0.25, 0.5])
    np.testing.assert_allclose(ex.sample(T0 + 100 * MS), [1.0, -1.0, 2.0])
    np.testing.assert_allclose(ex.sample(T0 + 200 * MS), [1.0, 0.0, 1.0])


def test_holds_the_last_point_after_the_end():
    ex = executor()
    assert ex.submit(traj([0, 100], [[0, 0, 0], [1.0, 2.0, 3.0]], start_ns=T0), T0, np.zeros(3)).accepted
    for t in (T0 + 100 * MS, T0 + 5_000 * MS):
        np.testing.assert_allclose(ex.sample(t), [1.0, 2.0, 3.0])


def test_new_trajectory_replaces_the_previous_one_from_the_state_at_arrival():
    ex = executor()
    assert ex.submit(traj([0, 1000], [[0, 0, 0], [10.0, 10.0, 10.0]], start_ns=T0), T0, np.zeros(3)).accepted
    np.testing.assert_allclose(ex.sample(T0 + 100 * MS), [1.0, 1.0, 1.0])
    measured = np.array([0.9, 0.9, 0.9])  # the arm lags its command a little
    assert ex.submit(traj([100], [[-1.0, -1.0, -1.0]]), T0 + 100 * MS, measured).accepted
    np.testing.assert_allclose(ex.sample(T0 + 100 * MS), measured)
    np.testing.assert_allclose(ex.sample(T0 + 150 * MS), (measured - 1.0) / 2)
    np.testing.assert_allclose(ex.sample(T0 + 900 * MS), [-1.0, -1.0, -1.0])  # the old one is gone


def test_zero_stamp_means_now():
    ex = executor()
    assert ex.submit(traj([0, 100], [[1, 1, 1], [2, 2, 2]], start_ns=0), T0, np.zeros(3)).accepted
    np.testing.assert_allclose(ex.sample(T0 + 50 * MS), [1.5, 1.5, 1.5])


def test_wholly_past_trajectory_is_rejected_and_the_old_one_kept():
    ex = executor()
    assert ex.submit(traj([0], [[1.0, 1.0, 1.0]], start_ns=T0), T0, np.zeros(3)).accepted
    stale = traj([0, 100], [[5, 5, 5], [6, 6, 6]], start_ns=T0 - 500 * MS)
    result = ex.submit(stale, T0 + 10 * MS, np.zeros(3))
    assert not result.accepted
    assert "past" in result.reason
    np.testing.assert_allclose(ex.sample(T0 + 20 * MS), [1.0, 1.0, 1.0])


def test_partly_past_trajectory_joins_at_the_current_time():
    ex = executor()
    result = ex.submit(traj([0, 200], [[0, 0, 0], [2, 2, 2]], start_ns=T0 - 100 * MS), T0, np.zeros(3))
    assert result.accepted
    np.testing.assert_allclose(ex.sample(T0 + 1), [1.0, 1.0, 1.0], atol=1e-6)


def test_joints_are_mapped_by_name_unknown_reported_missing_hold():
    ex = executor(initial=(0.1, 0.2, 0.3))
    ex.sample(T0)
    result = ex.submit(
        traj([0], [[7.0, 9.0]], start_ns=T0, names=("c", "nope")), T0, np.array([5.0, 5.0, 5.0])
    )
    assert result.accepted
    assert result.unknown_joints == ("nope",)
    # c follows the message; a and b keep their last command, not the measured 5.0
    np.testing.assert_allclose(ex.sample(T0 + MS), [0.1, 0.2, 7.0])


@pytest.mark.parametrize(
    "bad, reason",
    [
        (traj([0, 0], [[0, 0, 0], [1, 1, 1]]), "increasing"),
        (traj([0], [[0, 0]]), "shape"),
        (traj([0], [[0, np.nan, 0]]), "non-finite"),
        (traj([0], [[0, 0, 0]], names=("a", "a", "b")), "duplicate"),
        (traj([0], [[0, 0]], names=("x", "y")), "belong"),
    ],
)
def test_malformed_trajectories_are_rejected_with_a_reason(bad, reason):
    ex = executor()
    result = ex.submit(bad, T0, np.zeros(3))
    assert not result.accepted
    assert reason in result.reason
    assert not ex.has_trajectory


def test_empty_trajectory_holds_the_state_at_arrival():
    ex = executor()
    assert ex.submit(traj([0, 1000], [[0, 0, 0], [10, 10, 10]], start_ns=T0), T0, np.zeros(3)).accepted
    measured = ex.sample(T0 + 100 * MS)
    empty = TimedTrajectory(JOINTS, np.zeros(0, dtype=np.int64), np.zeros((0, 3)), 0)
    assert ex.submit(empty, T0 + 100 * MS, measured).accepted
    np.testing.assert_allclose(ex.sample(T0 + 800 * MS), measured)


@pytest.mark.parametrize("delay_ms", [0, 80, 33])
def test_delay_line_shifts_the_applied_command_by_exactly_the_delay(delay_ms):
    """Drive executor + delay line as the physics loop does (2 ms steps) and compare."""
    step_ns = 2 * MS
    ex = executor()
    line = CommandDelayLine(delay_ms * MS, initial=np.zeros(3))
    points = [[0, 0, 0], [1, 2, 3], [-1, 0, 1]]
    assert ex.submit(traj([0, 200, 400], points, start_ns=T0 + 20 * MS), T0, np.zeros(3)).accepted
    computed, applied = {}, {}
    for k in range(400):
        t = T0 + k * step_ns
        computed[t] = ex.sample(t)
        line.push(t, computed[t])
        applied[t] = line.output(t)
    delay_ns = delay_ms * MS
    for t, value in applied.items():
        source = t - delay_ns
        if source < T0:
            np.testing.assert_allclose(value, np.zeros(3))  # nothing old enough yet: initial
        elif source in computed:
            np.testing.assert_allclose(value, computed[source])  # exactly the delayed command
        else:  # delay not a multiple of the step: zero-order hold of the last one due
            np.testing.assert_allclose(value, computed[max(s for s in computed if s <= source)])
    # the shift is visible: with a delay, the applied command reaches point 1 later
    reach_ms = min((t - T0) / MS for t, v in applied.items() if np.allclose(v, [1, 2, 3]))
    assert reach_ms == pytest.approx(220 + (delay_ms if delay_ms % 2 == 0 else delay_ms + 1))


def test_delay_line_refuses_a_negative_delay():
    with pytest.raises(ValueError, match=">= 0"):
        CommandDelayLine(-1, np.zeros(3))


def deferring_executor() -> TrajectoryExecutor:
    return TrajectoryExecutor(JOINTS, np.zeros(3), defer_future=True)


def test_deferral_keeps_the_active_trajectory_until_the_new_stamp():
    ex = deferring_executor()
    assert ex.submit(traj([0, 1000], [[0, 0, 0], [10, 10, 10]], start_ns=T0), T0, np.zeros(3)).accepted
    result = ex.submit(
        traj([0, 100], [[-1, -1, -1], [-2, -2, -2]], start_ns=T0 + 300 * MS), T0 + 100 * MS, np.zeros(3)
    )
    assert result.accepted and "deferred" in result.reason
    np.testing.assert_allclose(ex.sample(T0 + 200 * MS), [2.0, 2.0, 2.0])  # still the first one
    np.testing.assert_allclose(
        ex.sample(T0 + 300 * MS), [-1.0, -1.0, -1.0]
    )  # the new one, exactly at its stamp
    np.testing.assert_allclose(ex.sample(T0 + 350 * MS), [-1.5, -1.5, -1.5])
    assert ex.pending_count == 0


def test_deferred_start_splices_from_the_command_at_the_stamp():
    ex = deferring_executor()
    assert ex.submit(traj([0, 1000], [[0, 0, 0], [10, 10, 10]], start_ns=T0), T0, np.zeros(3)).accepted
    # first point 100 ms after the stamp: interpolate from the old command at the stamp (3.0)
    assert ex.submit(
        traj([100], [[5.0, 5.0, 5.0]], start_ns=T0 + 300 * MS), T0 + 10 * MS, np.zeros(3)
    ).accepted
    ex.sample(T0 + 100 * MS)
    np.testing.assert_allclose(ex.sample(T0 + 350 * MS), [4.0, 4.0, 4.0])


def test_deferral_a_newer_message_drops_pending_ones_that_start_later():
    ex = deferring_executor()
    assert ex.submit(traj([0], [[1, 1, 1]], start_ns=T0 + 500 * MS), T0, np.zeros(3)).accepted
    assert ex.submit(traj([0], [[2, 2, 2]], start_ns=T0 + 200 * MS), T0 + 10 * MS, np.zeros(3)).accepted
    assert ex.pending_count == 1  # the one starting at +500 ms is superseded
    np.testing.assert_allclose(ex.sample(T0 + 600 * MS), [2.0, 2.0, 2.0])
    # pending ones that start earlier run until the later one starts
    assert ex.submit(traj([0], [[3, 3, 3]], start_ns=T0 + 700 * MS), T0 + 600 * MS, np.zeros(3)).accepted
    assert ex.submit(traj([0], [[4, 4, 4]], start_ns=T0 + 800 * MS), T0 + 610 * MS, np.zeros(3)).accepted
    assert ex.pending_count == 2
    np.testing.assert_allclose(ex.sample(T0 + 750 * MS), [3.0, 3.0, 3.0])
    np.testing.assert_allclose(ex.sample(T0 + 800 * MS), [4.0, 4.0, 4.0])


def test_deferral_does_not_delay_a_trajectory_that_is_already_due():
    ex = deferring_executor()
    result = ex.submit(traj([0, 200], [[0, 0, 0], [2, 2, 2]], start_ns=T0 - 100 * MS), T0, np.zeros(3))
    assert result.accepted and result.reason == ""
    np.testing.assert_allclose(ex.sample(T0 + 1), [1.0, 1.0, 1.0], atol=1e-6)


def _at(t, p, when):
    """The commanded series as the function it stands for (linear between its samples)."""
    at = (np.asarray(when, dtype=np.int64) - t[0]).astype(float)  # relative: 1e18-ns stamps lose ns in float64
    return np.array([np.interp(at, (t - t[0]).astype(float), p[:, j]) for j in range(p.shape[1])]).T


def test_commanded_series_replaces_on_a_new_message():
    first = (0, np.array([0, 100, 200, 300]), np.array([[0.0], [1.0], [2.0], [3.0]]))
    second = (150, np.array([0, 100]), np.array([[10.0], [11.0]]))
    t, p = commanded_series([first, second])
    # The first runs until 150 (its 200 and 300 points never execute), then the second; the
    # series ends where the last trajectory ends.
    assert (t[0], t[-1]) == (0, 250)
    np.testing.assert_allclose(_at(t, p, [0, 100, 149, 150, 200, 250])[:, 0], [0.0, 1.0, 1.49, 10.0, 10.5, 11.0])


def test_commanded_series_defers_to_the_stamp_and_holds_until_a_late_one_arrives():
    # b arrives early (deferred to its stamp 100); c is late (stamp 200, arrives 250): b holds
    # its last point until c arrives, then c runs from where it stands at 250.
    a = (0, np.array([0, 50]), np.array([[0.0], [5.0]]), 0)
    b = (100, np.array([0, 50]), np.array([[20.0], [25.0]]), 60)
    c = (200, np.array([0, 100]), np.array([[40.0], [50.0]]), 250)
    t, p = commanded_series([a, b, c])
    np.testing.assert_allclose(_at(t, p, [50, 99, 100, 150, 249, 250, 300])[:, 0],
                               [5.0, 5.0, 20.0, 25.0, 25.0, 45.0, 50.0])


def test_commanded_series_is_the_executor_sampled():
    """The estimator's series and the sim's per-step samples are the same model: replaying
    random chunks (some early, some late) through a deferring executor step by step gives
    the series' values."""
    rng = np.random.default_rng(4)
    segments, t0, dt = [], 10**18, 20 * MS
    for i in range(8):
        start = t0 + i * 10 * dt
        offsets = np.arange(30, dtype=np.int64) * dt
        segments.append((start, offsets, rng.normal(size=(30, 3)), start + int(rng.integers(-40, 40)) * MS))
    t, p = commanded_series(segments)
    ex = TrajectoryExecutor(JOINTS, np.zeros(3), defer_future=True)
    steps = np.arange(t[0], t[-1], 2 * MS)
    pending = sorted(((s[3], k) for k, s in enumerate(segments)))
    sampled = []
    for now in steps:
        while pending and pending[0][0] <= now:
            start, offsets, pos, arrival = segments[pending.pop(0)[1]]
            ex.sample(arrival)
            assert ex.submit(TimedTrajectory(JOINTS, offsets, pos, start), arrival).accepted
        sampled.append(ex.sample(now))
    np.testing.assert_allclose(np.array(sampled), _at(t, p, steps), atol=1e-9)


def test_sample_many_equals_repeated_sample():
    one, many = (TrajectoryExecutor(JOINTS, np.zeros(3), defer_future=True) for _ in range(2))
    for ex in (one, many):  # an active trajectory, then a deferred one taking over at T0 + 50 ms
        ex.submit(traj([0, 40, 80], [[1, 2, 3], [4, 5, 6], [7, 8, 9]], start_ns=T0), T0)
        ex.submit(traj([0, 30], [[0, 0, 0], [1, 1, 1]], start_ns=T0 + 50 * MS), T0 + 10 * MS)
    times = T0 + np.arange(-10, 120, 3, dtype=np.int64) * MS
    np.testing.assert_allclose(many.sample_many(times), np.array([one.sample(int(t)) for t in times]))
    np.testing.assert_allclose(many.last_command, one.last_command)


def test_parse_joint_trajectory_reads_rclpy_messages_and_names_a_bad_point():
    from builtin_interfaces.msg import Duration
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    msg = JointTrajectory(joint_names=["b", "a"])
    msg.header.stamp.sec, msg.header.stamp.nanosec = 12, 5
    msg.points = [JointTrajectoryPoint(positions=[1.0, 2.0], time_from_start=Duration(sec=0, nanosec=0)),
                  JointTrajectoryPoint(positions=[3.0, 4.0], time_from_start=Duration(sec=1, nanosec=500))]
    parsed = parse_joint_trajectory(msg)
    assert parsed.start_ns == 12_000_000_005 and parsed.times_from_start_ns.tolist() == [0, 1_000_000_500]
    np.testing.assert_array_equal(parsed.columns(["a", "x", "b"]), [[2.0, np.nan, 1.0], [4.0, np.nan, 3.0]])
    msg.points[1].positions = [3.0]
    with pytest.raises(ValueError, match="point 1 has 1 positions for 2 joints"):
        parse_joint_trajectory(msg)
