"""sensor_msgs -> numpy, duck-typed on the message field names.

The functions read only attributes (``encoding``, ``height``, ``step``, ``name``,
``position``, ``sec``/``nanosec``...), never message classes, so the same code serves the
live node (rclpy messages) and bag replay (rosbags-deserialized messages). No rclpy import
here: the replay tool must run without a ROS installation.

Every rejection raises :class:`ObservationError` naming the topic and what was expected, so
the node can log one throttled line and drop the message instead of crashing.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from reflex_ros.engine.types import ObservationError

# encoding -> (channels, channel indices that give R, G, B). Untyped OpenCV encodings
# (8UC3...) carry no colour order, so they are refused rather than guessed.
_ENCODINGS: dict[str, tuple[int, tuple[int, int, int]]] = {
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, (0, 0, 0)),
}
SUPPORTED_ENCODINGS: tuple[str, ...] = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")


def stamp_to_ns(stamp: Any) -> int:
    """``builtin_interfaces/Time`` (rclpy or rosbags) -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_sec_nanosec(stamp_ns: int) -> tuple[int, int]:
    """Integer nanoseconds -> (sec, nanosec) for filling a ``builtin_interfaces/Time``.

    Floor division keeps nanosec in [0, 1e9) for negative times too, as ROS requires.
    """
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return sec, nanosec


def _as_uint8(data: Any) -> np.ndarray:
    """A flat uint8 view of ``data`` (bytes, array.array('B'), list or ndarray), no copy
    where the buffer protocol allows it."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8) if data.dtype.itemsize == 1 else data.astype(np.uint8)
    if isinstance(data, list | tuple):
        return np.asarray(data, dtype=np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


def image_to_rgb(msg: Any, size: int, topic: str = "<image>") -> np.ndarray:
    """Decode a ``sensor_msgs/Image`` to a ``(size, size, 3)`` uint8 RGB array.

    Accepts rgb8, bgr8, rgba8, bgra8 and mono8 (alpha dropped, mono replicated), honours
    ``step`` row padding, and resizes bilinearly (aspect ratio is not preserved: the
    model's input is square, and stretching keeps every pixel of the field of view).
    """
    encoding = str(msg.encoding)
    spec = _ENCODINGS.get(encoding)
    if spec is None:
        raise ObservationError(
            f"{topic}: unsupported image encoding {encoding!r}; "
            f"supported: {', '.join(SUPPORTED_ENCODINGS)}"
        )
    channels, rgb_index = spec
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ObservationError(f"{topic}: empty image ({width}x{height}, encoding {encoding})")
    row_bytes = width * channels
    if step < row_bytes:
        raise ObservationError(
            f"{topic}: step {step} is smaller than width*channels = {row_bytes} "
            f"for a {width}x{height} {encoding} image"
        )
    data = _as_uint8(msg.data)
    expected = step * height
    if data.size != expected:
        raise ObservationError(
            f"{topic}: {encoding} image {width}x{height} (step {step}) has {data.size} bytes, "
            f"expected {expected}"
        )
    pixels = data.reshape(height, step)[:, :row_bytes].reshape(height, width, channels)
    if channels == 1:
        rgb = np.repeat(pixels, 3, axis=2)
    elif rgb_index == (0, 1, 2) and channels == 3:
        rgb = pixels
    else:
        rgb = pixels[:, :, list(rgb_index)]
    return resize_rgb(rgb, size)


@lru_cache(maxsize=32)
def _bilinear_table(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (lo, hi) and the weight of hi for resizing one axis src -> dst.

    Half-pixel centres, as OpenCV / PIL use, so a resize does not shift the image.
    Cached: a camera stream keeps one size, so the table is built once.
    """
    pos = (np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5
    pos = np.clip(pos, 0.0, src - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, src - 1)
    w = (pos - lo).astype(np.float32)
    return lo, hi, w


def resize_rgb(rgb: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of an ``(H, W, 3)`` uint8 image to ``(size, size, 3)`` (numpy only)."""
    height, width = rgb.shape[:2]
    if height == size and width == size:
        return np.ascontiguousarray(rgb)
    ylo, yhi, wy = _bilinear_table(height, size)
    xlo, xhi, wx = _bilinear_table(width, size)
    img = rgb.astype(np.float32)
    rows = img[ylo] * (1.0 - wy)[:, None, None] + img[yhi] * wy[:, None, None]
    out = rows[:, xlo] * (1.0 - wx)[None, :, None] + rows[:, xhi] * wx[None, :, None]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


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
    """Positions of ``joint_names``, in that order, from a ``sensor_msgs/JointState``.

    Taken by name, never by index: drivers publish joints in any order and often more
    joints than the policy drives (a silent joint-order mismatch produces garbage actions).
    """
    names = tuple(msg.name)
    positions = np.asarray(msg.position, dtype=np.float64)
    if positions.size != len(names):
        raise ObservationError(
            f"{topic}: JointState has {len(names)} names but {positions.size} positions"
        )
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
            raise ObservationError(
                f"{topic}: joint {joint!r} missing from JointState; it has {list(names)}"
            )
        value = positions[i]
        if not np.isfinite(value):
            raise ObservationError(f"{topic}: joint {joint!r} position is {value}")
        out[j] = value
    return out
