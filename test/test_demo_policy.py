"""The committed SO-101 demo policy (demo/so101_pick_pi0): a LeRobot pi0 checkpoint that our
reader, exporter and ONNX engine serve like a user's, and that picks the cube in closed loop.

CPU only, no ROS: one strict-parity export (a few seconds), a handful of predictions and one
seeded closed-loop episode (~20 policy calls and frames). Outcomes are asserted (cube height,
success), never timings.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports mujoco: render headless

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "demo" / "so101_pick_pi0"
CHECKPOINT = DEMO / "checkpoint"
HF_CACHE = DEMO / "hf_cache"
CAMERA = "observation.images.front"
INSTRUCTION = "pick up the cube"
#: an evaluation seed (training used 0-299) whose cube is well inside the camera's view
ROLLOUT_SEED = 1003


@pytest.fixture(scope="module")
def demo_hf_home():
    """The checkpoint's bundled offline HF cache, as a user would point HF_HOME at theirs."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", str(HF_CACHE))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.delenv("HF_HUB_CACHE", raising=False)
        yield HF_CACHE


@pytest.fixture(scope="module")
def demo_export(demo_hf_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoint exported exactly as `reflex-ros export CKPT --output DIR --strict` does."""
    from reflex_ros.cli import main as cli_main

    out = tmp_path_factory.mktemp("demo_policy") / "export"
    assert cli_main(["export", str(CHECKPOINT), "--output", str(out), "--strict", "--fixtures", "2"]) == 0
    return out


@pytest.fixture(scope="module")
def engine(demo_export: Path):
    from reflex_ros.engine.loader import load_engine

    eng = load_engine(demo_export, engine="onnx", provider="CPUExecutionProvider")
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def sim():
    from reflex_ros.sim.arm import ArmRenderer
    from reflex_ros.sim.task import PickTask

    task = PickTask()
    renderer = ArmRenderer(task.model, image_size=96, camera="front")
    yield task, renderer
    renderer.close()


def test_checkpoint_is_a_lerobot_pi0_checkpoint_our_reader_understands(demo_hf_home: Path) -> None:
    from reflex_ros.policies.lerobot.checkpoint import load_lerobot_checkpoint

    ckpt = load_lerobot_checkpoint(CHECKPOINT)
    spec = ckpt.spec
    assert ckpt.model_type == "pi0"
    assert spec.camera_keys == [CAMERA] and spec.image_hw == (96, 96)
    assert (spec.state_dim, spec.action_dim, spec.chunk_size) == (6, 6, 50)
    assert spec.norm_map == {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"}
    # the bundled tiny tokenizer, named by its own repo id and found in the bundled cache
    assert spec.tokenizer_hub_id == "reflex-ros/so101-demo-tokenizer"
    hub_config = json.loads(next(HF_CACHE.glob("hub/models--reflex-ros--so101-demo-tokenizer/snapshots/*/config.json"))
                            .read_text())
    assert spec.vision is not None and spec.vision.num_heads == hub_config["vision_config"]["num_attention_heads"]
    # statistics computed from demonstrations: joint-space means inside the arm's range
    mean = ckpt.stats["observation.state"]["mean"]
    assert mean.shape == (6,) and np.all(np.abs(mean) < 2.0) and np.all(ckpt.stats["action"]["std"] > 0)
    # LeRobot's own file layout (what save_pretrained writes)
    names = {p.name for p in CHECKPOINT.iterdir()}
    assert {"config.json", "model.safetensors", "policy_preprocessor.json", "policy_postprocessor.json"} <= names
    assert any(n.startswith("policy_preprocessor_step_") and n.endswith("_normalizer_processor.safetensors")
               for n in names)


def test_export_predicts_finite_in_range_chunks(engine, sim) -> None:
    from reflex_ros.engine.types import Observation

    task, renderer = sim
    info = engine.info
    assert info.camera_names == (CAMERA,) and info.chunk_size == 50 and info.action_dim == 6
    task.reset(ROLLOUT_SEED)
    obs = Observation(images={CAMERA: renderer.render(task.qpos_snapshot())},
                      state=task.joint_positions().astype(np.float32), instruction=INSTRUCTION)
    actions = engine.infer(obs, noise=np.random.default_rng(0).standard_normal((50, 32), dtype=np.float32)).actions
    assert actions.shape == (50, 6) and np.all(np.isfinite(actions))
    arm = task.arm
    assert np.all(actions >= arm.joint_low - 0.05) and np.all(actions <= arm.joint_high + 0.05)
    # from home the policy opens the gripper and moves the arm: the chunk is not a constant
    assert actions[-1, 5] - actions[0, 5] > 0.3


def test_one_closed_loop_episode_lifts_the_cube(engine, sim) -> None:
    from reflex_ros.sim.policy_rollout import RolloutConfig, engine_policy, run_episode
    from reflex_ros.sim.task import SUCCESS_HEIGHT_M

    task, renderer = sim
    policy = engine_policy(engine, CAMERA, INSTRUCTION, seed=ROLLOUT_SEED)
    result = run_episode(task, renderer.render, policy, ROLLOUT_SEED, RolloutConfig(execute_steps=10))
    assert result.max_lift_m > SUCCESS_HEIGHT_M, result.line()
    assert result.success, result.line()


def test_one_episode_through_the_serving_path_pieces_lifts_the_cube(engine, sim) -> None:
    """The same policy through plan_chunk (so100 limits), the sim's deferring trajectory
    executor and its actuation delay line, with 150 ms of delay and compensation learned."""
    from reflex_ros.sim.policy_rollout import NodeLoopConfig, engine_policy, run_episode_node
    from reflex_ros.sim.task import SUCCESS_HEIGHT_M

    task, renderer = sim
    policy = engine_policy(engine, CAMERA, INSTRUCTION, seed=ROLLOUT_SEED)
    config = NodeLoopConfig(actuation_delay_ms=150.0, latency_compensation_ms=180.0, publish_latency_ms=30.0)
    result = run_episode_node(task, renderer.render, policy, ROLLOUT_SEED, config)
    assert result.max_lift_m > SUCCESS_HEIGHT_M, result.line()
    assert result.success, result.line()
