"""Issue 14 over real DDS: the policy node (its own process, real tiny export, onnxruntime)
hands a new chunk over from the command being executed, not from the measured state.

The robot side reports an arm that lags its command badly (it reads a fixed pose near the
lower limits whatever it is told), the controller defers future-stamped trajectories (the
node is told so: ``defer_future_trajectories``), so a chunk takes over at its stamp T and the
command there is the previous trajectory's, interpolated at T. The module's node is shared;
the autouse ``baseline`` puts the strategy, the parameters and the feed into a known state
before every test (a strategy change is a cleanup + configure: ``chunk_strategy`` is
reconfigure-only).
"""

from __future__ import annotations

import numpy as np
import pytest
from _ros_harness import SO100_JOINTS, RosHarness, stamp_ns

POLICY = {"node": {"parameters": {"execute_steps": 3, "defer_future_trajectories": True,
                                  "latency_compensation_ms": 400.0}}}
LOWER = np.array([-1.87, -1.69, -1.64, -1.60, -2.69, -0.12])
STUCK = (LOWER + 0.05).tolist()  # the arm never gets anywhere: it reads this whatever it is commanded
DMAX = 0.1  # so100 max_delta_per_step
BASELINE = {"anchor_to_command": True, "latency_compensation_ms": 400.0, "max_delta_per_step": [DMAX] * 6}


def _strategy(node, robot: RosHarness, name: str) -> None:
    if robot.get_params("chunk_strategy")[0] == name:
        return
    node.deactivate()
    node.cleanup()
    assert robot.set_params(chunk_strategy=name) == [(True, "")]
    node.configure()
    node.activate()


@pytest.fixture()
def baseline(node, robot: RosHarness):
    def use(strategy: str) -> None:
        _strategy(node, robot, strategy)
        assert robot.set_params(**BASELINE) == [(True, "")] * len(BASELINE)
        robot.feed(True, rate_hz=30.0, state=lambda: (SO100_JOINTS, STUCK))
        robot.wait_chunks(3, timeout_s=120)
    return use


def _trajectories(robot: RosHarness, start: int) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """(stamp, received, point times, positions) of every chunk trajectory since ``start``."""
    with robot.lock:
        records = list(robot.trajectories[start:])
    out = []
    for r in records:
        msg = r.msg
        if len(msg.points) < 2:
            continue  # a hold
        stamp = stamp_ns(msg.header.stamp)
        times = stamp + np.array([stamp_ns(p.time_from_start) for p in msg.points], dtype=np.int64)
        out.append((stamp, r.t_ns, times, np.array([p.positions for p in msg.points])))
    return out


def _handovers(records) -> list[tuple[np.ndarray, np.ndarray]]:
    """(first point, previous trajectory's command at the new stamp) for every replan that
    arrived before its stamp (so the takeover is the stamp, exactly)."""
    pairs = []
    for (_, _, t_prev, p_prev), (stamp, recv, _, p_new) in zip(records, records[1:], strict=False):
        if recv < stamp and t_prev[0] <= stamp <= t_prev[-1]:
            old = np.array([np.interp(stamp, t_prev, p_prev[:, j]) for j in range(p_prev.shape[1])])
            pairs.append((p_new[0], old))
    return pairs


def _next_handovers(robot: RosHarness, chunks: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`_handovers` of the next ``chunks`` chunk trajectories the node publishes."""
    with robot.lock:
        mark = len(robot.trajectories)
    robot.wait_chunks(chunks, timeout_s=180)
    return _handovers(_trajectories(robot, mark))


def test_a_chunk_computed_while_the_robot_lags_starts_from_the_command(node, robot, baseline) -> None:
    """Anchored (the default), every new trajectory's first point is within one step of where
    the running command is at its takeover, although the measured state the chunk was computed
    from is far away; with anchoring off (the old behaviour: limited from the measured state)
    the same node and feed make the command jump back towards the arm."""
    baseline("replace")
    pairs = _next_handovers(robot, 8)
    assert len(pairs) >= 3, "too few replans arrived before their stamp"
    lag = max(float(np.abs(old - STUCK).max()) for _, old in pairs)
    assert lag > 1.0, f"the command never got far from the arm ({lag:.2f} rad): the test proves nothing"
    for first, old in pairs:
        assert np.all(np.abs(first - old) <= DMAX + 1e-6), (first, old)

    assert robot.set_params(anchor_to_command=False) == [(True, "")]
    robot.wait_chunks(2, timeout_s=120)  # the change applies from the next cycle
    loose = _next_handovers(robot, 8)
    assert loose and max(float(np.abs(first - old).max()) for first, old in loose) > 3 * DMAX
    diag = robot.latest_diagnostics(after_ns=robot.now_ns())
    assert int(diag["replans"]) > 0 and float(diag["boundary_jump_max_rad"]) > 3 * DMAX
    assert diag["anchor_to_command"] == "false"


def test_blend_hands_over_on_the_running_command(node, robot, baseline) -> None:
    """blend: the first point of every new trajectory is the running command at its takeover
    (the cross-fade starts at weight 0), and the velocities published there continue it."""
    baseline("blend")
    pairs = _next_handovers(robot, 6)
    assert len(pairs) >= 3
    for first, old in pairs:
        np.testing.assert_allclose(first, old, atol=1e-6)
    diag = robot.latest_diagnostics(after_ns=robot.now_ns())
    assert diag["chunk_strategy"] == "blend" and diag["boundary_jump_p50_rad"] != "n/a"


def test_temporal_ensemble_runs_on_the_node_and_takes_its_coefficient_live(node, robot, baseline) -> None:
    """temporal_ensemble is chosen by the parameter like every strategy, its coefficient is a
    live parameter (range-checked), and its trajectories are still anchored at the takeover."""
    baseline("temporal_ensemble")
    assert robot.set_params(temporal_ensemble_coeff=11.0)[0][0] is False  # outside [-10, 10]
    assert robot.set_params(temporal_ensemble_coeff=0.5) == [(True, "")]
    robot.wait_chunks(2, timeout_s=120)
    pairs = _next_handovers(robot, 6)
    assert len(pairs) >= 3
    for first, old in pairs:
        assert np.all(np.abs(first - old) <= DMAX + 1e-6), (first, old)
    diag = robot.latest_diagnostics(after_ns=robot.now_ns())
    assert diag["chunk_strategy"] == "temporal_ensemble" and diag["boundary_jump_p50_rad"] != "n/a"
