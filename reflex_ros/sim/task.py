"""The SO-101 pick-the-cube task on top of :class:`~reflex_ros.sim.arm.SimArm` (ROS-free).

What this adds to the bare scene: a seeded reset (arm at home, cube at a random pose inside the
``lerobot_env_so101`` pick task's sampling box), the cube's true pose (for the scripted expert
and the success check only; a policy never sees it), the success predicate, and a stepping
helper that executes joint-position targets at a fixed control rate exactly the way the sim
node executes a JointTrajectory (linear interpolation between points, sampled at every physics
step, into the position actuators). A policy that imitates targets recorded through
:meth:`PickTask.step` can therefore drive the ROS sim through the policy node.

The task definition is read from the package (``lerobot_env_so101.pick_env``) rather than
restated, so "success" here is the package's success: the cube's centre risen more than
``_LIFT_SUCCESS_HEIGHT`` above its reset height with the gripper site within
``SUCCESS_DISTANCE`` of it. We add one thing the package's per-step check lacks: the condition
must hold for :data:`SUCCESS_HOLD_S`, so a cube that is flicked upward, or slips out during the
lift, is not a success.
"""

from __future__ import annotations

import os

# MuJoCo picks its GL backend when it is first imported, and this module may be the first to
# import it: EGL is the one that renders headless here (see arm.py). An explicit choice wins.
os.environ.setdefault("MUJOCO_GL", "egl")

from dataclasses import dataclass  # noqa: E402

import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from lerobot_env_so101 import pick_env  # noqa: E402

from reflex_ros.sim.arm import SimArm  # noqa: E402

#: The so100 embodiment preset's ``control_frequency_hz`` (config/embodiments/so100.yaml): the
#: policy node publishes chunk rows this far apart, so demonstrations are recorded at the same
#: rate and a chunk of recorded targets means the same thing in training and at serve time.
CONTROL_HZ = 30.0
#: The sim node's default ``camera_rate_hz``: the rate at which the policy sees new frames.
CAMERA_HZ = 15.0

#: Home pose, in :attr:`SimArm.joint_names` order. All zeros is the package's ``HOME_POSITION``
#: for the five arm joints (each joint's zero is the middle of its range in the "new
#: calibration" MJCF), and the gripper's reset ``qpos``; it is also the sim node's default
#: ``initial_positions``, so a served episode starts where a recorded one does.
HOME_POSITION = np.zeros(6)

#: The pick task's cube sampling box ``[[x_min, y_min], [x_max, y_max]]`` in metres (world
#: frame, robot base at the origin), read from the package.
SAMPLING_BOUNDS: np.ndarray = np.asarray(pick_env._SAMPLING_BOUNDS, dtype=np.float64)
#: How far the cube's centre must rise above its reset height (metres), from the package.
SUCCESS_HEIGHT_M = float(pick_env._LIFT_SUCCESS_HEIGHT)
#: How close the ``gripperframe`` site must stay to the cube's centre (metres), from the
#: package: it separates a held cube from one knocked into the air.
SUCCESS_DISTANCE_M = float(pick_env.SUCCESS_DISTANCE)
#: How long the lifted-and-near condition must hold without a break. Half a second rejects a
#: cube batted upward (in free flight it would need an apex 0.3 m above the success height to
#: stay above it that long, and within 5 cm of the gripper throughout) and a grasp that slips during the lift, while costing a scripted episode only 0.5 s.
SUCCESS_HOLD_S = 0.5

#: Physics time the reset lets pass with the arm commanded to home before the episode starts.
#: The position actuators are proportional only, so the arm sags under gravity when released;
#: letting it settle (and the cube come to rest on the floor) makes every episode start from the
#: same at-rest state instead of from a transient.
SETTLE_S = 0.5

#: Fingertip collision pads of the package's MJCF. The jaw meshes collide as convex hulls that
#: touch a cube at one point each and let it pivot out of the jaws during a lift; the package's
#: pick-and-place task enables these boxes for that reason (``jaw_pads=True``). They are inert
#: (collision bit 2) unless moved to bit 1, which :class:`PickTask` does. Measured: the scripted
#: expert lifts the cube in 50/50 seeded episodes with the pads and 6/50 without.
JAW_PAD_GEOMS = ("fixed_jaw_pad", "moving_jaw_pad")

CUBE_JOINT = "block"
CUBE_GEOM = "block"
EE_SITE = "gripperframe"


def enable_jaw_pads(model: mujoco.MjModel) -> None:
    """Turn on the fingertip pads' collisions (see :data:`JAW_PAD_GEOMS`).

    The sim node must do the same to its model for a policy trained on these demonstrations to
    grasp the same way at serve time; it only touches ``geom_contype``/``geom_conaffinity``,
    which MuJoCo reads at every collision pass.
    """
    ids = [model.geom(name).id for name in JAW_PAD_GEOMS]
    model.geom_contype[ids] = 1
    model.geom_conaffinity[ids] = 1


def sample_cube_xy(seed: int, bounds: np.ndarray = SAMPLING_BOUNDS) -> np.ndarray:
    """The cube's ``(x, y)`` for ``seed``: uniform in ``bounds``.

    ``np.random.default_rng(seed)`` is the generator gymnasium seeds an env with
    (``reset(seed=...)``), and the draw is the package's ``uniform(*_SAMPLING_BOUNDS)``, so seed
    ``s`` puts the cube where ``SO101PickCubeGymEnv(random_block_position=True).reset(seed=s)``
    does.
    """
    bounds = np.asarray(bounds, dtype=np.float64)
    return np.random.default_rng(seed).uniform(bounds[0], bounds[1])


def cube_view_fraction(
    model: mujoco.MjModel, data: mujoco.MjData, camera: str = "front", grid: int = 7
) -> float:
    """Fraction of the cube's volume inside ``camera``'s square field of view (0..1).

    Pure geometry (no GL, no occlusion): a ``grid**3`` lattice of points in the cube projected
    through the camera. The package's ``front`` camera looks down past the arm's base, so the
    far edge of the pick task's sampling box (x > ~0.37 m) leaves the bottom of its image: a
    policy that sees only this camera cannot locate those cubes, and this says which ones.
    """
    cam = model.camera(camera).id
    geom = model.geom(CUBE_GEOM).id
    half = model.geom_size[geom]
    axes = [np.linspace(-h, h, grid) for h in half]
    local = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    world = data.geom_xpos[geom] + local @ data.geom_xmat[geom].reshape(3, 3).T
    # Camera frame: x right, y up, looking along -z.
    in_cam = (world - data.cam_xpos[cam]) @ data.cam_xmat[cam].reshape(3, 3)
    depth = -in_cam[:, 2]
    limit = np.tan(np.radians(model.cam_fovy[cam]) / 2.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        inside = (
            (depth > 0)
            & (np.abs(in_cam[:, 0] / depth) <= limit)
            & (np.abs(in_cam[:, 1] / depth) <= limit)
        )
    return float(inside.mean())


@dataclass(frozen=True)
class StepInfo:
    """What one control step ended in (cube pose is for the expert and metrics only)."""

    time_s: float
    lifted: bool
    success: bool


class PickTask:
    """One SO-101 pick-cube episode at a time: seeded reset, stepping, success.

    ``step(target)`` is one control period: the actuator command moves linearly from the
    previous target (reached at the start of the period) to ``target`` (reached at its end),
    sampled at every physics step, which is what the sim node's trajectory executor does with
    a trajectory whose points are ``1 / control_hz`` apart.
    """

    def __init__(
        self,
        arm: SimArm | None = None,
        control_hz: float = CONTROL_HZ,
        sampling_bounds: np.ndarray = SAMPLING_BOUNDS,
        jaw_pads: bool = True,
    ) -> None:
        if control_hz <= 0:
            raise ValueError(f"control_hz must be > 0, got {control_hz}")
        self.arm = arm or SimArm()
        self.model, self.data = self.arm.model, self.arm.data
        if jaw_pads:
            enable_jaw_pads(self.model)
        self.control_hz = float(control_hz)
        self.sampling_bounds = np.asarray(sampling_bounds, dtype=np.float64).reshape(2, 2)
        self._cube_qpos = int(self.model.jnt_qposadr[self.model.joint(CUBE_JOINT).id])
        self._cube_dof = int(self.model.jnt_dofadr[self.model.joint(CUBE_JOINT).id])
        self._cube_geom = self.model.geom(CUBE_GEOM).id
        self._ee_site = self.model.site(EE_SITE).id
        # Cube half-height: its centre's height when resting on the floor (z = 0).
        self.cube_half_size = float(self.model.geom_size[self._cube_geom][2])
        self._step_s = float(self.model.opt.timestep)
        self._target = HOME_POSITION.copy()
        self._tick = 0
        self._physics_steps = 0
        self._t0 = 0.0
        self._z_init = self.cube_half_size
        self._lifted_since_s: float | None = None
        self._success = False
        self.seed: int | None = None

    # ------------------------------------------------------------------ reset
    def reset(self, seed: int) -> np.ndarray:
        """Start episode ``seed``: arm at home, cube at :func:`sample_cube_xy`, settled.

        Deterministic per seed (MuJoCo is deterministic on one machine for the same inputs).
        Returns the cube's sampled ``(x, y)``.
        """
        self.seed = int(seed)
        xy = sample_cube_xy(seed, self.sampling_bounds)
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[self._cube_qpos : self._cube_qpos + 3] = (xy[0], xy[1], self.cube_half_size)
        self.data.qpos[self._cube_qpos + 3 : self._cube_qpos + 7] = (1.0, 0.0, 0.0, 0.0)
        self.arm.set_positions(HOME_POSITION)
        # The package's z_init: the cube centre's height as placed, before any physics.
        self._z_init = float(self.cube_position()[2])
        self._target = HOME_POSITION.copy()
        for _ in range(int(round(SETTLE_S / self._step_s))):
            self.arm.step()
        self._t0 = float(self.data.time)
        self._tick = 0
        self._physics_steps = 0
        self._lifted_since_s = None
        self._success = False
        return xy

    # ------------------------------------------------------------------ state
    @property
    def dt_s(self) -> float:
        """Control period."""
        return 1.0 / self.control_hz

    @property
    def time_s(self) -> float:
        """Episode time: MuJoCo's clock since the end of the reset's settling (so it also runs
        when the arm is stepped by someone else, e.g. the sim node)."""
        return float(self.data.time) - self._t0

    @property
    def tick(self) -> int:
        """Number of control steps taken this episode."""
        return self._tick

    @property
    def command(self) -> np.ndarray:
        """The joint-position target the command has reached now (the last ``step`` target)."""
        return self._target.copy()

    def joint_positions(self) -> np.ndarray:
        """Measured joint positions, :attr:`SimArm.joint_names` order (what the policy sees)."""
        return self.arm.state().positions

    def cube_position(self) -> np.ndarray:
        """The cube centre's world position. For the expert and success only, never a policy."""
        return self.data.geom_xpos[self._cube_geom].copy()

    def cube_rotation(self) -> np.ndarray:
        """The cube's world rotation matrix ``(3, 3)``."""
        return self.data.geom_xmat[self._cube_geom].reshape(3, 3).copy()

    def ee_position(self) -> np.ndarray:
        """The ``gripperframe`` site's world position (the package's end-effector sensor)."""
        return self.data.site_xpos[self._ee_site].copy()

    def qpos_snapshot(self) -> np.ndarray:
        """Full ``qpos`` (arm + cube), what a renderer needs for a frame."""
        return self.arm.qpos_snapshot()

    # ------------------------------------------------------------------ success
    def lifted(self) -> bool:
        """The package's instantaneous success: cube risen > :data:`SUCCESS_HEIGHT_M` and the
        gripper site within :data:`SUCCESS_DISTANCE_M` of it."""
        cube = self.cube_position()
        near = np.linalg.norm(cube - self.ee_position()) < SUCCESS_DISTANCE_M
        return bool(near and cube[2] - self._z_init > SUCCESS_HEIGHT_M)

    @property
    def success(self) -> bool:
        """Whether :meth:`lifted` has held for :data:`SUCCESS_HOLD_S` at some point this
        episode (latched: an episode that succeeded stays a success)."""
        return self._success

    def update_success(self) -> bool:
        """Advance the hold timer from the current state; returns :meth:`lifted`.

        :meth:`step` calls it after every physics step. Code that steps the arm itself (the sim
        node's physics loop, with :meth:`reset` for the scene) calls it after each of its steps,
        then reads :attr:`success`.
        """
        lifted = self.lifted()
        if not lifted:
            self._lifted_since_s = None
        else:
            if self._lifted_since_s is None:
                self._lifted_since_s = self.time_s
            # Small tolerance: the hold is counted in whole physics steps.
            if self.time_s - self._lifted_since_s >= SUCCESS_HOLD_S - 0.5 * self._step_s:
                self._success = True
        return lifted

    # ------------------------------------------------------------------ stepping
    def step(self, target: np.ndarray) -> StepInfo:
        """Advance one control period towards the joint-position ``target`` (6 values).

        The command ramps linearly from the previous target to ``target`` over the period,
        clipped to the actuators' ctrlrange by :meth:`SimArm.set_command`; physics steps are
        scheduled by time, so rates that are not a multiple of the physics step (30 Hz vs
        500 Hz) run 16 or 17 steps a period, exactly as the sim node samples its trajectory.
        The success condition is checked at every physics step.
        """
        target = np.asarray(target, dtype=np.float64).reshape(-1)
        if target.shape != HOME_POSITION.shape or not np.all(np.isfinite(target)):
            raise ValueError(f"target must be {HOME_POSITION.shape[0]} finite joint positions, got {target}")
        start = self._target
        t0 = self._tick * self.dt_s
        t1 = (self._tick + 1) * self.dt_s
        lifted = False
        # Physics step n runs from n*h with the command sampled at its start (sim node order).
        while True:
            t = self._physics_steps * self._step_s
            if t >= t1 - 1e-9:
                break
            alpha = (t - t0) / (t1 - t0)
            self.arm.set_command(start + alpha * (target - start))
            self.arm.step()
            self._physics_steps += 1
            lifted = self.update_success()
        self._target = target.copy()
        self._tick += 1
        return StepInfo(time_s=self.time_s, lifted=lifted, success=self._success)
