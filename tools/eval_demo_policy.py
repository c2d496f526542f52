#!/usr/bin/env python3
"""Closed-loop success of the SO-101 pick demo policy in the MuJoCo sim, without ROS.

    .venv/bin/python tools/eval_demo_policy.py --episodes 50 --seed 1000
    .venv/bin/python tools/eval_demo_policy.py --episodes 50 --seed 1000 --delay-ms 150
    .venv/bin/python tools/eval_demo_policy.py --export /tmp/demo_export --episodes 20 --seed 5000

The checkpoint is exported first, exactly as a user's would be (``HF_HOME=<its hf_cache>
reflex-ros export CHECKPOINT --output DIR --strict``, parity-gated), unless ``--export`` names
an existing export. The export is then served by the ONNX engine on the CPU
(:func:`reflex_ros.engine.loader.load_engine`) and driven through
:func:`reflex_ros.sim.policy_rollout.run_episode`: the ``front`` camera at the policy's
96x96 every 2nd 30 Hz control tick (15 Hz, as the sim node publishes), the newest frame and
the current joint positions every K ticks, the chunk's rows executed at 30 Hz through
:meth:`PickTask.step` (the sim node's trajectory semantics), until success or the timeout.

``--delay-ms D`` models latency: each chunk takes over ``ceil(D / 33.3 ms)`` ticks after its
observation while the previous chunk keeps running, and is executed from the row then due
(``--latency-mode skip``, the node's latency compensation) or from its first row
(``--latency-mode stale``: no compensation). ``--node-safety`` also passes every chunk through
the policy node's safety planning (``control.chunking.plan_chunk`` with the so100 limits:
position clamp, 0.1 rad per step rate limit from the observed state).

``--node-loop`` runs the episode through the serving path's own pieces instead
(:func:`reflex_ros.sim.policy_rollout.run_episode_node`): the node's ``plan_chunk`` with
``--latency-compensation-ms L``, the sim node's deferring trajectory executor, its actuation
delay line (``--actuation-delay-ms``) and ``--publish-latency-ms`` from observation to arrival.

Seeds: the committed policy was trained on seeds 0-299; use others (the default starts at 1000).
Prints one line per episode and ``success K/N``; ``--json FILE`` writes everything.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CHECKPOINT = REPO / "demo" / "so101_pick_pi0" / "checkpoint"
CAMERA_KEY = "observation.images.front"
INSTRUCTION = "pick up the cube"


def export_checkpoint(checkpoint: Path, hf_home: Path, output: Path) -> None:
    """``reflex-ros export`` as a user runs it (strict parity); raises SystemExit on failure."""
    exe = Path(sys.executable).with_name("reflex-ros")
    cmd = [str(exe), "export", str(checkpoint), "--output", str(output), "--strict"]
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    print(f"$ HF_HOME={hf_home} {' '.join(cmd[1:])}", flush=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    for line in lines:
        if line.startswith(("max_abs_diff_across_all", "threshold", "passed", "export written")):
            print("  " + line)
    if proc.returncode != 0:
        print("\n".join(lines[-30:]), file=sys.stderr)
        raise SystemExit(f"export failed (exit {proc.returncode})")


def node_safety_filter(control_hz: float):  # noqa: ANN201
    """The policy node's chunk planning (so100 limits) as a rollout ``chunk_filter``: rows
    before ``first`` are kept as they are (never executed), the rest planned as the node
    plans them with ``k = first - 1`` skipped rows."""
    from reflex_ros.control.chunking import SafetyLimits, plan_chunk
    from reflex_ros.control.embodiment import load_embodiment

    emb = load_embodiment("so100")
    limits = SafetyLimits.from_lists(emb.position_lower, emb.position_upper, emb.max_delta_per_step)

    def apply(actions: np.ndarray, state: np.ndarray, first: int) -> np.ndarray:
        k = max(0, first - 1)
        planned = plan_chunk(actions, state=state, obs_stamp_ns=0, control_frequency_hz=control_hz,
                             latency_compensation_ms=k * 1e3 / control_hz, limits=limits)
        return np.concatenate([actions[:k, : state.size], planned.positions])

    return apply


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                   help="LeRobot checkpoint to export and evaluate (default demo/so101_pick_pi0/checkpoint)")
    p.add_argument("--hf-home", type=Path, default=None,
                   help="HF cache holding the checkpoint's tokenizer (default: <checkpoint>/../hf_cache)")
    p.add_argument("--export", type=Path, default=None, help="evaluate this existing export instead")
    p.add_argument("--engine", choices=("onnx", "torch"), default="onnx", help="serving engine (default onnx, CPU)")
    p.add_argument("--episodes", type=int, default=50, help="episodes (default 50)")
    p.add_argument("--seed", type=int, default=1000, help="first seed; episodes use seed..seed+N-1 (default 1000)")
    p.add_argument("--execute-steps", type=int, default=10,
                   help="K: control ticks between policy calls (default 10 = the so100 preset)")
    p.add_argument("--delay-ms", type=float, default=0.0, help="observation-to-actuation delay to model (default 0)")
    p.add_argument("--latency-mode", choices=("skip", "stale"), default="skip",
                   help="late chunks start at the row due (skip: compensated) or at row 1 (stale)")
    p.add_argument("--nfe", type=int, default=None, help="Euler steps (default: the export's)")
    p.add_argument("--timeout-s", type=float, default=10.0, help="episode timeout (default 10 s)")
    p.add_argument("--node-safety", action="store_true", help="apply the node's so100 safety planning to chunks")
    p.add_argument("--node-loop", action="store_true",
                   help="run through plan_chunk + the sim's trajectory executor + actuation delay line")
    p.add_argument("--publish-latency-ms", type=float, default=30.0, help="--node-loop: observation -> arrival")
    p.add_argument("--actuation-delay-ms", type=float, default=0.0, help="--node-loop: the sim's actuation delay")
    p.add_argument("--latency-compensation-ms", type=float, default=0.0, help="--node-loop: the node's L")
    p.add_argument("--no-defer", action="store_true", help="--node-loop: JTC takes over on arrival (Humble/Jazzy)")
    p.add_argument("--camera-size", type=int, default=None,
                   help="render the camera at this side (default: the policy's 96); the engine resizes")
    p.add_argument("--sampling-bounds", type=float, nargs=4, metavar=("X0", "Y0", "X1", "Y1"), default=None,
                   help="cube sampling box in metres (default: the package's 0.2 -0.1 0.4 0.1)")
    p.add_argument("--json", type=Path, default=None, help="write per-episode results and the summary here")
    args = p.parse_args(argv)

    from reflex_ros.engine.loader import load_engine
    from reflex_ros.sim.arm import ArmRenderer
    from reflex_ros.sim.policy_rollout import (
        NodeLoopConfig,
        RolloutConfig,
        engine_policy,
        run_episode,
        run_episode_node,
        success_rate,
    )
    from reflex_ros.sim.task import SAMPLING_BOUNDS, PickTask

    tmp = None
    export = args.export
    if export is None:
        tmp = tempfile.TemporaryDirectory(prefix="demo_policy_export_")
        export = Path(tmp.name) / "export"
        hf_home = args.hf_home or args.checkpoint.resolve().parent / "hf_cache"
        export_checkpoint(args.checkpoint, hf_home, export)

    engine = load_engine(export, engine=args.engine, provider="CPUExecutionProvider" if args.engine == "onnx" else "cpu")
    info = engine.info
    bounds = np.asarray(args.sampling_bounds, float).reshape(2, 2) if args.sampling_bounds else SAMPLING_BOUNDS
    task = PickTask(sampling_bounds=bounds)
    renderer = ArmRenderer(task.model, image_size=args.camera_size or info.image_size, camera="front")
    dt_ms = 1e3 / task.control_hz
    delay_steps = max(0, math.ceil(args.delay_ms / dt_ms - 1e-6))
    config = RolloutConfig(execute_steps=args.execute_steps, delay_steps=delay_steps,
                           latency_mode=args.latency_mode, timeout_s=args.timeout_s)
    chunk_filter = node_safety_filter(task.control_hz) if args.node_safety else None
    node = NodeLoopConfig(execute_steps=args.execute_steps, publish_latency_ms=args.publish_latency_ms,
                          actuation_delay_ms=args.actuation_delay_ms,
                          latency_compensation_ms=args.latency_compensation_ms, defer_future=not args.no_defer,
                          timeout_s=args.timeout_s)
    if args.node_loop:
        loop = (f"node loop: publish latency {node.publish_latency_ms:g} ms, actuation delay "
                f"{node.actuation_delay_ms:g} ms, L {node.latency_compensation_ms:g} ms, "
                f"{'deferring' if node.defer_future else 'take-over-on-arrival'} JTC")
    else:
        loop = (f"delay {args.delay_ms:g} ms = {delay_steps} rows ({config.latency_mode}), node safety "
                f"{'on' if chunk_filter else 'off'}")
    print(f"{info.model_type} {info.engine}/{info.provider}, camera {info.camera_names[0]} {args.camera_size or info.image_size}px at "
          f"15 Hz, control {task.control_hz:g} Hz, K={config.execute_steps}, {loop}, "
          f"cube box x {bounds[:, 0]} y {bounds[:, 1]} m", flush=True)

    results = []
    t0 = time.perf_counter()
    for seed in range(args.seed, args.seed + args.episodes):
        policy = engine_policy(engine, info.camera_names[0], INSTRUCTION, seed, nfe=args.nfe)
        if args.node_loop:
            result = run_episode_node(task, renderer.render, policy, seed, node)
        else:
            result = run_episode(task, renderer.render, policy, seed, config, chunk_filter)
        results.append(result)
        print(result.line(), flush=True)
    wall = time.perf_counter() - t0
    summary = success_rate(results)
    visible = [r for r in results if r.cube_in_view >= 0.25]
    infer = np.concatenate([r.infer_ms for r in results])
    print(f"\n{summary}  [{sum(r.success for r in visible)}/{len(visible)} with >= 25% of the cube in view at "
          f"reset]; inference p50 {np.median(infer):.1f} ms; {wall:.0f} s")
    if args.json:
        doc = {"argv": sys.argv[1:] if argv is None else argv, "summary": summary,
               "successes": sum(r.success for r in results), "episodes": len(results),
               "delay_steps": delay_steps, "config": vars(node) if args.node_loop else vars(config),
               "episodes_detail": [{**vars(r), "infer_ms": [round(x, 2) for x in r.infer_ms]} for r in results]}
        args.json.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    renderer.close()
    engine.close()
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
