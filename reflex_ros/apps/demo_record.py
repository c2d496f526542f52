"""``reflex-ros demo --record FILE.mcap``: the run's topics as an MCAP bag, written with rosbags.

Each message is re-serialized with rosbags' own CDR serializer rather than stored as the bytes
rclpy's raw subscription hands over: with the Kilted wheels those buffers carry trailing bytes
past the end of the CDR data (measured: 12 bytes on a one-point JointTrajectory, 384 on a
48-point chunk), which strict readers, rosbags included, reject as a size mismatch. The
conversion is field by field from the message's own type description, so it is exact. The log
time of a message is its receipt time on the demo's clock, as ``ros2 bag record`` does. Our own types (ActionChunk, EpisodeStatus) are registered from the
package's .msg files, so the file carries their schemas and opens in Foxglove or PlotJuggler
without the package, and reads back with ``reflex-ros calibrate --bag FILE.mcap``.

rosbags writes a bag directory (``metadata.yaml`` + ``<name>.mcap``); the single ``.mcap`` is
self-describing, so it is moved to the path asked for and the directory removed.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np

#: (topic, ROS type) pairs the demo records; the camera is sensor-data QoS, the rest reliable.
SENSOR_DATA_TYPES = frozenset({"sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"})


def _msg_class(ros_type: str) -> Any:
    package, kind, name = ros_type.split("/")
    module = __import__(f"{package}.{kind}", fromlist=[name])
    return getattr(module, name)


#: IDL scalar names (rclpy's ``get_fields_and_field_types``) -> numpy dtypes rosbags serializes
_DTYPES = {"double": np.float64, "float": np.float32, "int8": np.int8, "uint8": np.uint8, "octet": np.uint8,
           "char": np.uint8, "int16": np.int16, "uint16": np.uint16, "int32": np.int32, "uint32": np.uint32,
           "int64": np.int64, "uint64": np.uint64, "boolean": np.bool_}


def _ros_type_name(msg: Any) -> str:
    """``sensor_msgs.msg._image.Image`` -> ``sensor_msgs/msg/Image``."""
    package, kind = type(msg).__module__.split(".")[:2]
    return f"{package}/{kind}/{type(msg).__name__}"


def _element_type(field_type: str) -> str:
    """``sequence<double>`` / ``sequence<double, 5>`` / ``double[3]`` -> ``double``."""
    if field_type.startswith("sequence<"):
        return field_type[len("sequence<"):-1].split(",")[0].strip()
    return field_type.split("[")[0]


def to_rosbags(msg: Any, store: Any) -> Any:
    """The rosbags message equal to rclpy message ``msg`` (recursively, by its type description)."""
    cls = store.types[_ros_type_name(msg)]
    values = {}
    for name, field_type in msg.get_fields_and_field_types().items():
        value = getattr(msg, name)
        if hasattr(value, "get_fields_and_field_types"):
            values[name] = to_rosbags(value, store)
            continue
        is_array = field_type.startswith("sequence<") or field_type.endswith("]")
        element = _element_type(field_type)
        if not is_array:
            # rclpy gives an IDL octet/byte as a one-byte bytes object; rosbags wants the integer
            values[name] = value[0] if isinstance(value, bytes) and len(value) == 1 else value
        elif element in _DTYPES:
            if len(value) and isinstance(value[0], bytes):  # a byte[] sequence: bytes objects
                value = b"".join(value)
            if isinstance(value, (bytes, bytearray)):
                values[name] = np.frombuffer(value, dtype=_DTYPES[element]).copy()
            else:
                values[name] = np.asarray(value, dtype=_DTYPES[element])
        elif element in ("string", "wstring") or element.startswith("string<"):
            values[name] = list(value)
        else:  # a sequence of messages
            values[name] = [to_rosbags(item, store) for item in value]
    return cls(**values)


def typestore() -> Any:
    """Kilted's types plus reflex_ros's own messages (from the package's msg/ directory)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    msg_dir = Path(__file__).resolve().parents[2] / "msg"
    for msg_file in sorted(msg_dir.glob("*.msg")):
        store.register(get_types_from_msg(msg_file.read_text(), f"reflex_ros/msg/{msg_file.stem}"))
    return store


class McapRecorder:
    """Records ``topics`` from ``node`` into ``path`` (a ``.mcap`` file) until :meth:`close`."""

    def __init__(self, node: Any, path: Path, topics: list[tuple[str, str]]) -> None:
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from rosbags.rosbag2 import StoragePlugin, Writer

        if path.suffix != ".mcap":
            raise ValueError(f"--record {path}: the file name must end in .mcap")
        if path.exists():
            raise ValueError(f"--record {path}: exists; choose a new file name")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._bag_dir = path.with_name(path.stem + ".rosbag2.tmp")
        if self._bag_dir.exists():
            shutil.rmtree(self._bag_dir)
        self._store = typestore()
        self._writer = Writer(self._bag_dir, version=9, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        self._lock = threading.Lock()
        self._closed = False
        self.counts: dict[str, int] = {}
        self.errors: dict[str, str] = {}  # topic -> the last message that could not be converted
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
        self._node = node
        self._subs = []
        for topic, ros_type in topics:
            connection = self._writer.add_connection(topic, ros_type, typestore=self._store)
            qos = qos_profile_sensor_data if ros_type in SENSOR_DATA_TYPES else reliable
            self.counts[topic] = 0
            self._subs.append(node.create_subscription(
                _msg_class(ros_type), topic, self._callback(topic, ros_type, connection), qos))

    def _callback(self, topic: str, ros_type: str, connection: Any):
        def write(msg: Any) -> None:
            now_ns = self._node.get_clock().now().nanoseconds
            try:
                data = self._store.serialize_cdr(to_rosbags(msg, self._store), ros_type)
            except Exception as exc:  # noqa: BLE001 - one odd message must not stop the demo's executor
                self.errors[topic] = f"{type(exc).__name__}: {exc}"
                return
            with self._lock:
                if self._closed:
                    return
                self._writer.write(connection, now_ns, data)
                self.counts[topic] += 1
        return write

    def close(self) -> Path:
        """Stop recording, finish the file; returns its path."""
        with self._lock:
            if self._closed:
                return self.path
            self._closed = True
            for sub in self._subs:
                try:
                    self._node.destroy_subscription(sub)
                except Exception:  # noqa: BLE001 - the node may already be gone at shutdown
                    pass
            self._writer.close()
        files = sorted(self._bag_dir.glob("*.mcap"))
        if len(files) != 1:
            raise RuntimeError(f"expected one .mcap in {self._bag_dir}, found {[f.name for f in files]}")
        files[0].replace(self.path)
        shutil.rmtree(self._bag_dir, ignore_errors=True)
        return self.path
