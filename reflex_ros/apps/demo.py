"""`reflex-ros demo`: the whole loop in one command, and the numbers that show it works.

An application on top of the library: the simulated SO-101 arm (``reflex_ros.sim.sim_node``,
a child process, the robot) publishes a camera and joint states; the lifecycle policy node
(the demo's trained pi0, a LeRobot checkpoint exported with its parity gate on first use,
embodiment so100, auto_calibrate on) is started and driven through configure -> activate by
the runner API, exactly as ``reflex-ros run`` does; a monitor node in this process records
the traffic and drives the episodes (``apps/demo_episodes.py``: hold, reset the scene to a
seed, release, watch the sim's success). Then everything is shut down in order (deactivate
holds the arm, cleanup, shutdown, then the sim) and a summary table gives the episodes'
success, and compares what the calibrator learned with what the loop really has.

Top-level imports are stdlib only, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from reflex_ros.ros.process import ChildProcess, stop_on_signals
from reflex_ros.ros.runner import node_topic
from reflex_ros.vocab import (
    ACTION_CHUNK_TOPIC,
    DEFAULT_CAMERA_TOPIC,
    DIAGNOSTICS_TOPIC,
    JOINT_STATES_TOPIC,
    NODE_NAME,
    TRAJECTORY_TOPIC,
)

EMBODIMENT = "so100"
POLICY_NODE = NODE_NAME
SIM_NODE = "/so101_sim"
#: The demo policy: a LeRobot pi0 checkpoint trained in this sim (demo/so101_pick_pi0/README.md),
#: with the tiny tokenizer its preprocessor names in a bundled offline Hugging Face cache.
DEMO_POLICY_DIR = Path(__file__).resolve().parents[2] / "demo" / "so101_pick_pi0"
DEMO_CHECKPOINT = DEMO_POLICY_DIR / "checkpoint"
DEMO_HF_HUB_CACHE = DEMO_POLICY_DIR / "hf_cache" / "hub"
DEFAULT_EXPORT_DIR = "~/.cache/reflex_ros/exports/so101_pick_pi0"
#: written into the export: the checkpoint's weights digest, so a retrained checkpoint re-exports
SOURCE_MARKER = "demo_checkpoint.sha256"
DEFAULT_CACHE = "~/.cache/reflex_ros/demo/calibration.json"
DEFAULT_LOG_DIR = "~/.cache/reflex_ros/demo/logs"
DEFAULT_INSTRUCTION = "pick up the cube"  # what the demonstrations were recorded with
DEFAULT_EPISODES = 3
DEFAULT_EPISODE_TIMEOUT_S = 15.0  # sim seconds; the trained policy's successes take 4-8 s
STARTUP_TIMEOUT_S = 120.0
# The node's latency compensation stamps chunks for when they should run; a controller that
# defers a future-stamped trajectory until its stamp executes them exactly so (ros2_controllers'
# trajectory deferral, ROS 1 JTC). Without it (Humble/Jazzy JTC) each chunk takes over on arrival.
DEMO_SIM_PARAMS = ("defer_future_trajectories:=true",)

DESCRIPTION = """\
Pick up the cube: a MuJoCo SO-101 arm (reflex-ros sim) driven by the lifecycle policy node
serving a pi0 policy trained in this sim (a LeRobot checkpoint, demo/so101_pick_pi0, exported
with its parity gate on first use; embodiment so100, auto_calibrate on) through the
launch-equivalent runner. Runs --episodes seeded episodes (the sim resets the scene to seed
S, S+1, ...; success = the cube lifted above the task's success height and held), with a live
status line, then shuts everything down cleanly and prints a summary: per-episode outcome and
`success K/N`, chunk publish rate vs target, inference and observation-to-publish p50/p95,
the learned latency_compensation_ms vs what the loop really has, commanded-vs-measured
tracking error,
the chunk boundaries (the jump between the old and the new command at every replan, p50/p95/
max and per joint; commanded jerk) and the calibration cache it wrote. Compare strategies
with --policy-param chunk_strategy:=replace|blend|rtc (the default is blend; rtc's exact
guidance is rtc_mode:=guided with engine:=torch) and anchor_to_command:=false (the behaviour
before anchoring).

Every command stays inside the so100 joint limits (the node's safety clamp), and the summary
checks that. Measure what latency compensation buys on a slow robot:
  reflex-ros demo --episodes 20 --actuation-delay-ms 150
  reflex-ros demo --episodes 20 --actuation-delay-ms 150 --policy-param latency_compensation_ms:=0"""

EPILOG = f"""\
defaults:
  policy            {DEMO_CHECKPOINT}
  export            {DEFAULT_EXPORT_DIR} (exported there on first use, parity-checked, ~30 s)
  calibration cache {DEFAULT_CACHE} (kept apart from ~/.reflex: a simulated arm
                    with an injected delay is not your robot)
  logs              {DEFAULT_LOG_DIR}/<time>/{{sim,policy_node}}.log
  ROS discovery     ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST unless set (the demo's topics stay
                    on this machine); ROS_DOMAIN_ID as set in the environment
  trajectories      the sim defers a future-stamped chunk until its stamp (JTC trajectory
                    deferral), which is how the node's latency-compensated stamps are meant to
                    run; --sim-param defer_future_trajectories:=false gives Humble/Jazzy JTC
                    behaviour (each chunk takes over on arrival)

examples:
  reflex-ros demo
  reflex-ros demo --episodes 20 --seed 100 --actuation-delay-ms 150 --record run.mcap --plot run.png
  reflex-ros demo --episodes 0 --duration-s 60      free-running, no resets
exit codes: 0 the loop ran and stayed within limits (whatever the success rate: it is a
measurement), 1 it did not (reason printed), 2 bad input"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="closed loop: simulated SO-101 arm + policy node + auto-calibration, with a summary",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--episodes", type=int, default=DEFAULT_EPISODES, metavar="N",
        help=f"pick episodes to run (default {DEFAULT_EPISODES}); 0 = free-running for --duration-s, no resets",
    )
    parser.add_argument(
        "--seed", type=int, default=0, metavar="S",
        help="seed of the first episode (default 0); episode i uses S+i: the cube's pose and the flow noise",
    )
    parser.add_argument(
        "--episode-timeout-s", type=float, default=DEFAULT_EPISODE_TIMEOUT_S, metavar="T",
        help=f"sim seconds from a reset before the episode counts as failed (default {DEFAULT_EPISODE_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--duration-s",
        "--duration",
        dest="duration_s",
        type=float,
        default=30.0,
        metavar="S",
        help="with --episodes 0: seconds of closed loop after the node is active (default 30)",
    )
    parser.add_argument("--record", metavar="FILE.mcap", default=None,
                        help="record joint states, commanded trajectories, action chunks, the camera, /diagnostics "
                        "and the episodes to an MCAP bag (Foxglove, PlotJuggler, reflex-ros calibrate --bag)")
    parser.add_argument("--plot", metavar="FILE.png", default=None,
                        help="draw commanded vs measured positions per joint, chunk takeovers and episode outcomes")
    parser.add_argument(
        "--actuation-delay-ms",
        type=float,
        default=0.0,
        metavar="D",
        help="bus/servo lag injected into the simulated arm (default 0); the calibrator has to find it",
    )
    parser.add_argument(
        "--export", metavar="DIR", default=None,
        help=f"serve this export instead (default {DEFAULT_EXPORT_DIR}, made from the demo checkpoint)",
    )
    parser.add_argument("--calibration-cache", metavar="PATH", default=None, help=f"default {DEFAULT_CACHE}")
    parser.add_argument(
        "--instruction", default=DEFAULT_INSTRUCTION, help="language instruction for the policy"
    )
    parser.add_argument(
        "--real-time-factor",
        type=float,
        default=1.0,
        metavar="X",
        help="run the loop in sim time at X times real time (the sim publishes /clock, the nodes use "
        "sim time); below 1 gives a loaded machine slack; --duration-s is then sim seconds",
    )
    parser.add_argument(
        "--sim-param",
        action="append",
        default=[],
        metavar="NAME:=VALUE",
        help="extra sim node parameter, repeatable (e.g. open_loop_control:=true); see `reflex-ros sim --help`",
    )
    parser.add_argument(
        "--policy-param",
        action="append",
        default=[],
        metavar="NAME:=VALUE",
        help="extra policy node parameter, repeatable (e.g. execute_steps:=5); an explicit "
        "latency_compensation_ms turns the learning off",
    )
    parser.add_argument("--summary-json", metavar="PATH", default=None, help="also write the summary as JSON")
    parser.add_argument("--log-dir", metavar="DIR", default=None, help=f"default {DEFAULT_LOG_DIR}/<time>")
    parser.add_argument("--verbose", action="store_true", help="stream the node logs to the terminal too")
    parser.set_defaults(func=handle)


class _Console:
    """One status line that updates in place on a terminal (a line every 5 s otherwise), and
    log lines printed above it without tearing."""

    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._lock = threading.Lock()
        self._status = ""
        self._last_plain = 0.0

    def status(self, text: str) -> None:
        with self._lock:
            if self._tty:
                pad = max(0, len(self._status) - len(text))
                self._stream.write("\r" + text + " " * pad)
                self._stream.flush()
                self._status = text
            elif time.monotonic() - self._last_plain >= 5.0:
                self._last_plain = time.monotonic()
                print(text, file=self._stream, flush=True)

    def line(self, text: str) -> None:
        with self._lock:
            if self._tty and self._status:
                self._stream.write("\r" + " " * len(self._status) + "\r")
            print(text, file=self._stream, flush=True)
            if self._tty and self._status:
                self._stream.write(self._status)
                self._stream.flush()

    def end_status(self) -> None:
        with self._lock:
            if self._tty and self._status:
                self._stream.write("\n")
                self._stream.flush()
            self._status = ""


def _checkpoint_digest() -> str:
    import hashlib

    return hashlib.sha256((DEMO_CHECKPOINT / "model.safetensors").read_bytes()).hexdigest()


def ensure_export(export: str | None, console: _Console) -> Path:
    """The export directory to serve. An explicit ``--export`` must hold an export; the default
    is made from the demo checkpoint on first use (and again when the checkpoint changed),
    exactly as a user exports theirs: ``reflex-ros export CHECKPOINT`` with its parity gate.

    Raises ValueError (usage error) for a directory that holds something else.
    """
    if export is not None:
        path = Path(export).expanduser()
        if not (path / "reflex_config.json").is_file():
            raise ValueError(f"{path} is not a reflex_ros export (no reflex_config.json)")
        return path
    path = Path(DEFAULT_EXPORT_DIR).expanduser()
    if not (DEMO_CHECKPOINT / "model.safetensors").is_file():
        raise ValueError(f"the demo checkpoint is missing: {DEMO_CHECKPOINT} (a partial clone?)")
    digest = _checkpoint_digest()
    marker = path / SOURCE_MARKER
    if (path / "reflex_config.json").is_file() and marker.is_file() and marker.read_text().strip() == digest:
        return path
    if path.exists():
        if any(path.iterdir()) and not (path / "reflex_config.json").is_file():
            raise ValueError(f"{path} exists but is not a reflex_ros export (no reflex_config.json)")
        import shutil

        shutil.rmtree(path)  # our own export of an older checkpoint
    console.line(f"[demo] exporting the demo policy {DEMO_CHECKPOINT} to {path} (first run only; parity-checked) ...")
    from reflex_ros.engine.export import export_model

    # The checkpoint's tokenizer lives in the bundled offline cache, as a user's would in theirs.
    previous = os.environ.get("HF_HUB_CACHE")
    os.environ["HF_HUB_CACHE"] = str(DEMO_HF_HUB_CACHE)
    t0 = time.monotonic()
    try:
        report = export_model(preset=None, checkpoint=str(DEMO_CHECKPOINT), output_dir=path, mode="decomposed",
                              strict=True, log=None)
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_CACHE", None)
        else:
            os.environ["HF_HUB_CACHE"] = previous
    marker.write_text(digest + "\n")
    console.line(f"[demo] exported in {time.monotonic() - t0:.1f} s; parity vs our torch model over the full "
                 f"NFE loop: max_abs {report.max_abs_diff_across_all:.2e} (strict gate 1e-5)")
    return path


def export_camera(export_dir: Path) -> tuple[str, int]:
    """(the model camera's name, its image side) from the export: the sim renders at exactly
    that size, as the demonstrations were recorded, so the processor's resize is the identity."""
    import json

    config = json.loads((export_dir / "reflex_config.json").read_text())
    names = config.get("camera_names") or []
    if len(names) != 1:
        raise ValueError(f"{export_dir}: the demo's sim has one camera (front); this export wants {names}")
    return str(names[0]), int(config.get("image_size") or 128)


def sim_process(delay_ms: float, log_path: Path, env: dict[str, str], params: list[str] = ()) -> ChildProcess:
    """`python -m reflex_ros.sim.sim_node` as a child in its own session (a terminal's Ctrl-C
    reaches only the demo, which then stops things in order), logging to ``log_path``."""
    cmd = [
        sys.executable, "-m", "reflex_ros.sim.sim_node", "--ros-args",
        "-p", f"actuation_delay_ms:={float(delay_ms)!r}",
        "-p", f"trajectory_topic:={node_topic(TRAJECTORY_TOPIC, POLICY_NODE)}",
    ]  # fmt: skip
    for param in params:
        cmd += ["-p", param]
    return ChildProcess(cmd, env=env, log_path=log_path).start()


def _wait(condition, timeout_s: float, stop: threading.Event, alive) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if stop.is_set() or not alive() or time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _diag_num(diag: dict[str, str], key: str, digits: int = 1) -> str:
    try:
        return f"{float(diag[key]):.{digits}f}"
    except (KeyError, ValueError):
        return "n/a"


def _status_text(label: str, monitor: Any, target_hz: float, cold_ms: float) -> str:
    """``[label]`` and the loop's numbers: one line, short enough not to wrap (it is redrawn in place)."""
    _, _, n_chunks = monitor.counts()
    diag = monitor.diagnostics()
    chunk = monitor.latest_chunk()
    comp = f"{cold_ms:.0f} -> {chunk.latency_compensation_ms:.0f}" if chunk else f"{cold_ms:.0f}"
    calib = diag.get("calibration_state", "").split(";")[-1].strip() or "?"
    return (
        f"[{label}] {n_chunks} chunks, "
        f"{_diag_num(diag, 'publish_rate_hz', 2)}/{target_hz:.2f} Hz | inference p50 "
        f"{_diag_num(diag, 'inference_p50_ms')} ms | obs->pub p95 {_diag_num(diag, 'obs_to_publish_p95_ms', 0)} ms"
        f" | latency comp {comp} ms ({calib})"
    )


def _parse_params(items: list[str]) -> dict[str, Any]:
    """``NAME:=VALUE`` strings -> {name: value}, values read as YAML (as ``-p`` does)."""
    import yaml

    params: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition(":=")
        if not sep or not name:
            raise ValueError(f"--policy-param {item!r}: expected NAME:=VALUE")
        params[name] = yaml.safe_load(raw)
    return params


def _cache_entry(cache_path: Path, model_hash: str | None) -> dict[str, Any] | None:
    from reflex_ros.calibration.cache import entry_key, read_cache_file

    result = read_cache_file(cache_path)
    if result.status != "ok" or not result.document or not model_hash:
        return None
    return result.document.get("entries", {}).get(entry_key(EMBODIMENT, model_hash))


def _run_episodes(args: argparse.Namespace, driver: Any, monitor: Any, console: _Console, stop: threading.Event,
                  alive: Any, target_hz: float, cold_ms: float) -> str | None:
    """The episodes, one line each; returns a failure reason (not a failed episode: a service
    or process problem), or None."""
    from reflex_ros.apps.demo_episodes import EpisodeError, format_result

    for i in range(args.episodes):
        seed = args.seed + i

        def status(t_s: float, timeout_s: float, i: int = i, seed: int = seed) -> None:
            console.status(_status_text(f"episode {i + 1}/{args.episodes} seed {seed}: {t_s:4.1f}/{timeout_s:g} s",
                                        monitor, target_hz, cold_ms))
        try:
            result = driver.run(i, seed, args.episode_timeout_s, stop, alive, on_status=status)
        except EpisodeError as exc:
            return None if stop.is_set() else f"episode {i + 1} (seed {seed}): {exc}"
        if result is None:
            return None
        console.line(f"[demo] {format_result(result)}")
    return None


def handle(args: argparse.Namespace) -> int:
    console = _Console()
    if args.duration_s <= 0:
        print("reflex-ros demo: --duration-s must be > 0", file=sys.stderr)
        return 2
    if args.episodes < 0 or args.seed < 0 or args.episode_timeout_s <= 0:
        print("reflex-ros demo: --episodes and --seed must be >= 0, --episode-timeout-s > 0", file=sys.stderr)
        return 2
    for flag, value, suffix in (("--record", args.record, ".mcap"), ("--plot", args.plot, ".png")):
        if value is not None and not value.endswith(suffix):
            print(f"reflex-ros demo: {flag} {value}: the file name must end in {suffix}", file=sys.stderr)
            return 2
    if args.record is not None and Path(args.record).expanduser().exists():
        print(f"reflex-ros demo: --record {args.record}: exists; choose a new file name", file=sys.stderr)
        return 2
    if args.actuation_delay_ms < 0:
        print("reflex-ros demo: --actuation-delay-ms must be >= 0", file=sys.stderr)
        return 2
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("MUJOCO_GL", "egl")

    from reflex_ros.engine.types import ReflexError

    try:
        export_dir = ensure_export(args.export, console)
    except ValueError as exc:
        print(f"reflex-ros demo: {exc}", file=sys.stderr)
        return 2
    except ReflexError as exc:
        print(f"reflex-ros demo: export failed: {exc}", file=sys.stderr)
        return 1
    cache_path = Path(args.calibration_cache or DEFAULT_CACHE).expanduser()
    log_dir = Path(args.log_dir or Path(DEFAULT_LOG_DIR) / time.strftime("%Y%m%d-%H%M%S")).expanduser()
    log_dir.mkdir(parents=True, exist_ok=True)

    with stop_on_signals() as stop:
        return _run(args, export_dir, cache_path, log_dir, console, stop)


def _run(
    args: argparse.Namespace,
    export_dir: Path,
    cache_path: Path,
    log_dir: Path,
    console: _Console,
    stop: threading.Event,
) -> int:
    import numpy as np

    from reflex_ros.apps import loop_report
    from reflex_ros.apps.demo_monitor import LoopMonitor
    from reflex_ros.control.embodiment import load_embodiment
    from reflex_ros.ros.runner import NodeProcessError, PolicyNodeProcess, ros_environment

    emb = load_embodiment(EMBODIMENT)
    console.line(
        f"[demo] export {export_dir} | embodiment {EMBODIMENT} | actuation delay {args.actuation_delay_ms:g} ms | "
        f"calibration cache {cache_path} | logs {log_dir}"
    )
    sim_time = args.real_time_factor != 1.0
    try:
        camera_name, image_size = export_camera(export_dir)
    except ValueError as exc:
        console.line(f"reflex-ros demo: {exc}")
        return 2
    sim_params = [*DEMO_SIM_PARAMS, f"image_size:={image_size}"]
    node_params: dict[str, Any] = {"calibration_cache": str(cache_path), "instruction": args.instruction,
                                   "camera_topics": [DEFAULT_CAMERA_TOPIC], "camera_names": [camera_name]}
    try:
        node_params.update(_parse_params(args.policy_param))
        # the node plans chunk boundaries for the controller it drives: the sim's takeover rule
        sim_given = _parse_params([p for p in sim_params + args.sim_param
                                   if p.startswith(("defer_future_trajectories:=", "ignore_trajectory_stamps:="))])
        # a driver that ignores stamps starts every chunk on arrival: no deferral to plan for
        defer = bool(sim_given.get("defer_future_trajectories", False)) and not sim_given.get(
            "ignore_trajectory_stamps", False)
        node_params.setdefault("defer_future_trajectories", defer)
    except ValueError as exc:
        console.line(f"reflex-ros demo: {exc}")
        return 2
    control_hz = float(node_params.get("control_frequency_hz", emb.control_frequency_hz))
    execute_steps = int(node_params.get("execute_steps", emb.execute_steps))
    target_hz = control_hz / execute_steps
    if sim_time:
        sim_params += ["publish_clock:=true", f"real_time_factor:={float(args.real_time_factor)!r}"]
        node_params["use_sim_time"] = True
    monitor = LoopMonitor(emb.joint_names, policy_node=f"/{POLICY_NODE}", use_sim_time=sim_time,
                          episode_topic=f"{SIM_NODE}/episode")
    recorder = None
    if args.record:
        from reflex_ros.apps.demo_record import McapRecorder

        recorder = McapRecorder(monitor.node, Path(args.record).expanduser(), [
            (JOINT_STATES_TOPIC, "sensor_msgs/msg/JointState"),
            (node_topic(TRAJECTORY_TOPIC, POLICY_NODE), "trajectory_msgs/msg/JointTrajectory"),
            (node_topic(ACTION_CHUNK_TOPIC, POLICY_NODE), "reflex_ros/msg/ActionChunk"),
            (DEFAULT_CAMERA_TOPIC, "sensor_msgs/msg/Image"),
            (DIAGNOSTICS_TOPIC, "diagnostic_msgs/msg/DiagnosticArray"),
            (f"{SIM_NODE}/episode", "reflex_ros/msg/EpisodeStatus"),
        ])
    episodes = None
    if args.episodes:
        from reflex_ros.apps.demo_episodes import EpisodeDriver

        episodes = EpisodeDriver(monitor, policy_node=f"/{POLICY_NODE}", sim_node=SIM_NODE)
    sim = sim_process(args.actuation_delay_ms, log_dir / "sim.log", ros_environment(), sim_params + args.sim_param)
    node_log = open(log_dir / "policy_node.log", "w")  # noqa: SIM115 - closed below
    failure: str | None = None
    ran_s = 0.0

    def node_line(line: str) -> None:
        node_log.write(line + "\n")
        node_log.flush()
        if args.verbose:
            console.line("  node | " + line)
        elif "[auto-calibrate]" in line or "ERROR" in line or "FATAL" in line:
            console.line("  node | " + line.split("]: ", 1)[-1])  # drop the rclpy prefix

    wall_t0 = time.monotonic()
    try:
        t0 = time.monotonic()
        if not _wait(lambda: monitor.counts()[0] >= 10 and monitor.counts()[1] >= 1, STARTUP_TIMEOUT_S, stop,
                     lambda: sim.alive):  # fmt: skip
            if stop.is_set():
                return 1
            failure = "the simulated arm did not come up:\n" + sim.tail()
        else:
            console.line(f"[demo] sim up in {time.monotonic() - t0:.1f} s (joint states + camera flowing)")
        if failure is None and not stop.is_set():
            t1 = time.monotonic()
            node = PolicyNodeProcess(
                export_dir,
                embodiment=EMBODIMENT,
                auto_calibrate=True,
                node_name=POLICY_NODE,
                parameters=node_params,
                log=node_line,
            )
            try:
                with node:
                    console.line(f"[demo] policy node configured and active in {time.monotonic() - t1:.1f} s")
                    start = monitor.now_s()
                    alive = lambda: node.alive and sim.alive  # noqa: E731
                    if episodes is not None:
                        failure = _run_episodes(args, episodes, monitor, console, stop, alive, target_hz,
                                                emb.latency_compensation_ms)
                        ran_s = monitor.now_s() - start
                    while episodes is None and not stop.is_set():
                        ran_s = monitor.now_s() - start
                        if ran_s >= args.duration_s:
                            break
                        if not alive():
                            break
                        console.status(_status_text(f"{ran_s:3.0f}/{args.duration_s:.0f} s", monitor, target_hz,
                                                    emb.latency_compensation_ms))  # fmt: skip
                        stop.wait(min(1.0, max(0.05, args.duration_s - ran_s)))
                    if failure is None and not stop.is_set() and not alive():
                        failure = "the policy node exited" if not node.alive else "the sim exited:\n" + sim.tail()
                    console.end_status()
                    console.line("[demo] stopping: deactivate (hold) -> cleanup -> shutdown, then the sim")
            except NodeProcessError as exc:
                failure = f"policy node: {exc}"
        time.sleep(0.5)  # let the hold trajectory and last messages reach the monitor
    finally:
        console.end_status()
        sim_code = sim.stop()  # SIGTERM: the sim stops its threads, then rclpy, and prints its stats
        recording = monitor.snapshot()
        bag = None
        if recorder is not None:
            try:
                bag = recorder.close()
            except Exception as exc:  # noqa: BLE001 - the run's numbers still count
                console.line(f"[demo] --record failed: {exc}")
        monitor.close()
        node_log.close()
    results = list(episodes.results) if episodes is not None else []

    model_hash = recording.model_hash
    summary = loop_report.summarize(
        recording,
        lower=np.asarray(emb.position_lower),
        upper=np.asarray(emb.position_upper),
        control_frequency_hz=control_hz,
        execute_steps=execute_steps,
        cold_start_latency_ms=emb.latency_compensation_ms,
        injected_delay_ms=args.actuation_delay_ms,
        duration_s=ran_s,
        cache_path=cache_path,
        cache_entry=_cache_entry(cache_path, model_hash),
        real_time_factor=args.real_time_factor,
        defer_future_trajectories=defer,
        windows=[(r.release_ns, r.end_ns) for r in results] or None,
    )
    if episodes is not None:
        from reflex_ros.apps.demo_episodes import success_line

        summary["episodes"] = [r.as_dict() for r in results]
        summary["episodes_requested"] = args.episodes
        summary["success"] = success_line(results)
        summary["successes"] = sum(r.success for r in results)
    summary["sim_exit_code"] = sim_code
    summary["wall_s"] = time.monotonic() - wall_t0
    if failure is None and stop.is_set():
        console.line(f"[demo] interrupted after {ran_s:.0f} s")
    if failure is None and summary["chunks"] == 0:
        failure = "no action chunks were published (see the policy node log)"
    if failure is None and summary["points_outside"]:
        failure = f"{summary['points_outside']} published points outside the {EMBODIMENT} limits"
    summary["failure"] = failure
    console.line("")
    console.line(loop_report.format_table(summary))
    console.line(f"  logs: {log_dir}")
    if bag is not None:
        counts = ", ".join(f"{topic} {n}" for topic, n in recorder.counts.items())
        console.line(f"  recorded: {bag} ({counts})")
        for topic, error in recorder.errors.items():
            console.line(f"  not recorded: some {topic} messages ({error})")
    if args.plot:
        try:
            from reflex_ros.apps.demo_plot import plot_run

            title = (f"reflex-ros demo: {summary.get('success', 'free-running')}, actuation delay "
                     f"{args.actuation_delay_ms:g} ms, latency_compensation_ms {summary.get('learned_latency_ms') or 0:.1f}")
            console.line(f"  plot: {plot_run(recording, results, Path(args.plot).expanduser(), title)}")
        except Exception as exc:  # noqa: BLE001 - a plot is a view, the run's numbers still count
            console.line(f"[demo] --plot failed: {exc}")
    if args.summary_json:
        loop_report.write_json(summary, Path(args.summary_json).expanduser())
    if failure is not None:
        print(f"reflex-ros demo: FAILED: {failure}", file=sys.stderr)
        return 1
    return 0
