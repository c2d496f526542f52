"""What the node benchmarks (soak.py, node_overhead.py, node_cpu.py) share: the joints and
camera topic they feed the node (the so100 embodiment's and the node's default), and the tiny
export they run it on when no ``--export`` is given. Imported from the scripts' own folder
(``python benchmarks/<script>.py`` puts it on sys.path)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from reflex_ros.control.embodiment import load_embodiment
from reflex_ros.vocab import DEFAULT_CAMERA_TOPIC

JOINTS = list(load_embodiment("so100").joint_names)
CAMERA = DEFAULT_CAMERA_TOPIC


def tiny_export(directory: str | None, prefix: str, name: str = "tiny", **options: Any) -> Path:
    """``directory`` when given, else a fresh tiny export (both layouts) in a temporary folder;
    ``options`` go to ``export_model`` (``num_cameras``, ``log``)."""
    if directory:
        return Path(directory)
    from reflex_ros.engine.export import export_model

    out = Path(tempfile.mkdtemp(prefix=prefix)) / name
    export_model(preset="tiny", output_dir=out, mode="both", **options)
    return out


def feed_inputs(clock: Any, joint_pub: Any, camera_pub: Any, image_size: int, pixels: bytes, rate_hz: float,
                stop: Any, publish_cost_ms: list[float] | None = None) -> None:
    """Publish a stamped JointState (JOINTS at 0) and a raw rgb8 square image at ``rate_hz``
    until ``stop`` (a threading.Event) is set; the feeder thread's body.

    Messages are built once, outside the stamp -> publish window, as a driver that stamps at
    capture and publishes at once would; with ``publish_cost_ms`` what publishing itself
    costs here (rclpy serialization + DDS write, in this process) is appended per cycle."""
    import time

    from sensor_msgs.msg import Image, JointState

    from reflex_ros.ros.messages import time_msg

    js = JointState(name=JOINTS, position=[0.0] * len(JOINTS))
    img = Image(height=image_size, width=image_size, encoding="rgb8", step=3 * image_size)
    img.data = pixels
    period, next_t = 1.0 / rate_hz, time.monotonic()
    while not stop.is_set():
        now = clock.now().nanoseconds
        stamp = time_msg(now)
        js.header.stamp = stamp
        img.header.stamp = stamp
        joint_pub.publish(js)
        camera_pub.publish(img)
        if publish_cost_ms is not None:
            publish_cost_ms.append((clock.now().nanoseconds - now) * 1e-6)
        next_t += period
        stop.wait(max(0.0, next_t - time.monotonic()))
