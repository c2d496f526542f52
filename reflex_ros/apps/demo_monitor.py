"""The demo's observer: a plain rclpy node recording the closed loop from its traffic.

It subscribes to what a user would watch (the policy node's ``~/action_chunk`` and
``~/joint_trajectory``, ``/diagnostics``, ``/joint_states`` and the camera) and fills a
:class:`~reflex_ros.apps.loop_report.LoopRecording`. It runs in its own rclpy context with its
own executor thread, so it coexists with the runner's lifecycle client in the same process
and never installs signal handlers (the demo owns Ctrl-C).
"""

from __future__ import annotations

import threading

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory

from reflex_ros.apps.loop_report import ChunkRecord, LoopRecording, TrajectoryRecord
from reflex_ros.control.jtc import parse_joint_trajectory
from reflex_ros.control.stamps import stamp_to_ns
from reflex_ros.msg import ActionChunk, EpisodeStatus
from reflex_ros.ros.runner import node_topic
from reflex_ros.vocab import (
    ACTION_CHUNK_TOPIC,
    DEFAULT_CAMERA_TOPIC,
    DIAGNOSTICS_TOPIC,
    JOINT_STATES_TOPIC,
    NODE_NAME,
)
from reflex_ros.vocab import TRAJECTORY_TOPIC as PRIVATE_TRAJECTORY_TOPIC


class LoopMonitor:
    """Records the loop between ``start()`` and ``close()``; :meth:`snapshot` copies it."""

    def __init__(
        self,
        joint_names: tuple[str, ...],
        *,
        policy_node: str = f"/{NODE_NAME}",
        joint_states_topic: str = JOINT_STATES_TOPIC,
        image_topic: str = DEFAULT_CAMERA_TOPIC,
        use_sim_time: bool = False,
        episode_topic: str | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._rec = LoopRecording(tuple(joint_names))
        self._last_image_stamp_ns = 0
        self._last_joint_stamp_ns = 0
        self._episodes: list[EpisodeStatus] = []  # the sim's ~/episode, in arrival order
        self._status_prefix = policy_node.rsplit("/", 1)[-1] + ":"
        self._context = Context()
        rclpy.init(context=self._context, signal_handler_options=SignalHandlerOptions.NO)
        # With use_sim_time the receive stamps (chunk arrival) are sim time, like every stamp
        # the sim and the policy node produce.
        self.node = rclpy.create_node(
            "reflex_demo_monitor",
            context=self._context,
            start_parameter_services=False,
            enable_rosout=False,
            parameter_overrides=[Parameter("use_sim_time", Parameter.Type.BOOL, use_sim_time)],
        )
        reliable = QoSProfile(
            depth=50, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST
        )
        name, namespace = policy_node.rsplit("/", 1)[-1], policy_node.rsplit("/", 1)[0]
        self.node.create_subscription(
            ActionChunk, node_topic(ACTION_CHUNK_TOPIC, name, namespace), self._on_chunk, reliable)
        self.node.create_subscription(
            JointTrajectory, node_topic(PRIVATE_TRAJECTORY_TOPIC, name, namespace), self._on_trajectory, reliable)
        self.node.create_subscription(DiagnosticArray, DIAGNOSTICS_TOPIC, self._on_diagnostics, reliable)
        self.node.create_subscription(JointState, joint_states_topic, self._on_joint_state, reliable)
        self.node.create_subscription(Image, image_topic, self._on_image, qos_profile_sensor_data)
        if episode_topic:
            self.node.create_subscription(EpisodeStatus, episode_topic, self._on_episode, reliable)
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, name="demo-monitor", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while self._context.ok():
            try:
                self._executor.spin_once(timeout_sec=0.1)
            except Exception:  # context shut down under us: we are closing
                if not self._context.ok():
                    return
                raise

    def _now_ns(self) -> int:
        return self.node.get_clock().now().nanoseconds

    def now_s(self) -> float:
        """The loop's clock (ROS time: wall, or sim time with use_sim_time)."""
        return self._now_ns() / 1e9

    # -- callbacks (executor thread); a malformed message is skipped, never fatal
    def _on_chunk(self, msg: ActionChunk) -> None:
        try:
            data = np.asarray(msg.data, dtype=np.float64).reshape(msg.chunk_size, msg.action_dim)
            record = ChunkRecord(
                recv_ns=self._now_ns(),
                stamp_ns=stamp_to_ns(msg.header.stamp),
                skipped_steps=int(msg.skipped_steps),
                dt_ns=stamp_to_ns(msg.dt),
                latency_compensation_ms=float(msg.latency_compensation_ms),
                inference_ms=float(msg.inference_ms),
                positions=self._columns(list(msg.joint_names), data),
            )
        except (ValueError, KeyError):
            return
        with self._lock:
            self._rec.chunks.append(record)
            self._rec.model_hash = str(msg.model_hash) or self._rec.model_hash

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        recv = self._now_ns()
        try:
            trajectory = parse_joint_trajectory(msg)
        except ValueError:
            return
        positions = trajectory.columns(self._rec.joint_names)
        if positions.size == 0 or np.isnan(positions).any():
            return  # empty, or lacks joints of the recording
        record = TrajectoryRecord(recv_ns=recv, start_ns=trajectory.start_ns or recv,
                                  offsets_ns=trajectory.times_from_start_ns, positions=positions)
        with self._lock:
            self._rec.trajectories.append(record)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith(self._status_prefix):
                values = {kv.key: kv.value for kv in status.values}
                with self._lock:
                    self._rec.diagnostics = values

    def _on_joint_state(self, msg: JointState) -> None:
        try:
            index = {n: i for i, n in enumerate(msg.name)}
            pos = np.array([msg.position[index[n]] for n in self._rec.joint_names], dtype=np.float64)
        except (KeyError, IndexError):
            return
        with self._lock:
            self._rec.meas_t_ns.append(stamp_to_ns(msg.header.stamp))
            self._rec.meas_pos.append(pos)
            self._last_joint_stamp_ns = max(self._last_joint_stamp_ns, self._rec.meas_t_ns[-1])

    def _on_image(self, msg: Image) -> None:
        stamp = stamp_to_ns(msg.header.stamp)
        age_ms = (self._now_ns() - stamp) / 1e6
        with self._lock:
            self._rec.images += 1
            self._rec.image_age_ms.append(age_ms)
            self._last_image_stamp_ns = max(self._last_image_stamp_ns, stamp)

    def _on_episode(self, msg: EpisodeStatus) -> None:
        with self._lock:
            self._episodes.append(msg)

    def _columns(self, names: list[str], data: np.ndarray) -> np.ndarray:
        """Columns in the recording's joint order (KeyError if a joint is missing)."""
        cols = [names.index(n) if n in names else None for n in self._rec.joint_names]
        if any(c is None for c in cols):
            raise KeyError(f"message lacks joints of {self._rec.joint_names}")
        return data[:, cols]

    # -- reading
    def snapshot(self) -> LoopRecording:
        with self._lock:
            return LoopRecording(
                self._rec.joint_names,
                list(self._rec.chunks),
                list(self._rec.trajectories),
                list(self._rec.meas_t_ns),
                list(self._rec.meas_pos),
                dict(self._rec.diagnostics),
                self._rec.images,
                list(self._rec.image_age_ms),
                self._rec.model_hash,
            )

    def counts(self) -> tuple[int, int, int]:
        """(joint states, images, chunks) so far: cheap, for waiting and the status line."""
        with self._lock:
            return len(self._rec.meas_t_ns), self._rec.images, len(self._rec.chunks)

    def trajectory_count(self) -> int:
        with self._lock:
            return len(self._rec.trajectories)

    def input_stamps_ns(self) -> tuple[int, int]:
        """(newest joint state stamp, newest image stamp) received."""
        with self._lock:
            return self._last_joint_stamp_ns, self._last_image_stamp_ns

    def episode_statuses(self, seed: int | None = None) -> list[EpisodeStatus]:
        """The sim's episode statuses received so far (of ``seed`` only, when given)."""
        with self._lock:
            return [m for m in self._episodes if seed is None or m.seed == seed]

    def latest_chunk(self) -> ChunkRecord | None:
        with self._lock:
            return self._rec.chunks[-1] if self._rec.chunks else None

    def diagnostics(self) -> dict[str, str]:
        with self._lock:
            return dict(self._rec.diagnostics)

    def close(self) -> None:
        rclpy.try_shutdown(context=self._context)
        self._thread.join(timeout=5.0)
        try:
            self._executor.shutdown()
            self.node.destroy_node()
        except Exception:  # noqa: BLE001 - already torn down by the context shutdown
            pass
