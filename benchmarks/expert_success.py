"""Success rate of the scripted pick expert: the ceiling a policy trained on its demos can reach.

Runs :func:`reflex_ros.sim.expert.run_expert` on seeded episodes of the SO-101 pick task
(physics only, no rendering) and prints one row per episode: the cube's sampled position, the
approach tilt the expert chose, the IK residual, success (cube centre > 0.1 m above its reset
height with the gripper site within 5 cm, held 0.5 s: :mod:`reflex_ros.sim.task`), when success
was reached, the episode length, and how much of the cube the ``front`` camera sees at reset
(the only camera a policy gets; the far edge of the package's sampling box is below its image).

    .venv/bin/python benchmarks/expert_success.py [--episodes 50] [--seed 0] [--control-hz 30]

Exit status 0 always (a benchmark, not a test); the last line is ``success K/N (rate)``.
"""

from __future__ import annotations

import argparse
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=50, help="number of episodes (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="first seed; episodes use seed..seed+N-1 (default 0)")
    parser.add_argument("--control-hz", type=float, default=None, help="control rate (default: task.CONTROL_HZ)")
    parser.add_argument(
        "--no-jaw-pads", action="store_true", help="leave the fingertip pads inert (the bare scene, for comparison)"
    )
    args = parser.parse_args(argv)

    import numpy as np

    from reflex_ros.sim.expert import PHASES, PickExpert
    from reflex_ros.sim.task import CONTROL_HZ, PickTask, cube_view_fraction

    task = PickTask(control_hz=args.control_hz or CONTROL_HZ, jaw_pads=not args.no_jaw_pads)
    expert = PickExpert(task)
    print(
        f"SO-101 pick expert: {args.episodes} episodes, seeds {args.seed}..{args.seed + args.episodes - 1}, "
        f"control {task.control_hz:g} Hz, jaw pads {'off' if args.no_jaw_pads else 'on'}, "
        f"cube sampled in x {task.sampling_bounds[:, 0]} y {task.sampling_bounds[:, 1]} m"
    )
    print(f"{'seed':>4} {'cube x':>7} {'cube y':>7} {'tilt':>5} {'ik mm':>6} {'ok':>3} {'t_success':>9} "
          f"{'steps':>5} {'len s':>5} {'in view':>7} {'end phase / cube z':>20}")
    wall0 = time.perf_counter()
    successes, lengths, view = [], [], []
    for seed in range(args.seed, args.seed + args.episodes):
        task.reset(seed)
        in_view = cube_view_fraction(task.model, task.data)
        plan = expert.plan()
        t_success = None
        for target in plan.targets:
            info = task.step(target)
            if info.success and t_success is None:
                t_success = info.time_s
        ok = task.success
        successes.append(ok)
        lengths.append(len(plan))
        view.append(in_view)
        tilt = np.degrees(np.arccos(-plan.approach_dir[2]))
        print(
            f"{seed:>4} {plan.cube_position[0]:>7.3f} {plan.cube_position[1]:>7.3f} {tilt:>5.1f} "
            f"{plan.ik_error_m * 1e3:>6.1f} {'yes' if ok else 'NO':>3} "
            f"{(f'{t_success:.2f} s' if t_success is not None else '-'):>9} {len(plan):>5} "
            f"{len(plan) / task.control_hz:>5.2f} {in_view:>7.0%} "
            f"{PHASES[plan.phases[-1]]:>12} {task.cube_position()[2]:.3f}"
        )
    wall = time.perf_counter() - wall0
    k, n = int(sum(successes)), len(successes)
    view_arr = np.asarray(view)
    print(
        f"episode length {np.mean(lengths):.0f} steps = {np.mean(lengths) / task.control_hz:.2f} s of sim time; "
        f"wall {wall:.1f} s ({wall / max(n, 1) * 1e3:.0f} ms/episode)"
    )
    print(
        f"cube in the front camera's view at reset: fully {int((view_arr == 1).sum())}, "
        f"partly {int(((view_arr > 0) & (view_arr < 1)).sum())} (under 25%: {int((view_arr < 0.25).sum())}), "
        f"not at all {int((view_arr == 0).sum())}"
    )
    failed = [s for s, ok in zip(range(args.seed, args.seed + n), successes, strict=True) if not ok]
    if failed:
        print(f"failed seeds: {failed}")
    print(f"success {k}/{n} ({k / max(n, 1):.0%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
