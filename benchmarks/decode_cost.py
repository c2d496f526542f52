"""What a camera frame costs the node: in the subscription callback, and once per control cycle.

The node's path for camera frames (control/observation.py), on real rclpy messages: the
callback (``ObservationAssembler.offer_camera``: the O(1) check and buffering of the raw
message) runs for every frame; decoding (pixel conversion for sensor_msgs/Image, JPEG
decompression for CompressedImage) runs in ``assemble``, once per inference, only for the
frames the synced observation uses. For 1, 2 and 3 cameras at 640x480, raw rgb8 and JPEG
(q90, 4:2:0), this prints the callback cost per frame and the per-cycle cost (assemble with
a new frame on every camera), median and p99 over ``--cycles`` cycles.

    .venv/bin/python benchmarks/decode_cost.py [--cycles 300] [--size 640x480]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np


def frame(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x + seed) % 256, y % 256, ((x + y) // 2) % 256], axis=-1)
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=300)
    parser.add_argument("--size", default="640x480")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))

    from sensor_msgs.msg import CompressedImage, Image, JointState

    from reflex_ros.control.inputs.compressed import encode_image, image_transport_format
    from reflex_ros.control.observation import ObservationAssembler
    from reflex_ros.ros.messages import time_msg

    pictures = [frame(width, height, s) for s in range(4)]
    jpegs = [encode_image(p, "jpeg") for p in pictures]
    ms = 1_000_000
    rows = []
    for kind in ("raw", "jpeg"):
        for n_cams in (1, 2, 3):
            topics = [f"/cam{i}/image_raw" + ("/compressed" if kind == "jpeg" else "") for i in range(n_cams)]
            asm = ObservationAssembler(topics, ["a"], joint_topic="/joints")
            # rclpy messages as the subscription delivers them (data as array.array)
            msgs = []
            for k in range(4):
                if kind == "raw":
                    m = Image(height=height, width=width, encoding="rgb8", step=3 * width)
                    m.data = pictures[k].tobytes()
                else:
                    m = CompressedImage(format=image_transport_format("jpeg"))
                    m.data = jpegs[k]
                msgs.append(m)
            js = JointState(name=["a"], position=[0.0])
            callback, cycle = [], []
            t0 = 1_000_000_000 * ms
            for c in range(args.cycles + 20):
                stamp = t0 + c * 33 * ms
                js.header.stamp = time_msg(stamp)
                asm.offer_joint_state(js, stamp + ms)
                for i, topic in enumerate(topics):
                    msg = msgs[(c + i) % 4]
                    msg.header.stamp = time_msg(stamp)
                    t = time.perf_counter()
                    asm.offer_camera(topic, msg, stamp + 2 * ms)
                    callback.append(time.perf_counter() - t)
                t = time.perf_counter()
                assembled, rejected = asm.assemble(5 * ms, "")
                cycle.append(time.perf_counter() - t)
                assert assembled is not None and not rejected
                assert assembled.observation.images[0].shape == (height, width, 3)
            cb = np.array(callback[20 * n_cams:]) * 1e3
            cy = np.array(cycle[20:]) * 1e3
            payload = len(msgs[0].data)
            rows.append((kind, n_cams, payload, np.median(cb), np.percentile(cb, 99), np.median(cy), np.percentile(cy, 99)))
    print(f"camera frame cost in the node's assembler, {args.size}, {args.cycles} cycles, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}")
    print("| input | cameras | payload | callback / frame p50 ms | p99 ms | per cycle (decode all) p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for kind, n, payload, c50, c99, y50, y99 in rows:
        name = "raw rgb8" if kind == "raw" else "JPEG q90"
        print(f"| {name} | {n} | {payload / 1e3:.0f} kB | {c50:.3f} | {c99:.3f} | {y50:.3f} | {y99:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
