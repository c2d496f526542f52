"""Time stamps as integer nanoseconds: the one set of helpers every layer uses.

``builtin_interfaces/Time`` and ``/Duration`` have the same two fields, and rclpy messages and
rosbags-deserialized ones spell them the same way, so one reader serves the node, the sim,
bag replay and the demo's monitor. Building rclpy ``Time``/``Duration`` messages from these is
:func:`reflex_ros.ros.messages.time_msg` / ``duration_msg`` (the only place that needs rclpy).
"""

from __future__ import annotations

from typing import Any

NS_PER_S = 1_000_000_000


def stamp_to_ns(stamp: Any) -> int:
    """``builtin_interfaces/Time`` or ``/Duration`` (rclpy or rosbags) -> integer nanoseconds."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def ns_to_sec_nanosec(ns: int) -> tuple[int, int]:
    """Integer nanoseconds -> (sec, nanosec) for filling a ``Time``/``Duration``.

    Floor division keeps nanosec in [0, 1e9) for negative times too, as ROS requires.
    """
    sec, nanosec = divmod(int(ns), NS_PER_S)
    return sec, nanosec
