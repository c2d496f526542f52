"""``reflex-ros calibrate``: calibrate this host from a recorded ROS 2 bag, robot not needed.

The bag's camera frames and joint states are synced into the observations the node would
have inferred on and replayed through the engine *on this machine*, which gives the real
inference distribution on real inputs. When the bag also holds commanded trajectories
(the node's ``~/joint_trajectory`` or any JointTrajectory topic), the actuation lag is
estimated from them against the joint states, and latency_compensation_ms is learned as
p95(observation-to-publish) + actuation lag, where observation-to-publish comes from the
recorded ``~/action_chunk`` messages when present (else from this host's inference p95).
The entry is written with ``"source": "bag:<file name>"``.

Exit codes: 0 written, 1 the cache could not be written, 2 bad input (a bag without the
needed topics lists the topics it has).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reflex_ros.vocab import DEFAULT_CALIBRATION_CACHE, ENGINES, ONNX

MIN_CHUNK_SAMPLES = 10


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="calibrate from a ROS 2 bag (sqlite3 or MCAP): inference timing + actuation lag",
        description="Replay a recorded bag's observations through the engine on this host, estimate the "
                    "actuation lag from commanded trajectories vs joint states, and write the calibration "
                    "cache entry for EMBODIMENT::MODEL_HASH.",
    )
    parser.add_argument("--bag", required=True, metavar="PATH", help="bag directory, or its .mcap / .db3 file")
    parser.add_argument("--export", required=True, metavar="DIR", help="export directory (reflex-ros export)")
    parser.add_argument("--embodiment", required=True, metavar="NAME", help="embodiment preset name or yaml path")
    parser.add_argument("--camera-topics", nargs="+", default=None, metavar="TOPIC",
                        help="camera topics (sensor_msgs/Image or CompressedImage, JPEG/PNG) in the export's camera order "
                             "(default: auto-detect)")
    parser.add_argument("--joint-states-topic", default=None, metavar="TOPIC",
                        help="sensor_msgs/JointState topic (default: auto-detect, /joint_states preferred)")
    parser.add_argument("--trajectory-topic", default=None, metavar="TOPIC",
                        help="trajectory_msgs/JointTrajectory topic (default: the one ending in /joint_trajectory)")
    parser.add_argument("--calibration-cache", default=None, metavar="PATH",
                        help=f"cache file (default {DEFAULT_CALIBRATION_CACHE})")
    parser.add_argument("--iters", type=int, default=100, metavar="N", help="timed iterations (default 100)")
    parser.add_argument("--warmup-iters", type=int, default=10, metavar="N", help="untimed warm-up iterations")
    parser.add_argument("--instruction", default="calibration",
                        help="instruction when the bag has no ~/instruction topic")
    parser.add_argument("--sync-slop-ms", type=float, default=25.0, help="approximate-time sync window (ms)")
    parser.add_argument("--max-lag-ms", type=float, default=300.0, help="longest actuation lag searched (ms)")
    parser.add_argument("--engine", choices=ENGINES, default=ONNX, help="runtime to measure")
    parser.add_argument("--provider", default=None, help="execution provider / device (default: best available)")
    parser.set_defaults(func=run_calibrate)


def _fail(message: str, code: int = 2) -> int:
    print(f"reflex-ros calibrate: {message}", file=sys.stderr, flush=True)
    return code


def run_calibrate(args: argparse.Namespace) -> int:
    import numpy as np

    from reflex_ros.calibration.actuation_lag import estimate_actuation_lag_ms_over_holds
    from reflex_ros.calibration.cache import CalibrationCache
    from reflex_ros.calibration.measure import measure_engine
    from reflex_ros.calibration.session import CalibrationSession
    from reflex_ros.control.embodiment import load_embodiment
    from reflex_ros.control.jtc import commanded_series
    from reflex_ros.engine.bundle import model_hash
    from reflex_ros.engine.loader import load_engine
    from reflex_ros.engine.types import ReflexError
    from reflex_ros.replay.bag_reader import read_bag

    if args.iters < 1 or args.warmup_iters < 0:
        return _fail(f"--iters must be >= 1 and --warmup-iters >= 0, got {args.iters}, {args.warmup_iters}")
    bag_path = Path(args.bag).expanduser()
    try:
        embodiment = load_embodiment(args.embodiment)
        engine = load_engine(args.export, engine=args.engine, provider=args.provider)
    except ReflexError as exc:
        return _fail(str(exc))
    try:
        info = engine.info
        if len(embodiment.joint_names) > info.max_state_dim:
            return _fail(f"embodiment {embodiment.name} has {len(embodiment.joint_names)} joints but the export's "
                         f"max_state_dim is {info.max_state_dim}")
        try:
            data = read_bag(bag_path, joint_names=embodiment.joint_names,
                            num_cameras=info.num_cameras, instruction=args.instruction,
                            camera_topics=args.camera_topics, joint_states_topic=args.joint_states_topic,
                            trajectory_topic=args.trajectory_topic, slop_ms=args.sync_slop_ms)
        except ReflexError as exc:
            return _fail(str(exc))
        topics = data.topics
        print(f"bag: {bag_path} ({data.duration_s:.1f} s)")
        print(f"  cameras: {', '.join(topics.camera_topics)} ({data.n_frames} frames on the first)")
        print(f"  joint states: {topics.joint_states_topic} ({data.joint_t_ns.size} messages)")
        print(f"  trajectory: {topics.trajectory_topic or 'none'} ({len(data.trajectories)} trajectories)")
        if topics.action_chunk_topic:
            print(f"  action chunks: {topics.action_chunk_topic} ({len(data.obs_to_publish_ms)} messages)")
        rejected = f", {data.n_rejected} messages rejected (first: {data.first_rejection})" if data.n_rejected else ""
        print(f"observations: {len(data.observations)} rebuilt from synced frames{rejected}")

        measurement = measure_engine(engine, data.observations, None, args.warmup_iters, args.iters)
        print(f"inference on this host ({info.engine} {info.provider} {info.dtype}, nfe={measurement.nfe}, "
              f"{args.iters} timed over {len(data.observations)} recorded observations): median "
              f"{measurement.median_ms:.2f} ms, p99 {measurement.p99_ms:.2f} ms, expert step "
              f"{measurement.expert_step_ms:.3f} ms, prefix {measurement.prefix_ms:.2f} ms, "
              f"{measurement.n_outliers_dropped} outliers dropped, quality {measurement.quality_score:.2f}")

        lag_ms = None
        if data.trajectories and data.joint_t_ns.size:
            cmd_t, cmd_pos = commanded_series(data.trajectories)
            commanded = np.all(np.isfinite(cmd_pos), axis=0) if cmd_pos.size else np.zeros(0, dtype=bool)
            if commanded.any():
                # split at holds: a recording of several episodes (or stops) is timed per stretch
                lag_ms = estimate_actuation_lag_ms_over_holds(data.trajectories, data.joint_t_ns, data.joint_pos,
                                                              max_lag_ms=args.max_lag_ms, columns=commanded)
            if lag_ms is None:
                print(f"actuation lag: not estimated (not enough commanded motion within {args.max_lag_ms:g} ms "
                      "of lag to tell)")
            else:
                print(f"actuation lag: {lag_ms:.1f} ms (commanded trajectories vs measured joint states)")
        else:
            print("actuation lag: not estimated (the bag has no JointTrajectory topic; record the node's "
                  "~/joint_trajectory to learn it)")

        learned = parts = None
        if lag_ms is not None:
            if len(data.obs_to_publish_ms) >= MIN_CHUNK_SAMPLES:
                o2p = float(np.percentile(data.obs_to_publish_ms, 95))
                o2p_from = f"p95 of {len(data.obs_to_publish_ms)} recorded action chunks"
            else:
                o2p = float(np.percentile(measurement.samples_ms, 95))
                o2p_from = "p95 of this host's inference (no ~/action_chunk in the bag)"
            learned = o2p + lag_ms
            parts = (o2p, lag_ms)
            print(f"latency_compensation_ms: {learned:.1f} = {o2p:.1f} observation-to-publish ({o2p_from}) "
                  f"+ {lag_ms:.1f} actuation lag")
        else:
            print(f"latency_compensation_ms: {embodiment.latency_compensation_ms:.1f} (embodiment cold start; "
                  "the node learns it live)")

        lines: list[str] = []
        session = CalibrationSession(args.calibration_cache, embodiment, model_hash(args.export), {}, False,
                                     lines.append, args.warmup_iters, args.iters)
        resolution = session.calibrate_from_measurement(
            engine, measurement, control_frequency_hz=embodiment.control_frequency_hz,
            execute_steps=embodiment.execute_steps, source=f"bag:{bag_path.name}", learned_latency_ms=learned,
            latency_parts=parts)
        for line in lines:  # warnings (NFE fallback, write failure, foreign entries dropped)
            if not line.startswith(("[auto-calibrate] measured in", "[auto-calibrate] wrote")):
                print(line)
        written = CalibrationCache(args.calibration_cache).load()
        entry = written.document["entries"].get(resolution.key) if written.document else None
        if entry is None or entry.get("source") != f"bag:{bag_path.name}":
            return _fail(f"could not write {resolution.key} to {session.cache.path}", code=1)
        print(f"wrote {resolution.key} to {session.cache.path}: nfe={entry['nfe']} chunk_size={entry['chunk_size']} "
              f"latency_compensation_ms={entry['latency_compensation_ms']:.1f} ({entry['latency_source']}) "
              f"provider={entry['provider']} variant={entry['variant']} source={entry['source']}"
              + (f" (obs_to_publish_p95_ms={entry['obs_to_publish_p95_ms']:.1f} + actuation_lag_ms="
                 f"{entry['actuation_lag_ms']:.1f})" if parts is not None else ""))
        return 0
    finally:
        engine.close()
