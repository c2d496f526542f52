"""``sensor_msgs/msg/JointState`` -> the positions of the policy's joints, by name.

Decoded eagerly in the subscription callback (J values; the motion history and the
hold-position command need every measurement), unlike camera frames.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from reflex_ros.engine.types import ObservationError

MSG_TYPE = "sensor_msgs/msg/JointState"


@lru_cache(maxsize=64)
def _joint_index(names: tuple[str, ...], joint_names: tuple[str, ...]) -> np.ndarray | None:
    """Where each of ``joint_names`` sits in a JointState's ``names`` (None if one is missing).
    Cached: a driver publishes the same names in the same order every time."""
    index = {name: i for i, name in enumerate(names)}
    if any(joint not in index for joint in joint_names):
        return None
    return np.array([index[joint] for joint in joint_names], dtype=np.intp)


def joint_state_to_vector(msg: Any, joint_names: list[str] | tuple[str, ...],
                          topic: str = "<joint_states>") -> np.ndarray:
    """Positions of ``joint_names``, in that order, as float32.

    Taken by name, never by index: drivers publish joints in any order and often more
    joints than the policy drives (a silent joint-order mismatch produces garbage actions).
    """
    names = tuple(msg.name)
    positions = np.asarray(msg.position, dtype=np.float64)
    if positions.size != len(names):
        raise ObservationError(f"{topic}: JointState has {len(names)} names but {positions.size} positions")
    index = _joint_index(names, tuple(joint_names))
    if index is not None:
        values = positions[index]
        if np.isfinite(values).all():
            return values.astype(np.float32)
    return _joint_state_slow(names, positions, joint_names, topic)  # raises the precise error


def _joint_state_slow(names: tuple[str, ...], positions: np.ndarray,
                      joint_names: list[str] | tuple[str, ...], topic: str) -> np.ndarray:
    index = {name: i for i, name in enumerate(names)}
    out = np.empty(len(joint_names), dtype=np.float32)
    for j, joint in enumerate(joint_names):
        i = index.get(joint)
        if i is None:
            raise ObservationError(f"{topic}: joint {joint!r} missing from JointState; it has {list(names)}")
        value = positions[i]
        if not np.isfinite(value):
            raise ObservationError(f"{topic}: joint {joint!r} position is {value}")
        out[j] = value
    return out
