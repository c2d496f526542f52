"""CPU the whole policy node uses beyond inference, with real camera-sized inputs.

Runs the real node (its own process, `PolicyNodeProcess`, the Fast DDS profile applied as
`reflex-ros run` does) on a tiny 2-camera export at ``--control-frequency-hz`` with
execute_steps=1 (an inference and a published chunk every control period), fed from this
process by two 640x480 cameras at 30 Hz (JPEG CompressedImage by default, or raw rgb8) and a
joint state at 100 Hz. Over ``--duration-s`` it reads the node process's CPU time from
/proc (user + system, all threads) and subtracts the engine's CPU time: the chunks published
in the window (one engine.infer each) times the CPU one engine.infer takes on the same two
640x480 frames (the same export, intra_op_threads 1, so the call runs on the calling thread;
measured afterwards in this process with ``time.thread_time``, which a loaded machine's
preemption does not inflate, unlike the wall time in ActionChunk.inference_ms). The engine's
time includes its own resize of the frames to the model's input.

    beyond inference = (node CPU - chunks x CPU per engine.infer) / window, in % of one core

    .venv/bin/python benchmarks/node_cpu.py [--duration-s 30] [--camera jpeg|raw] [--control-frequency-hz 50]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
from node_bench import JOINTS, tiny_export

NODE = "reflex_cpu_bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads (/proc/<pid>/stat fields 14, 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def frame(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:480, 0:640]
    base = np.stack([(x + seed) % 256, y % 256, ((x + y) // 2) % 256], axis=-1)
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


def engine_cpu_ms(export: Path, images: list[np.ndarray], calls: int = 200) -> float:
    """Median CPU ms of one engine.infer on ``images``, as the node loads the engine."""
    from reflex_ros.engine.loader import load_engine
    from reflex_ros.engine.types import Observation

    engine = load_engine(export, engine="onnx", intra_op_threads=1)
    try:
        obs = Observation(images=images, state=np.zeros(6, np.float32), instruction="pick", stamp_ns=0)
        for _ in range(20):
            engine.infer(obs)
        samples = []
        for _ in range(calls):
            t = time.thread_time()
            engine.infer(obs)
            samples.append(time.thread_time() - t)
        return float(np.median(samples) * 1e3)
    finally:
        engine.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration-s", type=float, default=30.0)
    parser.add_argument("--camera", choices=("jpeg", "raw"), default="jpeg")
    parser.add_argument("--camera-rate-hz", type=float, default=30.0)
    parser.add_argument("--joint-rate-hz", type=float, default=100.0)
    parser.add_argument("--control-frequency-hz", type=float, default=50.0)
    parser.add_argument("--export", default=None, help="a 2-camera export (default: a fresh tiny one)")
    args = parser.parse_args(argv)

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("AMENT_PREFIX_PATH", sys.prefix)
    from reflex_ros.ros.dds import dds_environment

    os.environ.update(dds_environment(os.environ))  # this process publishes the frames: same profile
    export = tiny_export(args.export, "reflex_cpu_", name="tiny2", num_cameras=2)

    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from rclpy.signals import SignalHandlerOptions
    from reflex_ros.msg import ActionChunk
    from sensor_msgs.msg import CompressedImage, Image, JointState

    from reflex_ros.control.inputs.compressed import encode_image, image_transport_format
    from reflex_ros.ros.messages import time_msg
    from reflex_ros.ros.runner import PolicyNodeProcess

    suffix = "/compressed" if args.camera == "jpeg" else ""
    cameras = [f"/bench/front/image_raw{suffix}", f"/bench/wrist/image_raw{suffix}"]
    params = {"control_frequency_hz": args.control_frequency_hz, "execute_steps": 1, "latency_compensation_ms": 0.0,
              "camera_topics": cameras, "intra_op_threads": 1, "sync_slop_ms": 40.0}
    with PolicyNodeProcess(export, embodiment="so100", node_name=NODE, parameters=params,
                           log=lambda line: None) as node:
        ctx = Context()
        rclpy.init(context=ctx, signal_handler_options=SignalHandlerOptions.NO)
        bench = rclpy.create_node("reflex_cpu_bench_driver", context=ctx)
        chunks: list[tuple[float, float]] = []  # (monotonic receive time, inference_ms)
        bench.create_subscription(ActionChunk, f"/{NODE}/action_chunk",
                                  lambda m: chunks.append((time.monotonic(), float(m.inference_ms))), 200)
        diags: list[dict[str, str]] = []

        def on_diag(msg: DiagnosticArray) -> None:
            diags.extend({kv.key: kv.value for kv in st.values} for st in msg.status if st.name.startswith(NODE))
        bench.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
        cam_type = CompressedImage if args.camera == "jpeg" else Image
        cam_pubs = [bench.create_publisher(cam_type, t, qos_profile_sensor_data) for t in cameras]
        js_pub = bench.create_publisher(JointState, "/joint_states",
                                        QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
        executor = SingleThreadedExecutor(context=ctx)
        executor.add_node(bench)
        stop = threading.Event()
        spin = threading.Thread(target=lambda: [executor.spin_once(timeout_sec=0.1) for _ in iter(stop.is_set, True)],
                                daemon=True)
        spin.start()

        msgs = []
        for k in range(4):
            if args.camera == "jpeg":
                m = CompressedImage(format=image_transport_format("jpeg"))
                m.data = encode_image(frame(k), "jpeg")
            else:
                m = Image(height=480, width=640, encoding="rgb8", step=1920)
                m.data = frame(k).tobytes()
            msgs.append(m)

        def feed() -> None:
            js = JointState(name=JOINTS, position=[0.0] * 6)
            clock = bench.get_clock()
            period = 1.0 / args.joint_rate_hz
            ratio = args.camera_rate_hz / args.joint_rate_hz  # a frame whenever k * ratio passes an integer
            next_t, k, n_frames = time.monotonic(), 0, 0
            while not stop.is_set():
                stamp = time_msg(clock.now().nanoseconds)
                js.header.stamp = stamp
                js_pub.publish(js)
                if int(k * ratio) >= n_frames:
                    for i, pub in enumerate(cam_pubs):
                        msg = msgs[(n_frames + i) % len(msgs)]
                        msg.header.stamp = stamp
                        pub.publish(msg)
                    n_frames += 1
                k += 1
                next_t += period
                stop.wait(max(0.0, next_t - time.monotonic()))

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        deadline = time.monotonic() + 90
        while not chunks and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(3.0)  # steady state
        n0, cpu0, t0 = len(chunks), cpu_seconds(node.pid), time.monotonic()
        time.sleep(args.duration_s)
        n1, cpu1, t1 = len(chunks), cpu_seconds(node.pid), time.monotonic()
        diag = diags[-1] if diags else {}
        stop.set()
        feeder.join(timeout=5)
        spin.join(timeout=5)
        window = chunks[n0:n1]
        executor.shutdown()
        bench.destroy_node()
        rclpy.try_shutdown(context=ctx)

    span = t1 - t0
    node_cpu = (cpu1 - cpu0) / span * 100.0
    per_call_ms = engine_cpu_ms(export, [frame(0), frame(1)])
    infer_pct = len(window) * per_call_ms / 1e3 / span * 100.0
    wall_pct = sum(ms for _, ms in window) / 1e3 / span * 100.0
    rate = len(window) / span
    print(f"\npolicy node CPU, {span:.0f} s window: 2 cameras 640x480 {args.camera} at {args.camera_rate_hz:g} Hz + "
          f"joint states at {args.joint_rate_hz:g} Hz, control {args.control_frequency_hz:g} Hz x execute_steps 1 "
          f"(tiny 2-camera export, intra_op_threads 1); {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print("| metric | value |")
    print("|---|---|")
    print(f"| chunks published | {len(window)} ({rate:.1f} Hz of {args.control_frequency_hz:g}) |")
    print(f"| node CPU (all threads) | {node_cpu:.1f} % of one core |")
    print(f"| engine.infer CPU ({len(window)} calls x {per_call_ms:.2f} ms) | {infer_pct:.1f} % |")
    print(f"| (engine.infer wall time, sum of inference_ms: {wall_pct:.1f} %, inflated by preemption) | |")
    print(f"| **beyond inference** | **{node_cpu - infer_pct:.1f} % of one core** |")
    for topic in [*cameras, "/joint_states"]:  # what the node itself received (its /diagnostics)
        print(f"| {topic} at the node | {diag.get(f'input {topic} rate_hz', 'n/a')} Hz, newest "
              f"{diag.get(f'input {topic} age_ms', 'n/a')} ms old |")
    print(f"| node: input stamp -> buffered p50 / p99 | {diag.get('input_latency_p50_ms', 'n/a')} / "
          f"{diag.get('input_latency_p99_ms', 'n/a')} ms |")
    print(f"| node: dropped messages, overruns | {diag.get('dropped_messages', 'n/a')}, {diag.get('overruns', 'n/a')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
