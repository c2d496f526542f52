"""The passive latency tracker's stability rule: >= 30 samples, then 3 consecutive checks
(every 5 samples) within 5 ms of each other."""

from __future__ import annotations

import pytest

from reflex_ros.calibration.tracker import LatencyTracker


def feed(tracker: LatencyTracker, values) -> list[tuple[int, float]]:
    """Add samples; return (sample number, update) for every update emitted."""
    updates = []
    for value in values:
        result = tracker.add(value)
        if result is not None:
            updates.append((tracker.n_total, result))
    return updates


def test_no_update_before_30_samples_then_after_3_stable_checks():
    tracker = LatencyTracker()
    assert feed(tracker, [20.0] * 29) == []
    assert tracker.state() == "warming 29/30"
    # Sample 30 is the first check (a baseline); checks at 35, 40, 45 are stable -> update at 45.
    updates = feed(tracker, [20.0] * 16)
    assert updates == [(45, 20.0)]
    assert tracker.state() == "learned 20.0 ms" and tracker.learned_ms == 20.0


def test_no_update_while_p95_moves_more_than_5_ms():
    tracker = LatencyTracker()
    # A latency that climbs 2 ms per sample: p95 moves by ~10 ms between checks, for 100 samples.
    ramp = [20.0 + 2.0 * i for i in range(100)]
    assert feed(tracker, ramp) == []
    assert tracker.state() == "stabilising 0/3"
    # Once it settles, updates follow 3 stable checks; when the window has turned over to the
    # new level the value is exactly it.
    updates = feed(tracker, [200.0] * 120)
    assert updates and updates[0][0] >= 100 + 15
    assert updates[-1][1] == 200.0


def test_one_unstable_check_restarts_the_count():
    tracker = LatencyTracker(window=100)
    assert feed(tracker, [20.0] * 40) == []  # checks at 30, 35, 40: two stable so far
    assert tracker.state() == "stabilising 2/3"
    # Five slow chunks: p95 of the 45-sample window jumps from 20 to 60 ms -> unstable check at 45.
    assert feed(tracker, [60.0] * 5) == []
    assert tracker.state() == "stabilising 0/3"
    updates = feed(tracker, [20.0] * 15)  # checks at 50, 55, 60 stable (p95 stays 60 ms)
    assert updates == [(60, 60.0)]


def test_actuation_lag_is_added_to_the_loop_latency():
    tracker = LatencyTracker()
    tracker.record_actuation_lag(80.0)
    tracker.record_actuation_lag(float("nan"))  # ignored
    tracker.record_actuation_lag(-5.0)  # ignored
    updates = feed(tracker, [20.0] * 45)
    assert updates == [(45, 100.0)]
    assert tracker.actuation_lag_ms == 80.0


def test_a_new_lag_estimate_restarts_stability_and_re_emits():
    tracker = LatencyTracker()
    assert feed(tracker, [20.0] * 45) == [(45, 20.0)]
    tracker.record_actuation_lag(80.0)  # the arm turns out to lag: loop latency jumps by 80 ms
    updates = feed(tracker, [20.0] * 20)
    assert updates == [(65, 100.0)]  # unstable check at 50; stable at 55, 60, 65


def test_small_drift_is_not_re_emitted():
    tracker = LatencyTracker()
    assert feed(tracker, [20.0] * 45) == [(45, 20.0)]
    assert feed(tracker, [23.0] * 60) == []  # within 5 ms of the emitted value: no parameter flicker
    assert tracker.learned_ms == 20.0


def test_lag_is_the_median_of_recent_estimates():
    tracker = LatencyTracker()
    for lag in (80.0, 82.0, 400.0, 79.0, 81.0):  # one wild estimate does not move the arm's timing
        tracker.record_actuation_lag(lag)
    assert tracker.actuation_lag_ms == 81.0


def test_explicit_latency_disables_updates():
    tracker = LatencyTracker(enabled=False)
    assert feed(tracker, [20.0] * 200) == []
    assert tracker.state() == "explicit (learning off)"
    assert tracker.n_samples == 100  # still observed (diagnostics), never applied


def test_invalid_configuration_is_refused():
    with pytest.raises(ValueError, match="min_samples <= window"):
        LatencyTracker(window=20, min_samples=30)
