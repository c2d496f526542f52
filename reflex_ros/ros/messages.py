"""PlannedChunk -> JointTrajectory / ActionChunk, built fast.

rclpy validates every element of a Python list assigned to a float64[] field; an
``array.array`` of the right typecode is taken as is. Building a 50-point trajectory this way
costs ~0.3 ms instead of several, which matters on the observation-to-publish path.
"""

from __future__ import annotations

import array
from collections.abc import Sequence

import numpy as np
from builtin_interfaces.msg import Duration, Time
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from reflex_ros.msg import ActionChunk
from reflex_ros.ros.chunking import PlannedChunk
from reflex_ros.ros.conversions import ns_to_sec_nanosec


def f64_array(values: np.ndarray) -> array.array:
    out = array.array("d")
    out.frombytes(np.ascontiguousarray(values, dtype=np.float64).tobytes())
    return out


def f32_array(values: np.ndarray) -> array.array:
    out = array.array("f")
    out.frombytes(np.ascontiguousarray(values, dtype=np.float32).tobytes())
    return out


def time_msg(stamp_ns: int) -> Time:
    sec, nanosec = ns_to_sec_nanosec(stamp_ns)
    return Time(sec=sec, nanosec=nanosec)


def duration_msg(ns: int) -> Duration:
    sec, nanosec = ns_to_sec_nanosec(ns)
    return Duration(sec=sec, nanosec=nanosec)


def trajectory_msg(plan: PlannedChunk, joint_names: Sequence[str], frame_id: str = "") -> JointTrajectory:
    """Point j at ``time_from_start = j*dt`` from ``header.stamp = plan.stamp_ns``.

    ros2_control's JTC takes header.stamp as the trajectory start, so the controller
    executes row j at exactly the time the chunk meant it for.
    """
    msg = JointTrajectory()
    msg.header.stamp = time_msg(plan.stamp_ns)
    msg.header.frame_id = frame_id
    msg.joint_names = list(joint_names)
    points = []
    for j in range(plan.positions.shape[0]):
        point = JointTrajectoryPoint()
        point.positions = f64_array(plan.positions[j])
        point.velocities = f64_array(plan.velocities[j])
        point.time_from_start = duration_msg(j * plan.dt_ns)
        points.append(point)
    msg.points = points
    return msg


class TrajectoryBuilder:
    """:func:`trajectory_msg` for the control loop: reuses its point objects and
    time_from_start durations across chunks (4-8x cheaper than fresh ones).

    Safe because ``publish`` serializes synchronously: a built message is dead once
    published. One builder per publishing thread; not for messages that are kept.
    """

    def __init__(self) -> None:
        self._points: list[JointTrajectoryPoint] = []
        self._durations: list[Duration] = []
        self._durations_dt_ns = -1

    def build(self, plan: PlannedChunk, joint_names: Sequence[str], frame_id: str = "") -> JointTrajectory:
        n, n_joints = plan.positions.shape
        while len(self._points) < n:
            self._points.append(JointTrajectoryPoint())
        if plan.dt_ns != self._durations_dt_ns or len(self._durations) < n:
            self._durations = [duration_msg(j * plan.dt_ns) for j in range(max(n, len(self._durations)))]
            self._durations_dt_ns = plan.dt_ns
        pos = np.ascontiguousarray(plan.positions, dtype=np.float64).tobytes()
        vel = np.ascontiguousarray(plan.velocities, dtype=np.float64).tobytes()
        width = 8 * n_joints
        for j in range(n):
            point = self._points[j]
            p = array.array("d")
            p.frombytes(pos[j * width:(j + 1) * width])
            v = array.array("d")
            v.frombytes(vel[j * width:(j + 1) * width])
            point.positions = p
            point.velocities = v
            point.time_from_start = self._durations[j]
        msg = JointTrajectory()
        msg.header.stamp = time_msg(plan.stamp_ns)
        msg.header.frame_id = frame_id
        msg.joint_names = list(joint_names)
        msg.points = self._points[:n]
        return msg


def hold_trajectory_msg(positions: np.ndarray, joint_names: Sequence[str], dt_ns: int) -> JointTrajectory:
    """One point at the current positions, zero velocity, reached one control period from
    now (header.stamp 0 = "start on arrival" for a JTC): replaces whatever chunk a
    controller is still executing, without a jump."""
    msg = JointTrajectory()
    msg.joint_names = list(joint_names)
    point = JointTrajectoryPoint()
    point.positions = f64_array(positions)
    point.velocities = f64_array(np.zeros(len(joint_names)))
    point.time_from_start = duration_msg(dt_ns)
    msg.points = [point]
    return msg


def action_chunk_msg(plan: PlannedChunk, joint_names: Sequence[str], *, latency_compensation_ms: float,
                     inference_ms: float, nfe: int, model_hash: str) -> ActionChunk:
    """The trajectory's data as one row-major block plus the timing that produced it."""
    msg = ActionChunk()
    msg.header.stamp = time_msg(plan.stamp_ns)
    msg.joint_names = list(joint_names)
    msg.chunk_size = int(plan.positions.shape[0])
    msg.action_dim = int(plan.positions.shape[1])
    msg.data = f32_array(plan.positions.reshape(-1))
    msg.dt = duration_msg(plan.dt_ns)
    msg.skipped_steps = int(plan.skipped_steps)
    msg.latency_compensation_ms = float(latency_compensation_ms)
    msg.inference_ms = float(inference_ms)
    msg.nfe = int(nfe)
    msg.model_hash = str(model_hash)
    return msg
