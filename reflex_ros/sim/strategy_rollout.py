"""Closed-loop pick episodes through the policy node's own chunk pipeline, without ROS: how each
chunk strategy behaves at the boundaries and whether the task still succeeds (issue 14).

What runs is what the node + sim run, minus DDS and the wall clock:

* the robot: :class:`~reflex_ros.sim.task.PickTask` (MuJoCo SO-101 + cube), stepped at its
  physics rate; every physics step the command comes from the one joint_trajectory_controller
  model (:class:`~reflex_ros.control.jtc.TrajectoryExecutor`, deferring future-stamped
  trajectories or not, closed or open loop, as the sim node) through the actuation delay line
  (:class:`~reflex_ros.sim.delay_line.CommandDelayLine`, the injected delay), exactly the sim
  node's physics loop;
* observations: the ``front`` camera at 15 Hz (rendered only when a policy call reads it) with
  the joint state at the frame's time; every ``execute_steps`` control periods the policy runs
  on the newest frame;
* the node's cycle: ``strategy.guide`` -> ``engine.infer`` (seeded noise per episode) ->
  ``strategy.plan`` -> the trajectory arrives ``publish_ms`` after the control tick (the node's
  observation-to-publish time, fixed so episodes are reproducible) -> ``strategy.published``;
  the real strategy objects, parameters and safety limits (so100);
* the metrics: :class:`~reflex_ros.control.handover.HandoverStats` (boundary jump at every
  replan, commanded jerk, commanded-vs-measured tracking), task success.

Sim time never waits for inference: latency is what ``publish_ms`` and the delay line say, so
strategies are compared on identical timing; their CPU cost is measured separately (wall time
of ``guide``/``plan``, and of inference with and without the RTC guide).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reflex_ros.control import params as P
from reflex_ros.control.chunking import SafetyLimits, control_period_ns
from reflex_ros.control.embodiment import load_embodiment
from reflex_ros.control.handover import HandoverStats
from reflex_ros.control.jtc import TimedTrajectory, TrajectoryExecutor
from reflex_ros.control.strategies import ChunkRequest, GuideRequest, make_strategy
from reflex_ros.engine.types import Observation
from reflex_ros.sim.delay_line import CommandDelayLine
from reflex_ros.sim.task import CAMERA_HZ, PickTask

EPOCH_NS = 1_000_000_000_000  # sim time starts here (stamps are never 0: 0 means "now" to a JTC)


@dataclass(frozen=True)
class StrategyConfig:
    """One row of the comparison: the node parameters that differ, and the timing."""

    name: str
    params: dict[str, Any]
    actuation_delay_ms: float = 150.0
    publish_ms: float = 40.0
    defer: bool = True
    open_loop: bool = False
    timeout_s: float = 10.0


@dataclass
class StrategyEpisode:
    seed: int
    success: bool
    ticks: int
    chunks: int
    handover: HandoverStats
    plan_ms: list[float] = field(default_factory=list)  # guide + plan, wall time
    infer_ms: list[float] = field(default_factory=list)
    guided: int = 0  # chunks inferred with a guide


def node_settings(params: dict[str, Any], embodiment: str = "so100") -> P.Settings:
    """The node's settings: defaults, the embodiment's, then ``params`` (validated)."""
    values = {s.name: s.default for s in P.PARAMS}
    values.update(P.embodiment_defaults(load_embodiment(embodiment)))
    values.update(params)
    reason = P.check_all(values)
    if reason is not None:
        raise ValueError(reason)
    return P.Settings(values)


def run_strategy_episode(task: PickTask, render: Callable[[np.ndarray], np.ndarray], engine: Any, camera_key: str,
                         instruction: str, seed: int, config: StrategyConfig,
                         settings: P.Settings) -> StrategyEpisode:
    """One seeded episode (module docstring)."""
    task.reset(seed)
    names = tuple(task.arm.joint_names)
    s = settings
    limits = SafetyLimits.from_lists(s.position_lower, s.position_upper, s.max_delta_per_step)
    strategy = make_strategy(s.chunk_strategy)
    info = engine.info
    rng = np.random.default_rng(seed)
    h_ns = int(round(task.arm.timestep_s * 1e9))
    dt_ns = control_period_ns(s.control_frequency_hz)
    cam_ns = int(round(1e9 / CAMERA_HZ))
    policy_ns = s.execute_steps * dt_ns
    publish_ns = int(round(config.publish_ms * 1e6))
    start = task.joint_positions()
    executor = TrajectoryExecutor(names, start, defer_future=config.defer)
    delay = CommandDelayLine(int(round(config.actuation_delay_ms * 1e6)), start)
    stats = HandoverStats(names, config.defer, window=100_000)
    episode = StrategyEpisode(seed, False, 0, 0, stats)
    pending: list[tuple[int, TimedTrajectory]] = []
    frame: tuple[int, np.ndarray, np.ndarray] | None = None  # (stamp, qpos, joint state then)
    max_steps = int(round(config.timeout_s * 1e9 / h_ns))
    next_cam = next_policy = next_tick = EPOCH_NS
    for n in range(max_steps):
        t = EPOCH_NS + n * h_ns
        if t >= next_cam:
            frame = (t, task.qpos_snapshot(), task.joint_positions())
            next_cam += cam_ns
        if t >= next_tick:
            stats.on_measurement(t, task.joint_positions())
            next_tick += dt_ns
            episode.ticks += 1
        if t >= next_policy and frame is not None:
            next_policy += policy_ns
            obs_stamp, qpos, state = frame
            obs = Observation(images={camera_key: render(qpos)}, state=state.astype(np.float32),
                              instruction=instruction, stamp_ns=obs_stamp)
            noise = rng.standard_normal((info.chunk_size, info.action_width), dtype=np.float32)
            t_pub = t + publish_ns
            c0 = time.perf_counter()
            guide = strategy.guide(GuideRequest(state, obs_stamp, t, s, limits, names, info))
            c1 = time.perf_counter()
            result = engine.infer(obs, noise=noise, **({"guide": guide} if guide is not None else {}))
            c2 = time.perf_counter()
            plan = strategy.plan(ChunkRequest(result.actions, state, obs_stamp, t_pub, s, limits, names))
            c3 = time.perf_counter()
            strategy.published(plan, t_pub)
            episode.plan_ms.append((c1 - c0 + c3 - c2) * 1e3)
            episode.infer_ms.append((c2 - c1) * 1e3)
            episode.guided += guide is not None
            episode.chunks += 1
            offsets = plan.point_times_ns() - plan.stamp_ns
            pending.append((t_pub, TimedTrajectory(names, offsets, plan.positions, plan.stamp_ns)))
            stats.on_trajectory(plan.stamp_ns, offsets, plan.positions, t_pub, plan.dt_ns, origin=state)
        while pending and pending[0][0] <= t:
            arrival, trajectory = pending.pop(0)
            measured = None if config.open_loop else task.joint_positions()
            executor.submit(trajectory, arrival, measured)
        command = executor.sample(t)
        delay.push(t, command)
        task.arm.set_command(delay.output(t))
        task.arm.step()
        task.update_success()
        if task.success:
            break
    stats.flush(EPOCH_NS + (n + 1) * h_ns)
    episode.success = task.success
    return episode


def pooled(episodes: list[StrategyEpisode]) -> dict[str, Any]:
    """The strategy's numbers over all its episodes: every replan, control period and
    measurement pooled (jumps: the worst joint per replan)."""
    def stack(attr: str) -> np.ndarray:
        rows = [np.array(getattr(e.handover, attr)) for e in episodes if len(getattr(e.handover, attr))]
        return np.concatenate(rows) if rows else np.zeros((0, 6))

    pos, vel, jerk, track = stack("jump_pos"), stack("jump_vel"), stack("jerk"), stack("track")
    worst_pos, worst_vel = pos.max(axis=1), vel.max(axis=1)

    def pct(x: np.ndarray, q: float) -> float | None:
        return float(np.percentile(x, q)) if x.size else None

    plan_ms = np.concatenate([e.plan_ms for e in episodes])
    infer_ms = np.concatenate([e.infer_ms for e in episodes])
    return {
        "episodes": len(episodes),
        "successes": int(sum(e.success for e in episodes)),
        "replans": int(pos.shape[0]),
        "jump_pos_p50_rad": pct(worst_pos, 50), "jump_pos_p95_rad": pct(worst_pos, 95),
        "jump_pos_max_rad": float(worst_pos.max()) if worst_pos.size else None,
        "jump_pos_p95_per_joint_rad": np.percentile(pos, 95, axis=0).tolist() if pos.size else None,
        "jump_vel_p50_rad_s": pct(worst_vel, 50), "jump_vel_p95_rad_s": pct(worst_vel, 95),
        "jump_vel_max_rad_s": float(worst_vel.max()) if worst_vel.size else None,
        "jerk_rms_rad_s3": float(np.sqrt(np.mean(jerk**2))) if jerk.size else None,
        "tracking_rms_rad": float(np.sqrt(np.mean(track**2))) if track.size else None,
        "plan_ms_p50": float(np.median(plan_ms)) if plan_ms.size else None,
        "infer_ms_p50": float(np.median(infer_ms)) if infer_ms.size else None,
        "guided_chunks": int(sum(e.guided for e in episodes)),
        "chunks": int(sum(e.chunks for e in episodes)),
    }


__all__ = ["EPOCH_NS", "StrategyConfig", "StrategyEpisode", "node_settings", "pooled", "run_strategy_episode"]
