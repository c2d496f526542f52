"""The node's control loop on a GPU: pi0 at published size on the torch CUDA-graph path, 50 Hz.

What `reflex_ros/ros/policy_node.py` runs between its subscriptions and its publishers is the
ROS-free :class:`~reflex_ros.control.loop.ControlLoop`; this drives that same loop with the
same assembler, strategy and statistics for ``--duration-s`` seconds, a chunk every control
period, with 2 cameras at 30 Hz and joint states at 100 Hz offered from a feeder thread as
the executor thread would. No DDS: the GPU machine's image has no ROS (the node process
itself is measured on the dev box: benchmarks/node_overhead.py). Messages are plain objects
with the sensor_msgs field names (the decoders read fields only).

    python benchmarks/gpu_loop.py [--family pi0] [--duration-s 60] [--control-hz 50] [--dtype bf16]
                                  [--camera-hw 480x640] [--images device|host]
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np

JOINTS = ["j1", "j2", "j3", "j4", "j5", "j6"]


def _stamp(ns: int) -> SimpleNamespace:
    return SimpleNamespace(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def image_msg(ns: int, hw: tuple[int, int], rng: np.random.Generator) -> SimpleNamespace:
    h, w = hw
    data = rng.integers(0, 256, h * w * 3, dtype=np.uint8).tobytes()
    return SimpleNamespace(header=SimpleNamespace(stamp=_stamp(ns), frame_id="cam"), height=h, width=w,
                           encoding="rgb8", is_bigendian=0, step=w * 3, data=data)


def joint_msg(ns: int, t: float) -> SimpleNamespace:
    return SimpleNamespace(header=SimpleNamespace(stamp=_stamp(ns), frame_id=""), name=list(JOINTS),
                           position=[0.1 * np.sin(t + i) for i in range(len(JOINTS))], velocity=[], effort=[])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="pi0", choices=("pi0", "pi05", "smolvla"))
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--control-hz", type=float, default=50.0)
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--size", default="published", choices=("published", "tiny"))
    parser.add_argument("--camera-hw", default="", metavar="HxW",
                        help="camera frame size, e.g. 480x640 (default: the model's own image size)")
    parser.add_argument("--images", choices=("device", "host"), default="device",
                        help="resize frames on the GPU (default) or on the host CPU (numpy)")
    parser.add_argument("--cpu", action="store_true", help="smoke-test the script on the CPU (eager, tiny)")
    args = parser.parse_args(argv)
    import torch

    if not args.cpu and not torch.cuda.is_available():
        print("gpu_loop: no CUDA GPU", file=sys.stderr)
        return 2
    from reflex_ros.control import params as P
    from reflex_ros.control.loop import ControlLoop, LoopSubscriber
    from reflex_ros.policies.lerobot.published import published_engine

    class Record(LoopSubscriber):
        def __init__(self) -> None:
            self.inference_ms: list[float] = []
            self.obs_to_publish_ms: list[float] = []
            self.skipped: dict[str, int] = {}

        def on_published(self, event) -> None:  # noqa: ANN001
            self.inference_ms.append(event.inference_ms)
            self.obs_to_publish_ms.append(event.obs_to_publish_ms)

        def on_skipped(self, reason: str, count: int = 1, detail: str = "") -> None:
            self.skipped[reason] = self.skipped.get(reason, 0) + count

    engine = published_engine(args.family, args.size, device="cpu" if args.cpu else "cuda",
                              dtype="fp32" if args.cpu else args.dtype, cuda_graph=not args.cpu,
                              device_images=None if args.cpu else args.images == "device",
                              state_dim=len(JOINTS), action_dim=len(JOINTS))
    cams = list(engine.info.camera_names)
    topics = [f"/cam/{i}" for i in range(len(cams))]
    size = engine.info.image_size
    hw = tuple(int(v) for v in args.camera_hw.lower().split("x")) if args.camera_hw else (size, size)
    if len(hw) != 2 or min(hw) < 1:
        parser.error(f"--camera-hw {args.camera_hw!r}: expected HxW, e.g. 480x640")
    values = {s.name: s.default for s in P.PARAMS}
    values.update(
        joint_names=JOINTS, camera_topics=topics, camera_names=cams, control_frequency_hz=args.control_hz,
        execute_steps=1, latency_compensation_ms=0.0, position_lower=[-3.0] * 6, position_upper=[3.0] * 6,
        max_delta_per_step=[0.5] * 6, instruction="pick up the cube", max_observation_age_ms=500.0,
        sync_slop_ms=25.0, chunk_size=0,
    )
    publishes: list[int] = []
    stats = Record()
    loop = ControlLoop.build(engine, P.Settings(values), publish=lambda *a: publishes.append(time.monotonic_ns()),
                             now_ns=time.time_ns, logger=logging.getLogger("gpu_loop"), subscribers=[stats])
    warm = loop.warm_up(3)
    stop = threading.Event()
    rng = np.random.default_rng(0)
    frames = [[image_msg(0, hw, rng) for _ in cams] for _ in range(4)]

    def feed() -> None:
        start = time.monotonic()
        k = 0
        while not stop.is_set():
            now = time.time_ns()
            t = time.monotonic() - start
            loop.offer_joint_state(joint_msg(now, t))
            if k % 3 == 0:  # cameras at ~33 Hz, joints at 100 Hz
                for topic, frame in zip(topics, frames[(k // 3) % 4], strict=True):
                    frame.header.stamp = _stamp(now)
                    loop.offer_camera(topic, frame)
            k += 1
            stop.wait(max(0.0, start + k * 0.01 - time.monotonic()))

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    time.sleep(0.3)
    loop.start()
    time.sleep(args.duration_s)
    loop.stop()
    stop.set()
    feeder.join(timeout=5)
    inf = np.asarray(stats.inference_ms)
    o2p = np.asarray(stats.obs_to_publish_ms)
    periods = np.diff(np.asarray(publishes, dtype=np.int64)) * 1e-6
    target = 1000.0 / args.control_hz
    info = engine.info
    device = "CPU smoke run" if args.cpu else torch.cuda.get_device_name()
    print(f"gpu_loop: {args.family} {args.size} size, torch {engine.info.dtype} graph path "
          f"{info.extra.get('graph_path', 'eager')}, {device}, {args.duration_s:.0f} s at {args.control_hz:g} Hz (a chunk every "
          f"period), {len(cams)} cameras {hw[1]}x{hw[0]} at ~33 Hz (model {size}px, images resized on the "
          f"{'GPU' if engine.device_images else 'host'}), joints at 100 Hz; warm-up {warm:.0f} ms")
    print(f"  chunks published        {len(publishes)} (target {args.duration_s * args.control_hz:.0f})")
    if inf.size:
        print(f"  inference               p50 {np.percentile(inf, 50):.2f} ms, p99 {np.percentile(inf, 99):.2f} ms "
              f"(host arrays in -> actions out, incl. preprocessing)")
    if o2p.size:
        print(f"  observation -> publish  p50 {np.percentile(o2p, 50):.2f} ms, p99 {np.percentile(o2p, 99):.2f} ms")
    if periods.size:
        jitter = np.abs(periods - target)
        print(f"  publish period          mean {periods.mean():.3f} ms, std {periods.std():.3f} ms, "
              f"|period - {target:g}| p99 {np.percentile(jitter, 99):.3f} ms, max {jitter.max():.3f} ms")
    print(f"  skipped cycles          {stats.skipped or 'none'}")
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
