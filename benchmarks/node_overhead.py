"""What the policy node adds on top of the engine, and how steady its 50 Hz publishing is.

Runs the real node (its own process, `PolicyNodeProcess`) on the tiny export at
control_frequency_hz=50, execute_steps=1 (a chunk every 20 ms), latency_compensation_ms=0
(so a chunk's header.stamp is its observation stamp), fed by stamped cameras + joint states
from this process over DDS. Prints one table:

- obs stamp -> publish (node clock), and engine time (wall around engine.infer);
- obs stamp -> publish - engine: everything that is not the model, *including* the wait
  between the newest observation and the next control tick (up to one input period:
  lower it with --input-rate-hz);
- node overhead: obs stamp -> publish - engine - that wait: DDS in, checks, sync, decode/resize,
  chunk planning (compensation + clamps), message building and publish;
- the same "minus engine" figure measured outside the node (receive time here - stamp -
  ActionChunk.inference_ms), which adds DDS out;
- this process's own cost of publishing the inputs (stamp -> joint state and image published):
  the input stamp is taken before publishing, as a driver's would be, so every row from the
  stamp includes it; it is shown so that the node's share can be told from the publisher's;
- publish period at 50 Hz, seen by the subscriber: mean, std, p99 |period - 20 ms|, max.

    .venv/bin/python benchmarks/node_overhead.py [--duration-s 20] [--input-rate-hz 100] [--export DIR]
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

NODE = "reflex_bench"


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if values.size else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration-s", type=float, default=20.0)
    parser.add_argument("--input-rate-hz", type=float, default=100.0, help="camera + joint state rate")
    parser.add_argument("--control-frequency-hz", type=float, default=50.0)
    parser.add_argument("--image-size", type=int, default=64, help="published image side (model input is 64)")
    parser.add_argument("--export", default=None, help="export dir (default: a fresh tiny export)")
    parser.add_argument("--intra-op-threads", type=int, default=0, help="node parameter intra_op_threads (0 = automatic: 1 on <= 4 cores)")
    args = parser.parse_args(argv)

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("AMENT_PREFIX_PATH", sys.prefix)
    export = tiny_export(args.export, "reflex_bench_")

    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from rclpy.signals import SignalHandlerOptions
    from reflex_ros.msg import ActionChunk
    from sensor_msgs.msg import Image, JointState

    from reflex_ros.control.stamps import stamp_to_ns
    from reflex_ros.ros.runner import PolicyNodeProcess

    params = {"control_frequency_hz": args.control_frequency_hz, "execute_steps": 1,
              "latency_compensation_ms": 0.0, "camera_topics": [CAMERA], "intra_op_threads": args.intra_op_threads}
    with PolicyNodeProcess(export, embodiment="so100", node_name=NODE, parameters=params,
                           log=lambda line: None) as node:
        ctx = Context()
        rclpy.init(context=ctx, signal_handler_options=SignalHandlerOptions.NO)
        bench = rclpy.create_node("reflex_bench_driver", context=ctx)
        received: list[tuple[int, int, float]] = []  # (t_recv_ns, stamp_ns, inference_ms)
        diags: list[dict[str, str]] = []

        def on_chunk(msg: ActionChunk) -> None:
            received.append((bench.get_clock().now().nanoseconds,
                             stamp_to_ns(msg.header.stamp), msg.inference_ms))

        def on_diag(msg: DiagnosticArray) -> None:
            for status in msg.status:
                if status.name.startswith(NODE):
                    diags.append({kv.key: kv.value for kv in status.values})

        bench.create_subscription(ActionChunk, f"/{NODE}/action_chunk", on_chunk, 100)
        bench.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
        cam_pub = bench.create_publisher(Image, CAMERA, qos_profile_sensor_data)
        js_pub = bench.create_publisher(JointState, "/joint_states",
                                        QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
        executor = SingleThreadedExecutor(context=ctx)
        executor.add_node(bench)
        spin = threading.Thread(target=lambda: executor.spin(), daemon=True)
        spin.start()

        pixels = array.array("B", np.random.default_rng(0).integers(
            0, 256, (args.image_size, args.image_size, 3), np.uint8).tobytes())
        stop = threading.Event()
        publish_cost_ms: list[float] = []  # stamp -> both inputs published, in this process

        feeder = threading.Thread(target=feed_inputs, daemon=True, args=(
            bench.get_clock(), js_pub, cam_pub, args.image_size, pixels, args.input_rate_hz, stop, publish_cost_ms))
        feeder.start()
        deadline = time.monotonic() + 60
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
        warmup_end = time.monotonic() + 2.0
        while time.monotonic() < warmup_end:
            time.sleep(0.05)
        first, first_pub = len(received), len(publish_cost_ms)
        time.sleep(args.duration_s)
        n_diag, diag_deadline = len(diags), time.monotonic() + 5.0
        while len(diags) == n_diag and time.monotonic() < diag_deadline:  # one fresh diagnostics message
            time.sleep(0.05)
        stop.set()
        feeder.join(timeout=5)
        samples = received[first:]
        pub_cost = np.array(publish_cost_ms[first_pub:])
        diag = diags[-1] if diags else {}
        executor.shutdown()
        bench.destroy_node()
        rclpy.try_shutdown(context=ctx)
        spin.join(timeout=5)
        node_state = node.state()

    if len(samples) < 10:
        print(f"only {len(samples)} chunks received; node state {node_state}", file=sys.stderr)
        return 1
    t_recv = np.array([s[0] for s in samples], dtype=np.int64)
    stamps = np.array([s[1] for s in samples], dtype=np.int64)
    infer = np.array([s[2] for s in samples])
    ext = (t_recv - stamps) * 1e-6 - infer
    periods = np.diff(t_recv) * 1e-6
    target = 1000.0 / args.control_frequency_hz
    jitter = np.abs(periods - target)

    def d(key: str) -> str:
        return diag.get(key, "n/a")

    rows = [
        ("obs stamp -> publish", d("obs_to_publish_p50_ms"), d("obs_to_publish_p99_ms")),
        ("engine (engine.infer wall time)", d("inference_p50_ms"), d("inference_p99_ms")),
        ("obs stamp -> publish - engine", d("obs_to_publish_minus_engine_p50_ms"),
         d("obs_to_publish_minus_engine_p99_ms")),
        ("  of which: wait for the control tick", d("tick_wait_p50_ms"), d("tick_wait_p99_ms")),
        ("node overhead = the above - tick wait", d("node_overhead_p50_ms"), d("node_overhead_p99_ms")),
        ("  input stamp -> checked, buffered", d("input_latency_p50_ms"), d("input_latency_p99_ms")),
        ("  cycle start -> publish - engine (decode)", d("cycle_overhead_p50_ms"), d("cycle_overhead_p99_ms")),
        ("obs stamp -> received here - inference_ms", f"{_pct(ext, 50):.3f}", f"{_pct(ext, 99):.3f}"),
        ("driver side: stamp -> inputs published", f"{_pct(pub_cost, 50):.3f}", f"{_pct(pub_cost, 99):.3f}"),
    ]
    print(f"\nnode overhead on the tiny policy: {len(samples)} chunks over {args.duration_s:g} s, "
          f"control {args.control_frequency_hz:g} Hz x execute_steps 1, inputs at {args.input_rate_hz:g} Hz "
          f"({args.image_size}px rgb8), {os.cpu_count()} CPUs, intra_op_threads {args.intra_op_threads}")
    print("(rows 1-7 measured in the node per chunk, last 500 chunks; row 8 in this process, adds DDS out;\n"
          " row 9: this process's own publish cost, stamp -> joint state + image published, which rows\n"
          " 1, 3, 5 and 6 include: the input stamp is taken before publishing, as a driver's would be)")
    print(f"| {'metric':<44} | {'p50 ms':>8} | {'p99 ms':>8} |")
    print(f"|{'-' * 46}|{'-' * 10}|{'-' * 10}|")
    for name, p50, p99 in rows:
        print(f"| {name:<44} | {p50:>8} | {p99:>8} |")
    print(f"\npublish period at {args.control_frequency_hz:g} Hz (subscriber side): mean {periods.mean():.3f} ms, "
          f"std {periods.std():.3f} ms, |period - {target:g}| p50 {_pct(jitter, 50):.3f} / p99 {_pct(jitter, 99):.3f} / "
          f"max {jitter.max():.3f} ms; rate {1000.0 / periods.mean():.2f} Hz; node overruns {d('overruns')}, "
          f"dropped {d('dropped_messages')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
