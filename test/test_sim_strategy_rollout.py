"""The ROS-free strategy rollout (tools/eval_strategies.py's engine): the node's strategies on
the MuJoCo pick task through the JTC model and the actuation delay, on a real ONNX engine."""

from __future__ import annotations

import numpy as np
import pytest

from reflex_ros.sim.strategy_rollout import StrategyConfig, node_settings, pooled, run_strategy_episode


@pytest.fixture(scope="module")
def sim(tiny_export):
    from reflex_ros.engine.loader import load_engine
    from reflex_ros.sim.arm import ArmRenderer
    from reflex_ros.sim.task import PickTask

    engine = load_engine(tiny_export)
    task = PickTask()
    renderer = ArmRenderer(task.model, image_size=engine.info.image_size, camera="front")
    yield task, renderer, engine
    renderer.close()
    engine.close()


def _run(sim, params: dict, seed: int = 7):
    task, renderer, engine = sim
    config = StrategyConfig("row", params, actuation_delay_ms=150.0, publish_ms=40.0, timeout_s=2.0)
    settings = node_settings({**params, "latency_compensation_ms": 190.0, "defer_future_trajectories": True})
    return run_strategy_episode(task, renderer.render, engine, engine.info.camera_names[0], "pick", seed, config,
                                settings)


def test_rollout_measures_each_strategy_on_identical_seeds(sim) -> None:
    """Same seed, same noise: the unanchored replace jumps at its replans, blend hands over on
    the running command (zero position jump), and both are measured over the same replans."""
    old = _run(sim, {"chunk_strategy": "replace", "anchor_to_command": False})
    blend = _run(sim, {"chunk_strategy": "blend"})
    assert old.chunks == blend.chunks == 6 and old.handover.replans == blend.handover.replans == 5
    a, b = pooled([old]), pooled([blend])
    assert b["jump_pos_max_rad"] == pytest.approx(0.0, abs=1e-9)
    assert a["jump_pos_p95_rad"] > 0.05
    assert b["jerk_rms_rad_s3"] < a["jerk_rms_rad_s3"]
    assert a["tracking_rms_rad"] is not None and np.isfinite(a["tracking_rms_rad"])
    assert not old.success and not blend.success  # a random policy in 2 s


def test_rollout_steers_rtc_with_the_learned_delay(sim) -> None:
    rtc = _run(sim, {"chunk_strategy": "rtc", "rtc_mode": "inpaint"})
    assert rtc.guided == rtc.chunks - 1  # every chunk but the first is guided
    assert pooled([rtc])["jump_pos_max_rad"] <= 0.1 + 1e-9  # anchored: at most one step
