"""The robot side of the policy-node tests: a real rclpy node in the test process.

It publishes synthetic cameras and joint states (stamped, like a driver), records every
trajectory / action chunk / diagnostics message the policy node (a separate process,
started with PolicyNodeProcess) sends back, and calls the node's parameter services the way
rqt_reconfigure does. Waits are condition loops with generous timeouts, never fixed sleeps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import DescribeParameters, GetParameters, SetParameters, SetParametersAtomically
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions
from reflex_ros.msg import ActionChunk
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from std_srvs.srv import SetBool
from trajectory_msgs.msg import JointTrajectory

from reflex_ros.control.stamps import stamp_to_ns
from reflex_ros.ros.messages import time_msg

SO100_JOINTS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]


def unconfigured(node: Any) -> None:
    """Take a ``PolicyNodeProcess`` back to unconfigured from wherever it is (deactivate,
    cleanup), so a module's tests can share one node process."""
    state = node.state()
    if state == "active":
        node.deactivate()
        state = "inactive"
    if state == "inactive":
        node.cleanup()
    assert node.state() == "unconfigured"


def wait_for(predicate: Callable[[], Any], timeout_s: float = 60.0, what: str = "condition",
             poll_s: float = 0.02) -> Any:
    """Poll until ``predicate()`` is truthy; fail the test with ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


stamp_ns = stamp_to_ns  # the project's one reader of Time / Duration
to_time = time_msg


def rgb_image(stamp: int, size: int = 64, encoding: str = "rgb8", seed: int = 0) -> Image:
    rng = np.random.default_rng(seed)
    channels = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}.get(encoding, 3)
    pixels = rng.integers(0, 256, (size, size, channels), dtype=np.uint8)
    msg = Image(height=size, width=size, encoding=encoding, step=size * channels)
    msg.header.stamp = to_time(stamp)
    msg.header.frame_id = "camera"
    msg.data = pixels.tobytes()
    return msg


def joint_state(stamp: int, names: Sequence[str], positions: Sequence[float]) -> JointState:
    msg = JointState(name=list(names), position=[float(p) for p in positions])
    msg.header.stamp = to_time(stamp)
    return msg


@dataclass
class Received:
    """A message and when it arrived (ns, the harness's ROS clock)."""

    msg: Any
    t_ns: int


@dataclass
class Feeder:
    """Background publisher of consistent observations at ``rate_hz``."""

    rate_hz: float = 30.0
    state: Callable[[], tuple[list[str], list[float]]] = field(
        default=lambda: (SO100_JOINTS, [0.0] * len(SO100_JOINTS)))
    published_stamps: list[int] = field(default_factory=list)
    enabled: threading.Event = field(default_factory=threading.Event)
    camera_offsets_ns: list[int] | None = None  # per camera, added to the joint-state stamp


class RosHarness:
    """A test-side node on its own context (so it never collides with other rclpy use)."""

    def __init__(self, node_fqn: str = "/reflex_policy", camera_topics: Sequence[str] = ("/camera/front/image_raw",),
                 joint_states_topic: str = "/joint_states", image_size: int = 64) -> None:
        self.node_fqn = node_fqn
        self.camera_topics = list(camera_topics)
        self.image_size = image_size
        self.context = Context()
        rclpy.init(context=self.context, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node(f"reflex_test_harness_{id(self) & 0xFFFF:x}", context=self.context)
        self.lock = threading.Lock()
        self.trajectories: list[Received] = []
        self.chunks: list[Received] = []
        self.diagnostics: list[Received] = []
        self.camera_pubs = [self.node.create_publisher(Image, t, qos_profile_sensor_data) for t in self.camera_topics]
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.joint_pub = self.node.create_publisher(JointState, joint_states_topic, reliable)
        self.instruction_pub = self.node.create_publisher(String, f"{node_fqn}/instruction", 10)
        self.node.create_subscription(JointTrajectory, f"{node_fqn}/joint_trajectory",
                                      lambda m: self._store(self.trajectories, m), 100)
        self.node.create_subscription(ActionChunk, f"{node_fqn}/action_chunk",
                                      lambda m: self._store(self.chunks, m), 100)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.set_client = self.node.create_client(SetParameters, f"{node_fqn}/set_parameters")
        self.set_atomic_client = self.node.create_client(SetParametersAtomically,
                                                         f"{node_fqn}/set_parameters_atomically")
        self.get_client = self.node.create_client(GetParameters, f"{node_fqn}/get_parameters")
        self.describe_client = self.node.create_client(DescribeParameters, f"{node_fqn}/describe_parameters")
        self.hold_client = self.node.create_client(SetBool, f"{node_fqn}/hold")
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._spin = threading.Thread(target=self._spin_forever, daemon=True)
        self._spin.start()
        self.feeder = Feeder()
        self._feed_stop = threading.Event()
        self._feed_thread = threading.Thread(target=self._feed_forever, daemon=True)
        self._feed_thread.start()

    # --- plumbing
    def _spin_forever(self) -> None:
        while self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # context shut down under us
                if not self.context.ok():
                    return

    def now_ns(self) -> int:
        return self.node.get_clock().now().nanoseconds

    def _store(self, bucket: list[Received], msg: Any) -> None:
        with self.lock:
            bucket.append(Received(msg, self.now_ns()))

    def _on_diag(self, msg: DiagnosticArray) -> None:
        if any(s.name.startswith(self.node_fqn.rsplit("/", 1)[-1]) for s in msg.status):
            self._store(self.diagnostics, msg)

    def close(self) -> None:
        self._feed_stop.set()
        self.feeder.enabled.clear()
        self._feed_thread.join(timeout=10)
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._spin.join(timeout=10)

    # --- inputs
    def publish_observation(self, stamp: int, names: Sequence[str] = SO100_JOINTS,
                            positions: Sequence[float] | None = None, image: Image | None = None,
                            camera_offsets_ns: Sequence[int] | None = None) -> None:
        positions = [0.0] * len(names) if positions is None else positions
        offsets = camera_offsets_ns or [0] * len(self.camera_pubs)
        self.joint_pub.publish(joint_state(stamp, names, positions))
        for i, pub in enumerate(self.camera_pubs):
            pub.publish(image if image is not None else rgb_image(stamp + offsets[i], self.image_size, seed=i))

    def _feed_forever(self) -> None:
        next_t = time.monotonic()
        while not self._feed_stop.is_set():
            if self.feeder.enabled.is_set():
                names, positions = self.feeder.state()
                stamp = self.now_ns()
                self.feeder.published_stamps.append(stamp)  # before publishing: a chunk may beat us
                self.publish_observation(stamp, names, positions,
                                         camera_offsets_ns=self.feeder.camera_offsets_ns)
            next_t += 1.0 / self.feeder.rate_hz
            self._feed_stop.wait(max(0.0, next_t - time.monotonic()))
            if time.monotonic() - next_t > 1.0:
                next_t = time.monotonic()

    def feed(self, on: bool = True, rate_hz: float | None = None,
             state: Callable[[], tuple[list[str], list[float]]] | None = None) -> None:
        if rate_hz is not None:
            self.feeder.rate_hz = rate_hz
        if state is not None:
            self.feeder.state = state
        (self.feeder.enabled.set if on else self.feeder.enabled.clear)()

    # --- outputs
    def chunk_count(self) -> int:
        with self.lock:
            return len(self.chunks)

    def wait_chunks(self, n: int, timeout_s: float = 60.0, after: int | None = None) -> list[Received]:
        """``n`` chunks received after index ``after`` (default: now)."""
        start = self.chunk_count() if after is None else after
        wait_for(lambda: self.chunk_count() >= start + n, timeout_s, f"{n} action chunks")
        with self.lock:
            return self.chunks[start:start + n]

    def matching_trajectory(self, chunk: ActionChunk, timeout_s: float = 30.0) -> JointTrajectory:
        """The trajectory published with ``chunk``: same stamp and length, and (when two chunks
        came from one observation, as happens when no new frame arrived between two control
        ticks) the one carrying the chunk's positions; else the newest with that stamp."""
        data = np.asarray(chunk.data, dtype=np.float64).reshape(chunk.chunk_size, -1)

        def find():
            with self.lock:
                same = [r.msg for r in reversed(self.trajectories)
                        if r.msg.header.stamp == chunk.header.stamp and len(r.msg.points) == chunk.chunk_size]
            carrying = [m for m in same if np.allclose([p.positions for p in m.points], data, atol=1e-5)]
            return (carrying or same or [None])[0]
        return wait_for(find, timeout_s, "the trajectory matching a chunk")

    def latest_diagnostics(self, after_ns: int = 0, timeout_s: float = 30.0) -> dict[str, str]:
        def find():
            with self.lock:
                for r in reversed(self.diagnostics):
                    if r.t_ns > after_ns:
                        status = r.msg.status[0]
                        values = {kv.key: kv.value for kv in status.values}
                        values["_level"] = int.from_bytes(status.level, "little") if isinstance(
                            status.level, bytes) else int(status.level)
                        values["_message"] = status.message
                        return values
            return None
        return wait_for(find, timeout_s, "a diagnostics message")

    def hold(self, on: bool = True) -> tuple[bool, str]:
        """Call the node's ~/hold service (true = hold, false = release): (success, message)."""
        response = self._call(self.hold_client, SetBool.Request(data=bool(on)))
        return response.success, response.message

    # --- parameters, as rqt_reconfigure calls them
    def _call(self, client: Any, request: Any, timeout_s: float = 30.0) -> Any:
        wait_for(lambda: client.wait_for_service(timeout_sec=0.1), timeout_s, f"service {client.srv_name}")
        future = client.call_async(request)
        wait_for(future.done, timeout_s, f"reply from {client.srv_name}")
        return future.result()

    def set_params(self, **values: Any) -> list[tuple[bool, str]]:
        request = SetParameters.Request()
        request.parameters = [ParameterMsg(name=k, value=param_value(v)) for k, v in values.items()]
        return [(r.successful, r.reason) for r in self._call(self.set_client, request).results]

    def set_params_atomically(self, **values: Any) -> tuple[bool, str]:
        """All or nothing (``ros2 param load`` style): values that must agree with each other,
        such as joint_names and the per-joint limits, change together."""
        request = SetParametersAtomically.Request()
        request.parameters = [ParameterMsg(name=k, value=param_value(v)) for k, v in values.items()]
        result = self._call(self.set_atomic_client, request).result
        return result.successful, result.reason

    def get_params(self, *names: str) -> list[Any]:
        request = GetParameters.Request(names=list(names))
        return [from_param_value(v) for v in self._call(self.get_client, request).values]

    def describe(self, *names: str) -> list[Any]:
        request = DescribeParameters.Request(names=list(names))
        return list(self._call(self.describe_client, request).descriptors)


def param_value(value: Any) -> ParameterValue:
    pv = ParameterValue()
    if isinstance(value, bool):
        pv.type, pv.bool_value = ParameterType.PARAMETER_BOOL, value
    elif isinstance(value, int):
        pv.type, pv.integer_value = ParameterType.PARAMETER_INTEGER, value
    elif isinstance(value, float):
        pv.type, pv.double_value = ParameterType.PARAMETER_DOUBLE, value
    elif isinstance(value, str):
        pv.type, pv.string_value = ParameterType.PARAMETER_STRING, value
    elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        pv.type, pv.string_array_value = ParameterType.PARAMETER_STRING_ARRAY, value
    elif isinstance(value, list):
        pv.type, pv.double_array_value = ParameterType.PARAMETER_DOUBLE_ARRAY, [float(v) for v in value]
    else:
        raise TypeError(f"unsupported parameter value {value!r}")
    return pv


def from_param_value(pv: ParameterValue) -> Any:
    t = pv.type
    if t == ParameterType.PARAMETER_BOOL:
        return pv.bool_value
    if t == ParameterType.PARAMETER_INTEGER:
        return pv.integer_value
    if t == ParameterType.PARAMETER_DOUBLE:
        return pv.double_value
    if t == ParameterType.PARAMETER_STRING:
        return pv.string_value
    if t == ParameterType.PARAMETER_STRING_ARRAY:
        return list(pv.string_array_value)
    if t == ParameterType.PARAMETER_DOUBLE_ARRAY:
        return list(pv.double_array_value)
    return None
