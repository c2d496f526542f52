"""Camera delivery over DDS between two processes: received rate and stamp -> callback latency.

A publisher *process* (``--role publish``, started by this script) sends camera frames at
``--rate-hz`` for ``--duration-s``; a plain subscriber in this process (the policy node's
camera QoS: sensor data = best effort, keep last 5; the node's executor) records, for every
frame, the wall time its callback ran and the frame's ``header.stamp`` (taken by the
publisher just before ``publish``, as a driver stamps at capture). Printed per case:
frames sent, frames received, received rate, and stamp -> callback p50 / p99 / max.

Cases (``--cases``, comma-separated): ``raw640`` (640x480 rgb8), ``raw720`` (1280x720 rgb8),
``jpeg640`` / ``png640`` (640x480 sensor_msgs/CompressedImage, ``format`` as image_transport
writes it). ``--profile``: ``default`` = the Fast DDS XML profile that ``reflex-ros run`` /
``demo`` / the launch file apply (config/fastdds.xml), ``none`` = Fast DDS's built-in defaults
(what a node gets without it), or a path. Both processes use the same setting, as the
camera driver and the node would.

    .venv/bin/python benchmarks/image_delivery.py --profile none
    .venv/bin/python benchmarks/image_delivery.py --profile default --cases raw640,raw720,jpeg640
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SIZES = {"640": (640, 480), "720": (1280, 720)}
PROFILE_VARS = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")


def _case(name: str) -> tuple[str, int, int]:
    kind, size = name[:-3], name[-3:]
    if kind not in ("raw", "jpeg", "png") or size not in SIZES:
        raise SystemExit(f"unknown case {name!r}: raw640, raw720, jpeg640, jpeg720, png640, png720")
    return (kind, *SIZES[size])


def _frames(kind: str, width: int, height: int, n: int = 8) -> list[bytes]:
    """``n`` distinct camera-like frames (smooth gradients + noise: JPEG sizes like a real scene)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    out = []
    for i in range(n):
        base = np.stack([(x + 7 * i) % 256, (y + 3 * i) % 256, ((x + y) // 2 + 11 * i) % 256], axis=-1)
        img = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
        if kind == "raw":
            out.append(img.tobytes())
        else:
            from reflex_ros.control.inputs.compressed import encode_image

            out.append(encode_image(img, kind))
    return out


def publish(args: argparse.Namespace) -> int:
    """The camera driver: its own process, stamps just before publish."""
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CompressedImage, Image

    from reflex_ros.ros.messages import time_msg

    kind, width, height = _case(args.cases)
    frames = _frames(kind, width, height)
    rclpy.init()
    node = rclpy.create_node("reflex_bench_camera")
    if kind == "raw":
        pub = node.create_publisher(Image, args.topic, qos_profile_sensor_data)
        msgs = []
        for f in frames:
            m = Image(height=height, width=width, encoding="rgb8", step=3 * width)
            m.data = f
            msgs.append(m)
    else:
        pub = node.create_publisher(CompressedImage, args.topic, qos_profile_sensor_data)
        msgs = []
        for f in frames:
            m = CompressedImage(format=f"rgb8; {kind} compressed bgr8")
            m.data = f
            msgs.append(m)
    # wait for the subscriber to be matched, then a fixed number of frames at the rate
    deadline = time.monotonic() + 30
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    period = 1.0 / args.rate_hz
    n = int(round(args.duration_s * args.rate_hz))
    clock = node.get_clock()
    next_t = time.monotonic()
    for i in range(n):
        msg = msgs[i % len(msgs)]
        msg.header.stamp = time_msg(clock.now().nanoseconds)
        msg.header.frame_id = str(i)
        pub.publish(msg)
        next_t += period
        time.sleep(max(0.0, next_t - time.monotonic()))
    print(json.dumps({"sent": n, "bytes": len(msgs[0].data)}), flush=True)
    time.sleep(1.0)  # let the last frames drain before the writer goes away
    node.destroy_node()
    rclpy.shutdown()
    return 0


def _env(profile: str) -> dict[str, str]:
    env = dict(os.environ)
    for var in PROFILE_VARS:
        env.pop(var, None)
    if profile != "none":
        from reflex_ros.ros.dds import default_profile_path

        path = default_profile_path() if profile == "default" else Path(profile)
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(path)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.setdefault("AMENT_PREFIX_PATH", sys.prefix)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def measure(case: str, args: argparse.Namespace) -> dict:
    """One case: this process re-executed as the subscriber with the profile's environment
    (Fast DDS reads the profile at participant creation), the publisher as its child."""
    env = _env(args.profile)
    cmd = [sys.executable, __file__, "--role", "subscribe", "--cases", case, "--rate-hz", str(args.rate_hz),
           "--duration-s", str(args.duration_s), "--topic", args.topic, "--profile", args.profile]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.duration_s + 120)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"{case}: subscriber failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


def subscribe(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CompressedImage, Image

    from reflex_ros.control.stamps import stamp_to_ns
    from reflex_ros.ros.process import make_executor

    kind, _, _ = _case(args.cases)
    rclpy.init()
    node = rclpy.create_node("reflex_bench_subscriber")
    latencies: list[int] = []
    seen: set[str] = set()
    first_last: list[float] = []
    clock = node.get_clock()

    def on_frame(msg) -> None:
        now = clock.now().nanoseconds
        latencies.append(now - stamp_to_ns(msg.header.stamp))
        seen.add(msg.header.frame_id)
        first_last.append(time.monotonic())

    node.create_subscription(Image if kind == "raw" else CompressedImage, args.topic, on_frame,
                             qos_profile_sensor_data)
    executor = make_executor()
    executor.add_node(node)
    stop = threading.Event()

    def spin_loop() -> None:
        while not stop.is_set():
            executor.spin_once(timeout_sec=0.1)

    spin = threading.Thread(target=spin_loop, daemon=True)
    spin.start()
    pub = subprocess.Popen([sys.executable, __file__, "--role", "publish", "--cases", args.cases, "--rate-hz",
                            str(args.rate_hz), "--duration-s", str(args.duration_s), "--topic", args.topic],
                           stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    stdout, _ = pub.communicate(timeout=args.duration_s + 90)
    info = json.loads([ln for ln in stdout.splitlines() if ln.startswith("{")][-1])
    stop.set()
    spin.join(timeout=5)
    node.destroy_node()
    rclpy.try_shutdown()
    lat = np.array(latencies, dtype=np.float64) * 1e-6
    span = first_last[-1] - first_last[0] if len(first_last) > 1 else float("nan")
    result = {
        "case": args.cases, "sent": info["sent"], "payload_bytes": info["bytes"], "received": len(seen),
        "rate_hz": (len(first_last) - 1) / span if len(first_last) > 1 else 0.0,
        "p50_ms": float(np.percentile(lat, 50)) if lat.size else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if lat.size else float("nan"),
        "max_ms": float(lat.max()) if lat.size else float("nan"),
    }
    print(json.dumps(result), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="raw640,raw720,jpeg640")
    parser.add_argument("--profile", default="default", help="default | none | PATH of a Fast DDS XML profile")
    parser.add_argument("--rate-hz", type=float, default=30.0)
    parser.add_argument("--duration-s", type=float, default=20.0)
    parser.add_argument("--topic", default="/bench/camera/image_raw")
    parser.add_argument("--role", choices=("main", "publish", "subscribe"), default="main", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "publish":
        return publish(args)
    if args.role == "subscribe":
        return subscribe(args)
    rows = [measure(case, args) for case in args.cases.split(",")]
    print(f"\ncamera delivery, {args.rate_hz:g} Hz for {args.duration_s:g} s, separate publisher process, "
          f"profile {args.profile}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print("| case | payload | sent | received | rate Hz | stamp->callback p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['payload_bytes'] / 1e3:.0f} kB | {r['sent']} | {r['received']} | "
              f"{r['rate_hz']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
