"""Closed-loop policy episodes on the SO-101 pick task, without ROS (evaluation and tests).

One episode: :meth:`PickTask.reset` to a seed, then at 30 Hz control ticks

* every ``camera_stride`` ticks (15 Hz) the ``front`` camera takes a frame (as the sim node
  publishes it; only the frame a policy call actually reads is rendered, since rendering is
  the expensive part and the others are never seen);
* every ``execute_steps`` ticks (K) the policy runs on the newest frame and the joint
  positions measured now, giving a chunk whose row ``i`` is the joint-position target for
  ``t_obs + i * dt`` (the dataset's and the policy node's convention: row 0 is "now");
* each tick :meth:`PickTask.step` moves the command to the target due at the end of that
  tick, i.e. row ``tick + 1 - t_obs`` of the active chunk (rows past the end hold the last).

Latency is modelled by ``delay_steps`` (d): a chunk computed from the observation at tick t
takes over only at tick ``t + d``; until then the previous chunk keeps running. How the late
chunk is then executed is ``latency_mode``:

* ``"skip"``: from the row due at that moment (row ``d + 1`` first): the policy node's latency
  compensation (drop ``k = ceil(L / dt)`` rows, stamp ``t_obs + k dt``), which is also what a
  joint_trajectory_controller does with a chunk stamped ``t_obs`` that arrives late;
* ``"stale"``: from row 1, as if the chunk had been computed at arrival (a controller that
  restamps the trajectory on arrival, i.e. no compensation).

With ``d = 0`` the two are the same. The episode ends at the task's success (the cube held
above the success height for 0.5 s) or at ``timeout_s``.

:func:`run_episode_node` is the same episode through the serving path's own pieces instead
of :meth:`PickTask.step`: the node's chunk planning (``control.chunking.plan_chunk``: latency
compensation ``k = ceil(L / dt)``, stamp ``t_obs + k dt``, so100 clamps and rate limits), the
sim node's trajectory executor (``control.jtc.TrajectoryExecutor``, deferral on, sampled at
every physics step) and its actuation delay line (``sim.delay_line.CommandDelayLine``), with a
chosen observation-to-arrival latency. It measures what the ROS demo will do, minus DDS.

The policy is any callable ``(image uint8 (H, W, 3), state float32 (6,)) -> (rows, 6)``;
:func:`engine_policy` wraps a reflex_ros engine (:func:`reflex_ros.engine.loader.load_engine`)
with per-episode seeded flow-matching noise, so an episode is reproducible.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from reflex_ros.sim.task import CAMERA_HZ, PickTask, cube_view_fraction

#: ``(image, state) -> actions (rows, joints)``
Policy = Callable[[np.ndarray, np.ndarray], np.ndarray]
#: optional ``(actions, state, first_row) -> actions``: e.g. the node's safety clamp
ChunkFilter = Callable[[np.ndarray, np.ndarray, int], np.ndarray]

LATENCY_MODES = ("skip", "stale")


@dataclass(frozen=True)
class RolloutConfig:
    """How the loop runs (see the module docstring)."""

    #: K: control ticks between policy calls (the so100 preset's ``execute_steps`` is 10)
    execute_steps: int = 10
    #: d: control ticks from an observation until its chunk takes over
    delay_steps: int = 0
    #: how a late chunk is executed: "skip" (compensated) or "stale"
    latency_mode: str = "skip"
    timeout_s: float = 10.0
    #: control ticks per camera frame (30 Hz control / 15 Hz camera)
    camera_stride: int = 2

    def __post_init__(self) -> None:
        if self.execute_steps < 1 or self.delay_steps < 0 or self.camera_stride < 1:
            raise ValueError(f"execute_steps >= 1, delay_steps >= 0, camera_stride >= 1; got {self}")
        if self.latency_mode not in LATENCY_MODES:
            raise ValueError(f"latency_mode must be one of {LATENCY_MODES}, got {self.latency_mode!r}")


@dataclass
class EpisodeResult:
    """What one closed-loop episode did."""

    seed: int
    success: bool
    #: episode time at which success latched (the hold completed), None if never
    success_time_s: float | None
    ticks: int
    cube_xy: tuple[float, float]
    #: fraction of the cube inside the camera's view at reset (0..1)
    cube_in_view: float
    #: highest rise of the cube's centre above its reset height (m)
    max_lift_m: float
    #: closest the gripper site came to the cube's centre (m): tells "never reached it" from
    #: "reached it but did not hold it"
    closest_m: float
    chunks: int
    infer_ms: list[float] = field(default_factory=list)

    def line(self) -> str:
        """One human-readable line per episode."""
        outcome = f"success at {self.success_time_s:4.1f} s" if self.success else "FAIL             "
        p50 = float(np.median(self.infer_ms)) if self.infer_ms else float("nan")
        return (f"seed {self.seed:>6}  {outcome}  cube ({self.cube_xy[0]:.3f}, {self.cube_xy[1]:+.3f}) m "
                f"in view {self.cube_in_view:4.0%}  closest {self.closest_m * 100:4.1f} cm  "
                f"max lift {self.max_lift_m * 100:5.1f} cm  "
                f"{self.chunks:3d} chunks, inference p50 {p50:5.1f} ms")


def run_episode(
    task: PickTask,
    render: Callable[[np.ndarray], np.ndarray],
    policy: Policy,
    seed: int,
    config: RolloutConfig = RolloutConfig(),
    chunk_filter: ChunkFilter | None = None,
) -> EpisodeResult:
    """One episode of ``policy`` on ``task`` from ``seed``; ``render(qpos)`` is the camera
    (e.g. :meth:`ArmRenderer.render` of the task's model)."""
    xy = task.reset(seed)
    in_view = cube_view_fraction(task.model, task.data)
    z0 = float(task.cube_position()[2])
    max_ticks = int(round(config.timeout_s * task.control_hz))
    K, d = config.execute_steps, config.delay_steps
    frame_qpos = task.qpos_snapshot()
    # (chunk, row index of the target due at the end of tick `start`, tick it takes over)
    active: tuple[np.ndarray, int, int] | None = None
    pending: tuple[np.ndarray, int, int] | None = None
    infer_ms: list[float] = []
    max_lift = 0.0
    closest = float("inf")
    chunks = 0
    tick = 0
    for tick in range(max_ticks):
        if tick % config.camera_stride == 0:
            frame_qpos = task.qpos_snapshot()
        if tick % K == 0:
            image = render(frame_qpos)
            state = task.joint_positions().astype(np.float32)
            t0 = time.perf_counter()
            actions = np.asarray(policy(image, state), dtype=np.float64)
            infer_ms.append((time.perf_counter() - t0) * 1e3)
            first = d + 1 if config.latency_mode == "skip" else 1
            if chunk_filter is not None:
                actions = chunk_filter(actions, state, first)
            pending = (actions, first, tick + d)
            chunks += 1
        if pending is not None and tick >= pending[2]:
            active, pending = pending, None
        if active is None:
            target = task.command  # nothing has arrived yet: hold
        else:
            rows, first, start = active
            target = rows[min(first + tick - start, len(rows) - 1)]
        info = task.step(target)
        cube = task.cube_position()
        max_lift = max(max_lift, float(cube[2]) - z0)
        closest = min(closest, float(np.linalg.norm(task.ee_position() - cube)))
        if info.success:
            break
    return EpisodeResult(
        seed=int(seed),
        success=task.success,
        success_time_s=task.time_s if task.success else None,
        ticks=tick + 1,
        cube_xy=(float(xy[0]), float(xy[1])),
        cube_in_view=in_view,
        max_lift_m=max_lift,
        closest_m=closest,
        chunks=chunks,
        infer_ms=infer_ms,
    )


@dataclass(frozen=True)
class NodeLoopConfig:
    """The serving path's timing for :func:`run_episode_node` (milliseconds, sim time)."""

    execute_steps: int = 10
    #: observation stamp -> the trajectory's arrival at the sim (inference + transport)
    publish_latency_ms: float = 30.0
    #: the sim's actuation delay (executor command -> motors), ``--actuation-delay-ms``
    actuation_delay_ms: float = 0.0
    #: the node's latency_compensation_ms (L)
    latency_compensation_ms: float = 0.0
    #: the JTC defers future-stamped trajectories (the demo's sim does)
    defer_future: bool = True
    #: the JTC starts a takeover from the last command (True) or the measured state (False)
    open_loop: bool = False
    embodiment: str = "so100"
    timeout_s: float = 10.0


def run_episode_node(
    task: PickTask,
    render: Callable[[np.ndarray], np.ndarray],
    policy: Policy,
    seed: int,
    config: NodeLoopConfig = NodeLoopConfig(),
) -> EpisodeResult:
    """One episode through plan_chunk -> TrajectoryExecutor -> CommandDelayLine -> physics.

    Observations are taken every ``execute_steps`` control periods from the newest 15 Hz frame
    (stamp = the frame's time) and the joint positions at that time; the trajectory arrives
    ``publish_latency_ms`` later. Times carry a 1 s epoch so no stamp is 0 ("now" in JTC)."""
    from reflex_ros.control.chunking import SafetyLimits, control_period_ns, plan_chunk
    from reflex_ros.control.embodiment import load_embodiment
    from reflex_ros.control.jtc import TimedTrajectory, TrajectoryExecutor
    from reflex_ros.sim.delay_line import CommandDelayLine

    emb = load_embodiment(config.embodiment)
    limits = SafetyLimits.from_lists(emb.position_lower, emb.position_upper, emb.max_delta_per_step)
    xy = task.reset(seed)
    in_view = cube_view_fraction(task.model, task.data)
    z0 = float(task.cube_position()[2])
    arm = task.arm
    epoch = 1_000_000_000
    h_ns = int(round(arm.timestep_s * 1e9))
    dt_ns = control_period_ns(task.control_hz)
    cam_ns = int(round(1e9 / CAMERA_HZ))
    obs_ns = config.execute_steps * dt_ns
    latency_ns = int(round(config.publish_latency_ms * 1e6))
    executor = TrajectoryExecutor(arm.joint_names, task.command, defer_future=config.defer_future)
    delay = CommandDelayLine(int(round(config.actuation_delay_ms * 1e6)), task.command)
    frame: tuple[int, np.ndarray, np.ndarray] = (0, task.qpos_snapshot(), task.joint_positions())
    next_cam = next_obs = 0
    arrivals: list[tuple[int, object]] = []
    infer_ms: list[float] = []
    max_lift, closest, chunks = 0.0, float("inf"), 0
    steps = int(round(config.timeout_s * 1e9 / h_ns))
    for n in range(steps):
        t = n * h_ns
        if t >= next_cam:
            frame = (t, task.qpos_snapshot(), task.joint_positions())
            next_cam += cam_ns
        if t >= next_obs:
            t_obs, qpos, positions = frame
            t0 = time.perf_counter()
            actions = np.asarray(policy(render(qpos), positions.astype(np.float32)), dtype=np.float64)
            infer_ms.append((time.perf_counter() - t0) * 1e3)
            plan = plan_chunk(actions, state=positions, obs_stamp_ns=epoch + t_obs,
                              control_frequency_hz=task.control_hz,
                              latency_compensation_ms=config.latency_compensation_ms, limits=limits,
                              chunk_size=emb.chunk_size, joint_names=arm.joint_names)
            offsets = plan.point_times_ns() - plan.stamp_ns
            arrivals.append((t_obs + latency_ns, TimedTrajectory(arm.joint_names, offsets, plan.positions,
                                                                 plan.stamp_ns)))
            next_obs += obs_ns
            chunks += 1
        while arrivals and arrivals[0][0] <= t:
            _, trajectory = arrivals.pop(0)
            executor.sample(epoch + t)
            measured = None if config.open_loop else task.joint_positions()
            executor.submit(trajectory, epoch + t, measured)  # type: ignore[arg-type]
        command = executor.sample(epoch + t)
        delay.push(epoch + t, command)
        arm.set_command(delay.output(epoch + t))
        arm.step()
        task.update_success()
        cube = task.cube_position()
        max_lift = max(max_lift, float(cube[2]) - z0)
        closest = min(closest, float(np.linalg.norm(task.ee_position() - cube)))
        if task.success:
            break
    return EpisodeResult(
        seed=int(seed), success=task.success, success_time_s=task.time_s if task.success else None,
        ticks=int(round(task.time_s * task.control_hz)), cube_xy=(float(xy[0]), float(xy[1])),
        cube_in_view=in_view, max_lift_m=max_lift, closest_m=closest, chunks=chunks, infer_ms=infer_ms,
    )


def engine_policy(
    engine: object, camera_key: str, instruction: str, seed: int, nfe: int | None = None
) -> Policy:
    """A :data:`Policy` over a reflex_ros engine: one camera, the task's instruction, and
    flow-matching noise from ``default_rng(seed)`` (reproducible episodes)."""
    from reflex_ros.engine.types import Observation

    rng = np.random.default_rng(seed)
    info = engine.info  # type: ignore[attr-defined]
    shape = (info.chunk_size, info.action_width)

    def policy(image: np.ndarray, state: np.ndarray) -> np.ndarray:
        noise = rng.standard_normal(shape, dtype=np.float32)
        obs = Observation(images={camera_key: image}, state=state, instruction=instruction)
        kwargs = {"noise": noise} if nfe is None else {"noise": noise, "nfe": nfe}
        return engine.infer(obs, **kwargs).actions  # type: ignore[attr-defined]

    return policy


def success_rate(results: list[EpisodeResult]) -> str:
    """``success K/N (P%)``, the line the demo and the evaluation print."""
    n = len(results)
    k = sum(r.success for r in results)
    return f"success {k}/{n} ({100.0 * k / max(n, 1):.0f}%)"


__all__ = [
    "CAMERA_HZ",
    "ChunkFilter",
    "EpisodeResult",
    "LATENCY_MODES",
    "NodeLoopConfig",
    "Policy",
    "RolloutConfig",
    "engine_policy",
    "run_episode",
    "run_episode_node",
    "success_rate",
]
