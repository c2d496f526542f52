#!/usr/bin/env python3
"""Issue 14's table: each chunk strategy on the SO-101 pick task in the MuJoCo sim, seeded.

    .venv/bin/python tools/eval_strategies.py --export /tmp/so101_pi0 --episodes 20 --seed 1000
    .venv/bin/python tools/eval_strategies.py --checkpoint demo/so101_pick_pi0/checkpoint --episodes 20

One row per strategy (replace as before anchoring, replace + anchoring, blend, rtc guided on
the torch engine, rtc inpaint on ONNX, temporal_ensemble at the default execute_steps and at
execute_steps 1 as ACT runs it), every row on the same seeds and noise, through
:func:`reflex_ros.sim.strategy_rollout.run_strategy_episode`: the node's real strategies,
parameters and so100 limits, the one JTC model (deferring, as the demo's sim), the injected
actuation delay, the physics. Columns: p95 boundary jump (position, the worst joint per
replan; and velocity), commanded jerk RMS, tracking RMS (commanded vs measured), success,
and each strategy's CPU cost per chunk beyond replace (guide + plan), plus RTC's added
inference time (the same observations inferred with and without the guide).
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

INSTRUCTION = "pick up the cube"
ROWS = {
    "replace": ("onnx", {"chunk_strategy": "replace", "anchor_to_command": False}),
    "replace+anchor": ("onnx", {"chunk_strategy": "replace"}),
    "blend": ("onnx", {"chunk_strategy": "blend"}),
    "rtc": ("torch", {"chunk_strategy": "rtc", "rtc_mode": "guided"}),
    "rtc-inpaint": ("onnx", {"chunk_strategy": "rtc", "rtc_mode": "inpaint"}),
    "temporal_ensemble": ("onnx", {"chunk_strategy": "temporal_ensemble"}),
    # ACT's way: a new chunk every control period, each point the ensemble of every chunk covering it
    "temporal_ensemble-k1": ("onnx", {"chunk_strategy": "temporal_ensemble", "execute_steps": 1}),
}


def export_checkpoint(checkpoint: Path, output: Path) -> None:
    hf_home = checkpoint.resolve().parent / "hf_cache"
    exe = Path(sys.executable).with_name("reflex-ros")
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([str(exe), "export", str(checkpoint), "--output", str(output), "--strict"], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"export failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def guide_cost(engine, task, renderer, camera_key: str, settings, iters: int) -> tuple[float, float]:
    """p50 inference ms without and with an RTC guide (alternating, same observation and noise)."""
    from reflex_ros.engine.types import ChunkGuide, Observation

    task.reset(0)
    info = engine.info
    obs = Observation(images={camera_key: renderer.render(task.qpos_snapshot())},
                      state=task.joint_positions().astype(np.float32), instruction=INSTRUCTION)
    noise = np.random.default_rng(0).standard_normal((info.chunk_size, info.action_width), dtype=np.float32)
    free = engine.infer(obs, noise=noise).actions
    guide = ChunkGuide(free[:40], delay=7, horizon=17, schedule=settings.rtc_prefix_attention_schedule,
                       max_weight=settings.rtc_max_guidance_weight, mode=settings.rtc_mode)
    plain, steered = [], []
    for _ in range(iters):
        t0 = time.perf_counter()
        engine.infer(obs, noise=noise)
        t1 = time.perf_counter()
        engine.infer(obs, noise=noise, guide=guide)
        t2 = time.perf_counter()
        plain.append((t1 - t0) * 1e3)
        steered.append((t2 - t1) * 1e3)
    return float(np.median(plain)), float(np.median(steered))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", type=Path, default=None, help="an export of the demo policy")
    p.add_argument("--checkpoint", type=Path, default=Path("demo/so101_pick_pi0/checkpoint"),
                   help="exported first when --export is not given")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {list(ROWS)}")
    p.add_argument("--actuation-delay-ms", type=float, default=150.0, help="injected into the arm (default 150)")
    p.add_argument("--publish-ms", type=float, default=40.0,
                   help="control tick -> trajectory arrival (the node's observation-to-publish; default 40)")
    p.add_argument("--latency-ms", type=float, default=None,
                   help="latency_compensation_ms (default: publish + actuation delay, what the calibrator learns)")
    p.add_argument("--no-defer", action="store_true", help="a controller that takes over on arrival (open loop)")
    p.add_argument("--timeout-s", type=float, default=10.0)
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="extra node parameter for every row (YAML value), e.g. blend_window_steps=10")
    p.add_argument("--cost-iters", type=int, default=20, help="inference timings for RTC's added cost")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    import yaml

    from reflex_ros.engine.loader import load_engine
    from reflex_ros.sim.arm import ArmRenderer
    from reflex_ros.sim.strategy_rollout import StrategyConfig, node_settings, pooled, run_strategy_episode
    from reflex_ros.sim.task import PickTask

    tmp = None
    export = args.export
    if export is None:
        tmp = tempfile.TemporaryDirectory(prefix="strategies_export_")
        export = Path(tmp.name) / "export"
        export_checkpoint(args.checkpoint, export)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    extra = {k: yaml.safe_load(v) for k, _, v in (item.partition("=") for item in args.param)}
    latency = args.latency_ms if args.latency_ms is not None else args.publish_ms + args.actuation_delay_ms
    engines = {}
    task = PickTask()
    results: dict[str, dict] = {}
    costs: dict[str, tuple[float, float]] = {}
    t_start = time.perf_counter()
    renderer = None
    for row in rows:
        kind, params = ROWS[row]
        if kind not in engines:
            engines[kind] = load_engine(export, engine=kind, provider="CPUExecutionProvider" if kind == "onnx" else "cpu")
        engine = engines[kind]
        if renderer is None:
            renderer = ArmRenderer(task.model, image_size=engine.info.image_size, camera="front")
        camera = engine.info.camera_names[0]
        settings = node_settings({**params, "latency_compensation_ms": latency, "defer_future_trajectories":
                                  not args.no_defer, **extra})
        config = StrategyConfig(row, params, args.actuation_delay_ms, args.publish_ms, defer=not args.no_defer,
                                open_loop=args.no_defer, timeout_s=args.timeout_s)
        episodes = []
        for seed in range(args.seed, args.seed + args.episodes):
            ep = run_strategy_episode(task, renderer.render, engine, camera, INSTRUCTION, seed, config, settings)
            episodes.append(ep)
            h = ep.handover.summary()
            print(f"{row:15s} seed {seed}: {'success' if ep.success else 'FAIL   '} {ep.chunks:3d} chunks, jump p95 "
                  f"{fmt(h['jump_pos_p95_rad'])} rad, jerk {fmt(h['jerk_rms_rad_s3'], 0)}", flush=True)
        results[row] = pooled(episodes)
        if params["chunk_strategy"] == "rtc":
            costs[row] = guide_cost(engine, task, renderer, camera, settings, args.cost_iters)
    base_plan = results.get("replace", {}).get("plan_ms_p50") or 0.0
    print(f"\nSO-101 pick, {args.episodes} seeded episodes (seeds {args.seed}..{args.seed + args.episodes - 1}), "
          f"actuation delay {args.actuation_delay_ms:g} ms, publish {args.publish_ms:g} ms after the tick, "
          f"latency_compensation_ms {latency:g}, controller {'on arrival, open loop' if args.no_defer else 'deferring'}; "
          f"{time.perf_counter() - t_start:.0f} s\n")
    header = ("| strategy | p95 jump (rad) | p95 vel jump (rad/s) | max jump (rad) | jerk RMS (rad/s^3) | tracking RMS (rad) "
              "| success | + CPU per chunk (ms) | + inference (ms) |")
    print(header)
    print("|" + "---|" * 9)
    for row in rows:
        r = results[row]
        added = (r["plan_ms_p50"] or 0.0) - base_plan
        infer = "-"
        if row in costs:
            plain, steered = costs[row]
            infer = f"{steered - plain:+.1f} ({plain:.1f} -> {steered:.1f}, {ROWS[row][0]})"
        print(f"| {row} | {fmt(r['jump_pos_p95_rad'], 4)} | {fmt(r['jump_vel_p95_rad_s'], 2)} | "
              f"{fmt(r['jump_pos_max_rad'], 3)} | {fmt(r['jerk_rms_rad_s3'], 0)} | {fmt(r['tracking_rms_rad'], 4)} | "
              f"{r['successes']}/{r['episodes']} | {added:+.2f} | {infer} |")
    if args.json:
        args.json.write_text(json.dumps({"argv": sys.argv[1:] if argv is None else argv, "latency_ms": latency,
                                         "results": results, "inference_costs_ms": costs}, indent=1) + "\n")
    if renderer is not None:
        renderer.close()
    for engine in engines.values():
        engine.close()
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
