#!/usr/bin/env python3
"""Cross-check the demo checkpoint against LeRobot 0.6.1 itself (a developer check, not a test).

    .venv/bin/python tools/lerobot_crosscheck_demo.py [--lerobot-python /work/lerobot-venv/bin/python]

It proves the committed checkpoint really is a LeRobot pi0 checkpoint: LeRobot's own
``PI0Policy.from_pretrained`` + ``make_pre_post_processors`` load it and produce the same
actions as reflex_ros for the same observations and noise.

Two roles in one file (LeRobot is never a dependency of reflex_ros; it lives in its own venv):

1. in the reflex_ros venv: render observations of the SO-101 pick sim (an expert episode at
   several ticks, so the arm is in different poses), write them in ``reflex-ros predict``'s
   input schema with fixed noise, run ``reflex-ros predict`` on the checkpoint (torch) and on
   its export (ONNX), then
2. re-run this file under the LeRobot venv (``--lerobot-role``), which patches LeRobot's size
   tables in-process to the demo's tiny sizes (``tools/make_lerobot_fixtures.py``'s
   ``patch_paligemma_sizes``: LeRobot builds pi0 from fixed gemma_2b / gemma_300m tables, never
   from the weights) and runs LeRobot's inference path:
   ``prepare_observation_for_inference`` -> preprocessor -> ``predict_action_chunk(noise=...)``
   -> postprocessor.

Prints max |LeRobot - reflex_ros| per observation (radians) for both engines.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "demo" / "so101_pick_pi0"
CAMERA_KEY = "observation.images.front"
INSTRUCTION = "pick up the cube"


def lerobot_role(checkpoint: Path, training_json: Path, inputs: list[Path], outputs: list[Path]) -> None:
    """Runs under LeRobot's venv: LeRobot's own load + inference path for each input."""
    import importlib

    import torch

    sys.path.insert(0, str(REPO / "tools"))
    import make_lerobot_fixtures as fixtures  # noqa: E402  (patch helper; stdlib + numpy at import)

    torch.set_num_threads(1)
    arch = json.loads(training_json.read_text())
    a = arch["architecture"]
    v, g, e = a["vision"], a["vlm"], a["expert"]
    fixtures.VOCAB = int(arch["vocab_size"])
    tiny = {
        "vlm": (g["hidden_size"], g["num_layers"], g["intermediate_size"], g["num_heads"], g["head_dim"]),
        "expert": (e["hidden_size"], g["num_layers"], e["intermediate_size"], e["num_heads"], g["head_dim"]),
        "vision": {"hidden_size": v["hidden_size"], "intermediate_size": v["intermediate_size"],
                   "num_hidden_layers": v["num_layers"], "num_attention_heads": v["num_heads"],
                   "patch_size": v["patch_size"]},
    }
    fixtures.patch_paligemma_sizes(importlib.import_module("lerobot.policies.pi0.modeling_pi0"), tiny)
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.pi0.modeling_pi0 import PI0Policy
    from lerobot.policies.utils import prepare_observation_for_inference

    policy = PI0Policy.from_pretrained(str(checkpoint))
    policy.eval()
    pre, post = make_pre_post_processors(policy.config, pretrained_path=str(checkpoint))
    for src, dst in zip(inputs, outputs, strict=True):
        with np.load(src) as f:
            obs = {CAMERA_KEY: f[f"obs.{CAMERA_KEY}"], "observation.state": f["obs.observation.state"]}
            noise, task = f["noise"], str(f["task"])
        with torch.no_grad():
            batch = pre(prepare_observation_for_inference(obs, torch.device("cpu"), task))
            actions = post(policy.predict_action_chunk(batch, noise=torch.from_numpy(noise)))
        np.savez(dst, actions=actions.numpy()[0])


def observations(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """``n`` observations of an expert episode of ``seed``, spread over its approach and grasp."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    from reflex_ros.sim.arm import ArmRenderer
    from reflex_ros.sim.expert import PickExpert
    from reflex_ros.sim.task import PickTask

    task = PickTask()
    task.reset(seed)
    plan = PickExpert(task).plan()
    renderer = ArmRenderer(task.model, image_size=96)
    ticks = set(np.linspace(0, len(plan) - 1, n).astype(int).tolist())
    rng = np.random.default_rng(seed)
    out = []
    for tick, target in enumerate(plan.targets):
        if tick in ticks:
            out.append({
                f"obs.{CAMERA_KEY}": renderer.render(task.qpos_snapshot()),
                "obs.observation.state": task.joint_positions().astype(np.float32),
                "task": np.array(INSTRUCTION),
                "noise": rng.standard_normal((1, 50, 32)).astype(np.float32),
            })
        task.step(target)
    renderer.close()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=DEMO / "checkpoint")
    p.add_argument("--hf-home", type=Path, default=None, help="default: <checkpoint>/../hf_cache")
    p.add_argument("--training-json", type=Path, default=None, help="default: <checkpoint>/../training.json")
    p.add_argument("--lerobot-python", default="/work/lerobot-venv/bin/python")
    p.add_argument("--observations", type=int, default=4)
    p.add_argument("--seed", type=int, default=1001)
    p.add_argument("--lerobot-role", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--inputs", type=Path, nargs="*", help=argparse.SUPPRESS)
    p.add_argument("--outputs", type=Path, nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args()
    ckpt = args.checkpoint.resolve()
    hf_home = (args.hf_home or ckpt.parent / "hf_cache").resolve()
    training_json = (args.training_json or ckpt.parent / "training.json").resolve()
    if args.lerobot_role:
        lerobot_role(ckpt, training_json, args.inputs, args.outputs)
        return 0

    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    cli = str(Path(sys.executable).with_name("reflex-ros"))
    with tempfile.TemporaryDirectory(prefix="lerobot_crosscheck_") as tmp_name:
        tmp = Path(tmp_name)
        export = tmp / "export"
        subprocess.run([cli, "export", str(ckpt), "--output", str(export), "--strict"], env=env, check=True,
                       capture_output=True)
        inputs = []
        for i, obs in enumerate(observations(args.observations, args.seed)):
            path = tmp / f"in_{i}.npz"
            np.savez(path, **obs)
            inputs.append(path)
        ours: dict[str, list[np.ndarray]] = {"torch (checkpoint)": [], "onnx (export)": []}
        for i, path in enumerate(inputs):
            for label, source in (("torch (checkpoint)", ckpt), ("onnx (export)", export)):
                out = tmp / f"ours_{i}_{len(ours[label])}.npz"
                subprocess.run([cli, "predict", str(source), "--inputs", str(path), "--output", str(out)],
                               env=env, check=True, capture_output=True)
                ours[label].append(np.load(out)["actions"])
        lerobot_out = [tmp / f"lerobot_{i}.npz" for i in range(len(inputs))]
        subprocess.run([args.lerobot_python, __file__, "--lerobot-role", "--checkpoint", str(ckpt),
                        "--hf-home", str(hf_home), "--training-json", str(training_json),
                        "--inputs", *map(str, inputs), "--outputs", *map(str, lerobot_out)], env=env, check=True)
        theirs = [np.load(path)["actions"] for path in lerobot_out]
    worst = 0.0
    for label, values in ours.items():
        diffs = [float(np.max(np.abs(a - b))) for a, b in zip(values, theirs, strict=True)]
        worst = max(worst, *diffs)
        print(f"{label:>20}: max |LeRobot - reflex_ros| per observation (rad) "
              + " ".join(f"{d:.2e}" for d in diffs) + f"; actions shape {values[0].shape}")
    span = float(np.max(np.abs(np.concatenate(theirs))))
    print(f"LeRobot 0.6.1 loads the checkpoint and agrees to {worst:.2e} rad (actions up to {span:.2f} rad)")
    return 0 if worst < 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
