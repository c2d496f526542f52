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


class StateFault(ObservationError):
    """A joint reading that is physically implausible: non-finite, beyond any joint's range
    (``MAX_ABS_POSITION``), or (the control loop's check) beyond this robot's limits by more
    than the tolerance. Refused before it reaches the model; /diagnostics reports ERROR."""

# No joint reads more than this (rad or m): a larger finite value is a glitch, never a
# position. It also keeps every accepted value representable in float32 (1e300 is finite in
# float64 and inf in float32, which would reach the model as inf).
MAX_ABS_POSITION = 1e6


@lru_cache(maxsize=64)
def _joint_index(names: tuple[str, ...], joint_names: tuple[str, ...]) -> np.ndarray | None:
    """Where each of ``joint_names`` sits in a JointState's ``names`` (None if one is missing
    or a name is duplicated). Cached: a driver publishes the same names in the same order
    every time."""
    index = {name: i for i, name in enumerate(names)}
    if len(index) != len(names) or any(joint not in index for joint in joint_names):
        return None
    return np.array([index[joint] for joint in joint_names], dtype=np.intp)


def joint_state_to_vector(msg: Any, joint_names: list[str] | tuple[str, ...],
                          topic: str = "<joint_states>") -> np.ndarray:
    """Positions of ``joint_names``, in that order, as float32.

    Taken by name, never by index: drivers publish joints in any order and often more
    joints than the policy drives (a silent joint-order mismatch produces garbage actions).
    Refused (ObservationError naming the joint): a missing joint, a name listed twice (which
    value would be the joint's?), a non-finite value, and one beyond ``MAX_ABS_POSITION``.
    """
    names = tuple(msg.name)
    positions = np.asarray(msg.position, dtype=np.float64)
    if positions.size != len(names):
        raise ObservationError(f"{topic}: JointState has {len(names)} names but {positions.size} positions")
    index = _joint_index(names, tuple(joint_names))
    if index is not None:
        values = positions[index]
        if (np.abs(values) <= MAX_ABS_POSITION).all():  # False for NaN too
            return values.astype(np.float32)
    return _joint_state_slow(names, positions, joint_names, topic)  # raises the precise error


def _joint_state_slow(names: tuple[str, ...], positions: np.ndarray,
                      joint_names: list[str] | tuple[str, ...], topic: str) -> np.ndarray:
    seen: set[str] = set()
    duplicated = sorted({name for name in names if name in seen or seen.add(name)})
    if duplicated:
        raise ObservationError(f"{topic}: JointState lists joint(s) {duplicated} more than once; message refused "
                               f"(names {list(names)})")
    index = {name: i for i, name in enumerate(names)}
    out = np.empty(len(joint_names), dtype=np.float32)
    for j, joint in enumerate(joint_names):
        i = index.get(joint)
        if i is None:
            raise ObservationError(f"{topic}: joint {joint!r} missing from JointState; it has {list(names)}")
        value = positions[i]
        if not np.isfinite(value):
            raise StateFault(f"{topic}: joint {joint!r} position is {value}")
        if abs(value) > MAX_ABS_POSITION:
            raise StateFault(f"{topic}: joint {joint!r} position is {value:g}, beyond any joint's range "
                                   f"(|position| <= {MAX_ABS_POSITION:g}); a sensor glitch, message refused")
        out[j] = value
    return out
