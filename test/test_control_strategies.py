"""Chunk strategies (issue 14), ROS-free: anchoring, blend, the RTC guide, the handover metrics,
and the control loop steering a real engine with them."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from _ros_harness import SO100_JOINTS, joint_state, rgb_image

from reflex_ros.control import params as P
from reflex_ros.control.chunking import PlannedChunk, SafetyLimits, finite_differences
from reflex_ros.control.embodiment import load_embodiment
from reflex_ros.control.handover import CommandModel, HandoverStats
from reflex_ros.control.loop import ControlLoop
from reflex_ros.control.stats import LoopStats, stats_values
from reflex_ros.control.strategies import ChunkRequest, GuideRequest, make_strategy
from reflex_ros.engine.types import EngineInfo
from reflex_ros.vocab import DEFAULT_CAMERA_TOPIC

MS = 1_000_000
DT = 33_333_333  # 30 Hz
J = 6
LIMITS = SafetyLimits.from_lists([-3.0] * J, [3.0] * J, [0.1] * J)


def settings(**changes) -> P.Settings:
    values = {s.name: s.default for s in P.PARAMS}
    values.update(P.embodiment_defaults(load_embodiment("so100")), latency_compensation_ms=60.0, execute_steps=10)
    values.update(changes)
    return P.Settings(values)


def executing_plan(start_ns: int, values: np.ndarray) -> PlannedChunk:
    pos = np.repeat(np.asarray(values, dtype=np.float64)[:, None], J, axis=1)
    return PlannedChunk(pos, finite_differences(pos, DT * 1e-9), start_ns, 2, DT)


def request(actions, state, obs_ns: int, now_ns: int, s: P.Settings) -> ChunkRequest:
    acts = np.full((50, J), actions, dtype=np.float32) if np.isscalar(actions) else np.asarray(actions, np.float32)
    return ChunkRequest(acts, np.full(J, state, np.float32), obs_ns, now_ns, s, LIMITS, SO100_JOINTS)


# ---------------------------------------------------------------------- anchoring


@pytest.mark.parametrize("defer", [True, False])
def test_a_chunk_computed_while_the_robot_lags_starts_from_the_command(defer: bool) -> None:
    """The command ramps to 1.0 rad while the arm still reads 0.5 (it lags); the model, seeing
    0.5, proposes 0.5. Anchored, the new trajectory starts within one step of where the command
    is at the takeover; from the measured state (anchor_to_command false, the old behaviour)
    the command would jump back by ~0.5 rad."""
    t0 = 10_000 * MS
    ramp = np.minimum(0.6 + 0.05 * np.arange(40), 1.0)  # reaches 1.0 after 8 points
    for strategy_name in ("replace", "blend", "rtc"):
        strategy = make_strategy(strategy_name)
        strategy.published(executing_plan(t0, ramp), t0 - 5 * MS)
        obs = t0 + 10 * DT
        s = settings(defer_future_trajectories=defer)
        plan = strategy.plan(request(0.5, 0.5, obs, obs + 20 * MS, s))
        takeover = plan.stamp_ns if defer else obs + 20 * MS
        command = float(np.interp(takeover, t0 + DT * np.arange(40), ramp))
        assert command == pytest.approx(1.0)
        steps = max(1, int(np.ceil((plan.stamp_ns - takeover) / DT - 1e-6)))  # periods from takeover to point 0
        assert steps == (1 if defer else 2)
        assert np.all(np.abs(plan.positions[0] - command) <= 0.1 * steps + 1e-9), (strategy_name, plan.positions)
        loose = make_strategy(strategy_name)
        loose.published(executing_plan(t0, ramp), t0 - 5 * MS)
        old = loose.plan(request(0.5, 0.5, obs, obs + 20 * MS, settings(defer_future_trajectories=defer,
                                                                         anchor_to_command=False)))
        assert np.all(np.abs(old.positions[0] - command) >= 0.3 - 1e-9)  # the jump back anchoring removes
        if strategy_name != "blend":
            np.testing.assert_allclose(old.positions[0], 0.5)  # the model's target, near the measured state


@pytest.mark.parametrize("name", ["replace", "blend", "rtc", "temporal_ensemble"])
def test_a_late_chunk_is_anchored_where_the_controller_starts_it(name: str) -> None:
    """Planned 150 ms after its stamp (the latency compensation was too small): a deferring
    controller starts it part-way through, at arrival, so the command there must be within a
    step of the old one (not the chunk's 5th point, 5 steps of drift away)."""
    t0 = 10_000 * MS
    strategy = make_strategy(name)
    strategy.published(executing_plan(t0, np.full(40, 1.0)), t0 - 5 * MS)
    obs = t0 + 10 * DT
    now = obs + 2 * DT + 150 * MS
    plan = strategy.plan(request(0.0, 0.0, obs, now, settings(defer_future_trajectories=True)))
    assert plan.stamp_ns < now
    at_takeover = np.array([np.interp(now, plan.point_times_ns(), plan.positions[:, j]) for j in range(J)])
    assert np.all(np.abs(at_takeover - 1.0) <= 0.1 + 1e-9), at_takeover
    if name == "blend":
        np.testing.assert_allclose(at_takeover, 1.0, atol=0.01)


def test_first_chunk_and_after_reset_start_from_the_measured_state() -> None:
    strategy = make_strategy("replace")
    plan = strategy.plan(request(2.0, 0.5, 10_000 * MS, 10_020 * MS, settings()))
    np.testing.assert_allclose(plan.positions[0], 0.5 + 2 * 0.1)  # k = 2 steps from the state
    strategy.published(plan, 10_021 * MS)
    strategy.reset()
    assert strategy.commanded(np.array([10_100 * MS])) is None


# ---------------------------------------------------------------------- blend


def test_blend_starts_on_the_old_command_with_its_velocity_and_ends_on_the_new_chunk() -> None:
    t0 = 10_000 * MS
    old = 0.2 + 0.02 * np.arange(40)  # moving at 0.6 rad/s
    strategy = make_strategy("blend")
    strategy.published(executing_plan(t0, old), t0 - 5 * MS)
    obs = t0 + 10 * DT
    new = 0.9 + 0.01 * np.arange(50)  # elsewhere, slower
    s = settings(defer_future_trajectories=True, blend_window_steps=8)
    plan = strategy.plan(request(np.repeat(new[:, None], J, axis=1), 0.3, obs, obs + 20 * MS, s))
    times = plan.point_times_ns()
    old_at = np.interp(times, t0 + DT * np.arange(40), old)
    np.testing.assert_allclose(plan.positions[0], old_at[0], atol=1e-9)  # no position step
    before = np.interp(times[0] - DT, t0 + DT * np.arange(40), old)  # the published velocity: central
    np.testing.assert_allclose(plan.velocities[0], (plan.positions[1] - before) / (2 * DT * 1e-9))  # difference
    np.testing.assert_allclose(plan.positions[8:, 0], new[2 + 8:2 + len(plan.positions)], atol=1e-9)
    assert np.all(np.abs(np.diff(plan.positions[:, 0])) <= 0.1 + 1e-9)
    # replace, same inputs: starts a step away from the old command, its velocity jumps
    replace = make_strategy("replace")
    replace.published(executing_plan(t0, old), t0 - 5 * MS)
    rplan = replace.plan(request(np.repeat(new[:, None], J, axis=1), 0.3, obs, obs + 20 * MS, s))
    assert abs(rplan.positions[0, 0] - old_at[0]) > 0.05
    assert abs(rplan.velocities[0, 0] - 0.6) > 2 * abs(plan.velocities[0, 0] - 0.6)


# ---------------------------------------------------------------------- temporal_ensemble


def _ensemble_chunk(strategy, value: float, obs: int, s: P.Settings, publish: bool = True) -> PlannedChunk:
    plan = strategy.plan(request(value, 0.5, obs, obs + MS, s))
    if publish:
        strategy.published(plan, obs + 2 * MS)
    return plan


@pytest.mark.parametrize("m", [0.5, 0.0, -0.7])
def test_temporal_ensemble_weighs_every_covering_chunk_from_the_oldest(m: float) -> None:
    """ACT's weights exp(-m i), i = 0 for the oldest chunk covering the point: three chunks 10
    periods apart (50 rows each), so a point of the third is voted for by 3, 2 or 1 chunks."""
    s = settings(chunk_strategy="temporal_ensemble", temporal_ensemble_coeff=m, latency_compensation_ms=0.0,
                 anchor_to_command=False)
    strategy = make_strategy("temporal_ensemble")
    t0 = 10_000 * MS
    values = (0.50, 0.53, 0.58)
    plans = [_ensemble_chunk(strategy, v, t0 + i * 10 * DT, s) for i, v in enumerate(values)]
    first, third = plans[0], plans[2]
    np.testing.assert_allclose(first.positions[:, 0], 0.50)  # nothing older: the chunk itself
    w = np.exp(-m * np.arange(3))
    three = np.dot(w, values) / w.sum()
    two = np.dot(w[:2], values[1:]) / w[:2].sum()
    np.testing.assert_allclose(third.positions[:30, 0], three, atol=1e-9)  # rows 0-29: all three
    np.testing.assert_allclose(third.positions[30:40, 0], two, atol=1e-9)  # 30-39: the first has ended
    np.testing.assert_allclose(third.positions[40:, 0], 0.58, atol=1e-9)  # 40-49: only itself
    assert len(third.positions) == 50


def test_temporal_ensemble_votes_interpolate_between_points_and_only_published_chunks_vote() -> None:
    s = settings(chunk_strategy="temporal_ensemble", temporal_ensemble_coeff=0.0, latency_compensation_ms=0.0,
                 anchor_to_command=False)
    strategy = make_strategy("temporal_ensemble")
    t0 = 10_000 * MS
    ramp = 0.5 + 0.002 * np.arange(50)
    strategy.published(strategy.plan(request(np.repeat(ramp[:, None], J, axis=1), 0.5, t0, t0 + MS, s)), t0 + MS)
    _ensemble_chunk(strategy, 0.9, t0 + 5 * DT, s, publish=False)  # planned, never published: no vote
    half = t0 + 10 * DT + DT // 2  # half a period off the first chunk's grid
    plan = _ensemble_chunk(strategy, 0.55, half, s)
    old = 0.5 + 0.002 * (10.5 + np.arange(39))  # the ramp halfway between its points
    np.testing.assert_allclose(plan.positions[:39, 0], (old + 0.55) / 2, atol=1e-6)
    np.testing.assert_allclose(plan.positions[39:, 0], 0.55, atol=1e-9)
    strategy.reset()  # activate / deactivate: the votes go too
    again = _ensemble_chunk(strategy, 0.55, half + DT, s)
    np.testing.assert_allclose(again.positions[:, 0], 0.55)


def test_temporal_ensemble_output_still_passes_the_limits() -> None:
    """The ensemble reshapes the targets; the safety limits come after it, as for every strategy."""
    s = settings(chunk_strategy="temporal_ensemble", temporal_ensemble_coeff=-5.0, latency_compensation_ms=0.0,
                 anchor_to_command=False)
    strategy = make_strategy("temporal_ensemble")
    t0 = 10_000 * MS
    _ensemble_chunk(strategy, 0.0, t0, s)
    plan = _ensemble_chunk(strategy, 2.9, t0 + DT, s)
    assert np.all(np.abs(np.diff(plan.positions, axis=0)) <= 0.1 + 1e-9)
    assert np.all(np.abs(plan.positions) <= 3.0)


# ---------------------------------------------------------------------- rtc


def test_rtc_guide_is_the_executing_command_at_the_new_rows() -> None:
    info = EngineInfo("onnx", "cpu", "fp32", 50, J, 32, 1, 64, (10,), "h", guide_modes=("inpaint",))
    strategy = make_strategy("rtc")
    s = settings(defer_future_trajectories=True, rtc_mode="inpaint", latency_compensation_ms=100.0,
                 execute_steps=10, rtc_prefix_attention_schedule="exp")
    obs = 10_000 * MS
    assert strategy.guide(GuideRequest(np.zeros(J), obs, obs, s, LIMITS, SO100_JOINTS, info)) is None
    t0 = obs - 5 * DT
    old = 0.1 * np.arange(30)
    strategy.published(executing_plan(t0, old), t0 - 5 * MS)
    guide = strategy.guide(GuideRequest(np.zeros(J), obs, obs + MS, s, LIMITS, SO100_JOINTS, info))
    assert guide is not None and guide.mode == "inpaint" and guide.schedule == "exp"
    assert guide.delay == 3  # ceil(100 ms / 33.3 ms): the learned latency
    assert guide.horizon == 3 + 10
    assert guide.target.shape == (25, J)  # the rows the old trajectory still covers
    np.testing.assert_allclose(guide.target[:, 0], old[5:30], atol=1e-6)
    delta = strategy.guide(GuideRequest(np.full(J, 0.5), obs, obs + MS, s.replace({"action_mode": "delta"}),
                                        LIMITS, SO100_JOINTS, info))
    np.testing.assert_allclose(delta.target[:, 0], old[5:30] - 0.5, atol=1e-6)


def test_rtc_mode_the_engine_cannot_run_is_refused_naming_the_fix() -> None:
    values = settings(chunk_strategy="rtc", rtc_mode="guided").as_dict()
    onnx = EngineInfo("onnx", "cpu", "fp32", 50, J, 32, 1, 64, (10,), "h", guide_modes=("inpaint",))
    reason = P.check_with_engine(values, onnx)
    assert reason is not None and "rtc_mode 'guided' cannot run on this onnx engine" in reason
    assert "rtc_mode:=inpaint" in reason and "engine:=torch" in reason
    assert P.check_with_engine({**values, "rtc_mode": "inpaint"}, onnx) is None
    assert P.check_with_engine({**values, "chunk_strategy": "blend"}, onnx) is None


# ---------------------------------------------------------------------- metrics


def test_handover_stats_measure_jump_jerk_and_tracking() -> None:
    stats = HandoverStats(SO100_JOINTS, defer=True)
    t0 = 10_000 * MS
    offsets = DT * np.arange(20, dtype=np.int64)
    first = np.repeat((0.03 * np.arange(20))[:, None], J, axis=1)  # 0.9 rad/s, straight
    stats.on_trajectory(t0, offsets, first, t0 - 10 * MS, DT)
    # the second one takes over at its stamp (10 periods later) 0.05 rad off the first, at rest
    second = np.full((20, J), 0.3 + 0.05)
    stats.on_trajectory(t0 + 10 * DT, offsets, second, t0 + 5 * DT, DT)
    for k in range(12):
        stats.on_measurement(t0 + k * DT + DT // 2, first[k] if k < 10 else second[0])
    stats.flush(t0 + 25 * DT)
    h = stats.summary()
    assert h["replans"] == 1
    assert h["jump_pos_p95_rad"] == pytest.approx(0.05)
    assert h["jump_vel_max_rad_s"] == pytest.approx(0.9)  # 0.9 rad/s -> rest
    assert h["jerk_rms_rad_s3"] > 0
    assert h["tracking_rms_rad"] == pytest.approx(np.sqrt(np.mean(np.r_[np.full(9, 0.015), 0.025, 0.035,
                                                                          0.0] ** 2)), rel=0.2)
    straight = HandoverStats(SO100_JOINTS, defer=True)
    straight.on_trajectory(t0, offsets, first, t0 - 10 * MS, DT)
    straight.flush(t0 + 19 * DT)
    assert straight.summary()["jerk_rms_rad_s3"] == pytest.approx(0.0, abs=1e-6)


def test_command_model_defers_like_the_jtc() -> None:
    t0 = 10_000 * MS
    model = CommandModel(SO100_JOINTS, defer=True)
    offsets = DT * np.arange(5, dtype=np.int64)
    model.submit(t0, offsets, np.zeros((5, J)), t0)
    model.submit(t0 + 3 * DT, offsets, np.ones((5, J)), t0 + DT)  # arrives at 1, takes over at 3
    cmd = model.peek(t0 + np.array([2 * DT, 3 * DT]))
    np.testing.assert_allclose(cmd[:, 0], [0.0, 1.0])
    immediate = CommandModel(SO100_JOINTS, defer=False)
    immediate.submit(t0, offsets, np.zeros((5, J)), t0)
    immediate.submit(t0 + 3 * DT, offsets, np.ones((5, J)), t0 + DT)  # ramps from the command at arrival
    np.testing.assert_allclose(immediate.peek(np.array([t0 + 2 * DT]))[0, 0], 0.5)


# ---------------------------------------------------------------------- the loop, a real engine


def _loop(export: Path, **changes) -> tuple[ControlLoop, list, LoopStats]:
    from reflex_ros.engine.loader import load_engine

    values = {s.name: s.default for s in P.PARAMS}
    values.update(P.embodiment_defaults(load_embodiment("so100")), export_dir=str(export), execute_steps=3,
                  defer_future_trajectories=True, **changes)
    engine = load_engine(export)
    published: list = []
    stats = LoopStats()
    clock = [1_000_000 * MS]
    loop = ControlLoop.build(engine, P.Settings(values), publish=lambda *args: published.append(args),
                             now_ns=lambda: clock[0], logger=logging.getLogger("test_strategies"),
                             subscribers=[stats])
    loop.test_clock = clock
    return loop, published, stats


def test_loop_steers_the_engine_with_rtc_and_reports_boundaries(tiny_export: Path) -> None:
    """rtc (inpaint, the ONNX engine): from the second chunk on the engine gets a guide, and
    the frozen rows it returns are the command being executed at those rows' times; the
    replans show up in /diagnostics."""
    loop, published, stats = _loop(tiny_export, chunk_strategy="rtc", rtc_mode="inpaint")
    calls: list = []
    real_infer = loop.engine.infer

    def infer(obs, **kwargs):
        calls.append(kwargs.get("guide"))
        result = real_infer(obs, **kwargs)
        calls.append(result.actions)
        return result

    loop.engine.infer = infer
    clock = loop.test_clock
    try:
        for _ in range(4):
            stamp = clock[0]
            loop.offer_joint_state(joint_state(stamp, SO100_JOINTS, [0.1] * J))
            loop.offer_camera(DEFAULT_CAMERA_TOPIC, rgb_image(stamp, 96))
            clock[0] += 20 * MS
            assert loop.cycle() is not None
            clock[0] += 80 * MS
        assert calls[0] is None and all(g is not None for g in calls[2::2])
        guide, actions = calls[-2], calls[-1]
        assert guide.delay == 2  # so100: 60 ms at 30 Hz
        assert guide.target.shape[1] == actions.shape[1] == loop.engine.info.action_dim
        np.testing.assert_allclose(actions[: guide.delay], guide.target[: guide.delay], atol=1e-4)
        values = stats_values(stats)
        assert int(values["replans"]) == 3 and values["boundary_jump_p95_rad"] != "n/a"
        assert float(values["boundary_jump_max_rad"]) <= 0.1 + 1e-6  # anchored: at most one step
    finally:
        loop.engine.close()
