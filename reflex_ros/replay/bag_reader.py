"""Read what calibration needs from a ROS 2 bag (sqlite3 or MCAP), without ROS.

``rosbags`` (pure Python) reads the bag; the node's own observation assembler
(:class:`reflex_ros.control.observation.ObservationAssembler`: the camera decoders registered
by message type, the joint state by name, the approximate-time sync) turns messages into
observations exactly as the live node does, with the bag's receive time as the arrival time,
so a replayed observation is the one the node would have inferred on.

From one pass over the bag this collects:
- observations: camera frames + joint state, synced with the node's slop, decimated evenly
  to at most ``max_observations`` (a long bag must not hold every decoded frame in memory);
- the measured joint positions (every JointState, by joint name);
- the commanded trajectories (JointTrajectory; the node's ``~/joint_trajectory`` or any);
- observation-to-publish latencies from the node's ``~/action_chunk`` when recorded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reflex_ros.control.inputs import CAMERA_DECODERS, JOINT_STATE_TYPE
from reflex_ros.control.jtc import parse_joint_trajectory
from reflex_ros.control.stamps import stamp_to_ns
from reflex_ros.engine.types import Observation, ObservationError, ReflexError
from reflex_ros.vocab import JOINT_STATES_TOPIC

TRAJECTORY_TYPE = "trajectory_msgs/msg/JointTrajectory"
ACTION_CHUNK_TYPE = "reflex_ros/msg/ActionChunk"
STRING_TYPE = "std_msgs/msg/String"
DEFAULT_SLOP_MS = 25.0  # the node's sync_slop_ms default
DEFAULT_MAX_OBSERVATIONS = 200
NODE_TRAJECTORY_SUFFIX = "/joint_trajectory"


class BagError(ReflexError):
    """A bag cannot be read or lacks what calibration needs (the message lists what it has)."""


@dataclass(frozen=True)
class TopicInfo:
    msgtype: str
    count: int


@dataclass(frozen=True)
class BagTopics:
    """The topics a replay uses."""

    camera_topics: tuple[str, ...]
    camera_types: dict[str, str]  # topic -> message type (Image or CompressedImage; may differ per camera)
    joint_states_topic: str
    trajectory_topic: str | None = None
    action_chunk_topic: str | None = None
    instruction_topic: str | None = None


@dataclass
class BagData:
    """Everything one pass over a bag produced (see the module docstring)."""

    path: Path
    topics: BagTopics
    observations: list[Observation]
    joint_names: tuple[str, ...]
    joint_t_ns: np.ndarray
    joint_pos: np.ndarray  # [m, J] in joint_names order
    trajectories: list[tuple[int, np.ndarray, np.ndarray, int]]  # (start_ns, offsets_ns[k], positions[k, J], arrival_ns)
    obs_to_publish_ms: list[float] = field(default_factory=list)
    n_frames: int = 0
    n_synced: int = 0
    n_rejected: int = 0
    first_rejection: str | None = None
    duration_s: float = 0.0


def format_topics(topics: dict[str, TopicInfo]) -> str:
    """One line per topic, for error messages: ``/camera (sensor_msgs/msg/Image, 120 msgs)``."""
    if not topics:
        return "  (no topics)"
    return "\n".join(f"  {name} ({info.msgtype}, {info.count} msgs)" for name, info in sorted(topics.items()))


def _of_type(topics: dict[str, TopicInfo], msgtype: str) -> list[str]:
    return sorted(name for name, info in topics.items() if info.msgtype == msgtype and info.count > 0)


def _require(topics: dict[str, TopicInfo], name: str, msgtype: str, flag: str, path: Path) -> None:
    if name not in topics:
        raise BagError(f"{flag} {name}: no such topic in {path}; the bag has:\n{format_topics(topics)}")
    if topics[name].msgtype != msgtype:
        raise BagError(f"{flag} {name} in {path} is {topics[name].msgtype}, expected {msgtype}; "
                       f"the bag has:\n{format_topics(topics)}")
    if topics[name].count == 0:
        raise BagError(f"{flag} {name} in {path} has no messages; the bag has:\n{format_topics(topics)}")


def select_topics(
    topics: dict[str, TopicInfo],
    path: Path,
    *,
    num_cameras: int,
    camera_topics: Sequence[str] | None = None,
    joint_states_topic: str | None = None,
    trajectory_topic: str | None = None,
) -> BagTopics:
    """Pick the topics to replay: given ones are checked, missing ones auto-detected by type.

    Auto-detection takes every camera topic (a type with a registered decoder, see
    ``control/inputs``: sensor_msgs Image and CompressedImage; sorted) when their number equals the export's camera count, the only
    JointState topic (``/joint_states`` when several), and a
    JointTrajectory topic ending in ``/joint_trajectory`` (the node's) or the only one.
    Raises :class:`BagError` listing the bag's topics when something needed is missing.
    """
    if camera_topics:
        for name in camera_topics:
            msgtype = topics[name].msgtype if name in topics else None
            _require(topics, name, msgtype if msgtype in CAMERA_DECODERS else " or ".join(CAMERA_DECODERS),
                     "--camera-topics", path)
        cameras = tuple(camera_topics)
    else:
        found = sorted(t for msgtype in CAMERA_DECODERS for t in _of_type(topics, msgtype))
        if not found:
            raise BagError(f"{path} has no camera topic ({', '.join(CAMERA_DECODERS)}) to rebuild observations "
                           f"from; the bag has:\n{format_topics(topics)}")
        if len(found) != num_cameras:
            raise BagError(f"{path} has {len(found)} image topics ({', '.join(found)}) but the export expects "
                           f"{num_cameras} camera(s); pass --camera-topics in the export's camera order")
        cameras = tuple(found)
    if len(cameras) != num_cameras:
        raise BagError(f"--camera-topics gives {len(cameras)} topic(s) but the export expects {num_cameras} camera(s)")
    camera_types = {c: topics[c].msgtype for c in cameras}
    if joint_states_topic:
        _require(topics, joint_states_topic, JOINT_STATE_TYPE, "--joint-states-topic", path)
        joints = joint_states_topic
    else:
        found = _of_type(topics, JOINT_STATE_TYPE)
        if not found:
            raise BagError(f"{path} has no {JOINT_STATE_TYPE} topic; the bag has:\n{format_topics(topics)}")
        if len(found) > 1 and JOINT_STATES_TOPIC not in found:
            raise BagError(f"{path} has several JointState topics ({', '.join(found)}); pass --joint-states-topic")
        joints = JOINT_STATES_TOPIC if JOINT_STATES_TOPIC in found else found[0]
    if trajectory_topic:
        _require(topics, trajectory_topic, TRAJECTORY_TYPE, "--trajectory-topic", path)
        trajectory: str | None = trajectory_topic
    else:
        found = _of_type(topics, TRAJECTORY_TYPE)
        node = [t for t in found if t.endswith(NODE_TRAJECTORY_SUFFIX)]
        trajectory = node[0] if node else (found[0] if len(found) == 1 else None)
    chunks = _of_type(topics, ACTION_CHUNK_TYPE)
    instructions = [t for t in _of_type(topics, STRING_TYPE) if t.endswith("instruction")]
    return BagTopics(cameras, camera_types, joints, trajectory, chunks[0] if chunks else None,
                     instructions[0] if instructions else None)


def default_typestore() -> Any:
    """ROS 2 Kilted types plus our ActionChunk, for bags recorded without type definitions."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    msg_file = Path(__file__).resolve().parents[2] / "msg" / "ActionChunk.msg"
    if msg_file.is_file():
        store.register(get_types_from_msg(msg_file.read_text(), ACTION_CHUNK_TYPE))
    return store


def open_reader(path: Path) -> Any:
    """An opened ``rosbags.highlevel.AnyReader``; a clear BagError for anything unreadable."""
    from rosbags.highlevel import AnyReader

    if not path.exists():
        raise BagError(f"bag {path} does not exist (pass the bag directory, or its .mcap / .db3 file)")
    try:
        reader = AnyReader([path], default_typestore=default_typestore())
        reader.open()
    except Exception as exc:
        raise BagError(f"cannot read {path} as a ROS 2 bag (sqlite3 or MCAP): {type(exc).__name__}: {exc}") from None
    return reader


def bag_topics(reader: Any) -> dict[str, TopicInfo]:
    return {name: TopicInfo(str(info.msgtype), int(info.msgcount)) for name, info in reader.topics.items()}


def trajectory_segment(msg: Any, log_ns: int, joint_names: Sequence[str]
                       ) -> tuple[int, np.ndarray, np.ndarray, int] | None:
    """(start_ns, offsets_ns, positions[k, J], arrival_ns) of a JointTrajectory, columns by
    joint name (NaN for joints it does not drive); arrival is the bag's log (receive) time,
    before which it cannot act. A zero stamp means "start now" (the receive time).
    None when it is malformed, empty, or drives none of ``joint_names``."""
    try:
        trajectory = parse_joint_trajectory(msg)
    except ValueError:
        return None
    positions = trajectory.columns(joint_names)
    if positions.size == 0 or np.isnan(positions).all():
        return None
    return trajectory.start_ns or int(log_ns), trajectory.times_from_start_ns, positions, int(log_ns)


def read_bag(
    path: str | Path,
    *,
    joint_names: Sequence[str],
    num_cameras: int,
    instruction: str,
    camera_topics: Sequence[str] | None = None,
    joint_states_topic: str | None = None,
    trajectory_topic: str | None = None,
    slop_ms: float = DEFAULT_SLOP_MS,
    max_observations: int = DEFAULT_MAX_OBSERVATIONS,
) -> BagData:
    """One pass over the bag (see the module docstring). Raises BagError on unusable input."""
    from reflex_ros.control.observation import ObservationAssembler

    path = Path(path).expanduser()
    reader = open_reader(path)
    try:
        topics = bag_topics(reader)
        chosen = select_topics(topics, path, num_cameras=num_cameras, camera_topics=camera_topics,
                               joint_states_topic=joint_states_topic, trajectory_topic=trajectory_topic)
        pivot = chosen.camera_topics[0]
        stride = max(1, math.ceil(topics[pivot].count / max(1, max_observations)))
        wanted = {*chosen.camera_topics, chosen.joint_states_topic}
        for optional in (chosen.trajectory_topic, chosen.action_chunk_topic, chosen.instruction_topic):
            if optional:
                wanted.add(optional)
        connections = [c for c in reader.connections if c.topic in wanted]
        assembler = ObservationAssembler(chosen.camera_topics, joint_names, joint_topic=chosen.joint_states_topic,
                                         camera_type=chosen.camera_types, camera_capacity=8)
        slop_ns = int(slop_ms * 1e6)
        data = BagData(path, chosen, [], tuple(joint_names), np.zeros(0, dtype=np.int64),
                       np.zeros((0, len(joint_names))), [])
        joint_t: list[int] = []
        joint_rows: list[np.ndarray] = []
        used_stamps: set[int] = set()
        current_instruction = instruction

        def reject(problem: str) -> None:
            data.n_rejected += 1
            data.first_rejection = data.first_rejection or problem

        first_ns = last_ns = None
        for connection, log_ns, raw in reader.messages(connections=connections):
            first_ns = log_ns if first_ns is None else first_ns
            last_ns = log_ns
            topic = connection.topic
            try:
                msg = reader.deserialize(raw, connection.msgtype)
            except Exception as exc:
                reject(f"{topic}: cannot deserialize ({exc})")
                continue
            if topic == chosen.joint_states_topic:
                try:
                    stamp, state = assembler.offer_joint_state(msg, log_ns)
                except ObservationError as exc:
                    reject(str(exc))
                    continue
                joint_t.append(stamp)
                joint_rows.append(state.astype(np.float64))
            elif topic in chosen.camera_topics:
                try:
                    assembler.offer_camera(topic, msg, log_ns)
                except ObservationError as exc:
                    reject(str(exc))
                    continue
                if topic != pivot:
                    continue
                data.n_frames += 1
                if (data.n_frames - 1) % stride:
                    continue
                assembled, rejected = assembler.assemble(slop_ns, current_instruction)
                for _, exc in rejected:
                    reject(str(exc))
                if assembled is None or assembled.stamp_ns in used_stamps:
                    continue
                used_stamps.add(assembled.stamp_ns)
                data.n_synced += 1
                data.observations.append(assembled.observation)
            elif topic == chosen.trajectory_topic:
                segment = trajectory_segment(msg, log_ns, joint_names)
                if segment is not None:
                    data.trajectories.append(segment)
            elif topic == chosen.action_chunk_topic:
                obs_ns = stamp_to_ns(msg.header.stamp) - int(msg.skipped_steps) * stamp_to_ns(msg.dt)
                if obs_ns > 0:
                    data.obs_to_publish_ms.append((int(log_ns) - obs_ns) / 1e6)
            elif topic == chosen.instruction_topic:
                current_instruction = str(msg.data) or current_instruction
        if joint_t:
            data.joint_t_ns = np.asarray(joint_t, dtype=np.int64)
            data.joint_pos = np.stack(joint_rows)
        if first_ns is not None and last_ns is not None:
            data.duration_s = (last_ns - first_ns) / 1e9
    finally:
        reader.close()
    if not data.observations:
        hint = f" (first problem: {data.first_rejection})" if data.first_rejection else ""
        raise BagError(
            f"no synchronized observation could be rebuilt from {path}: {data.n_frames} frames on {pivot}, "
            f"none within {slop_ms:g} ms of a joint state on {chosen.joint_states_topic}{hint}; "
            "check the topics and that the messages' header stamps share one clock"
        )
    return data
