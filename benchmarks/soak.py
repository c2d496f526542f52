"""The 10-minute soak (issue 13, "keep it held"): does the node hold its rate and its memory?

Runs the real policy node (its own process, `PolicyNodeProcess`, tiny export, embodiment
so100) at control_frequency_hz 50 x execute_steps 10 (a chunk every 200 ms: 3000 chunks in
10 minutes), fed stamped camera frames + joint states from this process over DDS, and prints:

- the node's RSS (VmRSS, sampled every --sample-s): first / last after warm-up, and the growth
  rate from a least-squares line through the samples (MB/min);
- the chunk period seen by a subscriber here: mean, std, p99 and max, against the target;
- missed cycles: chunks received vs. expected for the duration, and the node's own overrun
  counter (control ticks skipped because a cycle ran long), refused / dropped / stale counts;
- the load average (1/5/15 min) at the end, and the mean 1-min load over the run.

    .venv/bin/python benchmarks/soak.py [--duration-s 600] [--input-rate-hz 50] [--export DIR]

A benchmark, not a test: the numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import array
import os
import sys
import threading
import time

import numpy as np
from node_bench import CAMERA, feed_inputs, tiny_export

NODE = "reflex_soak"


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MB (VmRSS from /proc)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for pid {pid}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration-s", type=float, default=600.0, help="measured time after warm-up")
    parser.add_argument("--warmup-s", type=float, default=15.0)
    parser.add_argument("--input-rate-hz", type=float, default=50.0, help="camera + joint state rate")
    parser.add_argument("--control-frequency-hz", type=float, default=50.0)
    parser.add_argument("--execute-steps", type=int, default=10)
    parser.add_argument("--sample-s", type=float, default=10.0, help="RSS / load sampling period")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--export", default=None, help="export dir (default: a fresh tiny export)")
    args = parser.parse_args(argv)

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("AMENT_PREFIX_PATH", sys.prefix)
    export = tiny_export(args.export, "reflex_soak_", log=None)

    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from rclpy.signals import SignalHandlerOptions
    from reflex_ros.msg import ActionChunk
    from sensor_msgs.msg import Image, JointState

    from reflex_ros.ros.runner import PolicyNodeProcess

    params = {"control_frequency_hz": args.control_frequency_hz, "execute_steps": args.execute_steps,
              "camera_topics": [CAMERA]}
    with PolicyNodeProcess(export, embodiment="so100", node_name=NODE, parameters=params,
                           log=lambda line: None) as node:
        ctx = Context()
        rclpy.init(context=ctx, signal_handler_options=SignalHandlerOptions.NO)
        bench = rclpy.create_node("reflex_soak_driver", context=ctx)
        received: list[int] = []  # receive times (ns, monotonic)
        diags: list[dict[str, str]] = []
        bench.create_subscription(ActionChunk, f"/{NODE}/action_chunk",
                                  lambda msg: received.append(time.monotonic_ns()), 100)

        def on_diag(msg: DiagnosticArray) -> None:
            for status in msg.status:
                if status.name.startswith(NODE):
                    diags.append({kv.key: kv.value for kv in status.values} | {"_message": status.message})

        bench.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
        cam_pub = bench.create_publisher(Image, CAMERA, qos_profile_sensor_data)
        js_pub = bench.create_publisher(JointState, "/joint_states",
                                        QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
        executor = SingleThreadedExecutor(context=ctx)
        executor.add_node(bench)
        spin = threading.Thread(target=executor.spin, daemon=True)
        spin.start()

        pixels = array.array("B", np.random.default_rng(0).integers(
            0, 256, (args.image_size, args.image_size, 3), np.uint8).tobytes())
        stop = threading.Event()

        feeder = threading.Thread(target=feed_inputs, daemon=True, args=(
            bench.get_clock(), js_pub, cam_pub, args.image_size, pixels, args.input_rate_hz, stop))
        feeder.start()
        deadline = time.monotonic() + 120
        while not received and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(args.warmup_s)
        start_diag = dict(diags[-1]) if diags else {}
        first, t0 = len(received), time.monotonic()
        rss: list[tuple[float, float]] = [(0.0, rss_mb(node.pid))]
        loads: list[float] = [os.getloadavg()[0]]
        while (elapsed := time.monotonic() - t0) < args.duration_s:
            time.sleep(min(args.sample_s, args.duration_s - elapsed))
            rss.append((time.monotonic() - t0, rss_mb(node.pid)))
            loads.append(os.getloadavg()[0])
        measured_s = time.monotonic() - t0
        samples = np.array(received[first:], dtype=np.int64)
        n_diag, diag_deadline = len(diags), time.monotonic() + 5.0
        while len(diags) == n_diag and time.monotonic() < diag_deadline:
            time.sleep(0.05)
        end_diag = dict(diags[-1]) if diags else {}
        load_end = os.getloadavg()
        stop.set()
        feeder.join(timeout=5)
        executor.shutdown()
        bench.destroy_node()
        rclpy.try_shutdown(context=ctx)
        spin.join(timeout=5)
        state = node.state()

    if samples.size < 10:
        print(f"only {samples.size} chunks received; node state {state}", file=sys.stderr)
        return 1
    target_ms = 1000.0 * args.execute_steps / args.control_frequency_hz
    periods = np.diff(samples) * 1e-6
    expected = int(measured_s * 1000.0 / target_ms)
    t = np.array([r[0] for r in rss]) / 60.0
    mb = np.array([r[1] for r in rss])
    slope = float(np.polyfit(t, mb, 1)[0]) if t.size >= 2 else float("nan")

    def delta(key: str) -> str:
        try:
            return str(int(end_diag[key]) - int(start_diag.get(key, 0)))
        except (KeyError, ValueError):
            return "n/a"

    print(f"\nsoak: {measured_s / 60:.1f} min after {args.warmup_s:g} s warm-up; node at {args.control_frequency_hz:g} Hz "
          f"x execute_steps {args.execute_steps} (a chunk every {target_ms:g} ms); inputs {args.input_rate_hz:g} Hz "
          f"({args.image_size}px rgb8 + joint states); tiny export, onnxruntime CPU; {os.cpu_count()} CPUs; "
          f"node state at the end: {state}")
    print(f"| {'metric':<34} | {'value':<58} |")
    print(f"|{'-' * 36}|{'-' * 60}|")
    rows = [
        ("node RSS", f"{mb[0]:.1f} MB -> {mb[-1]:.1f} MB ({mb[-1] - mb[0]:+.2f} MB; max {mb.max():.1f} MB)"),
        ("RSS growth (least squares)", f"{slope:+.3f} MB/min over {mb.size} samples every {args.sample_s:g} s"),
        ("chunk period (subscriber side)", f"mean {periods.mean():.2f} ms, std {periods.std():.2f} ms "
                                           f"(target {target_ms:g} ms)"),
        ("chunk period p99 / max", f"{np.percentile(periods, 99):.2f} ms / {periods.max():.2f} ms"),
        ("chunks received / expected", f"{samples.size} / {expected} ({samples.size - expected:+d})"),
        ("missed cycles (node overruns)", f"{delta('overruns')} during the soak"),
        ("refused chunks / dropped inputs", f"{delta('refused_chunks')} / {delta('dropped_messages')}"),
        ("stale / no-observation cycles", f"{delta('stale_observations')} / {delta('no_observation_cycles')}"),
        ("inference p50 / p99 (node)", f"{end_diag.get('inference_p50_ms', 'n/a')} / "
                                       f"{end_diag.get('inference_p99_ms', 'n/a')} ms (last 500 chunks)"),
        ("obs -> publish p50 / p99 (node)", f"{end_diag.get('obs_to_publish_p50_ms', 'n/a')} / "
                                            f"{end_diag.get('obs_to_publish_p99_ms', 'n/a')} ms (last 500 chunks)"),
        ("load average at the end", f"{load_end[0]:.2f} / {load_end[1]:.2f} / {load_end[2]:.2f} (1/5/15 min)"),
        ("mean 1-min load over the soak", f"{float(np.mean(loads)):.2f} (min {min(loads):.2f}, max {max(loads):.2f})"),
        ("diagnostics at the end", end_diag.get("_message", "n/a")),
    ]
    for name, value in rows:
        print(f"| {name:<34} | {value:<58} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
