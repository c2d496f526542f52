"""``sensor_msgs/msg/Image`` -> RGB uint8 ``(H, W, 3)`` at the camera's own resolution.

Duck-typed on the message fields (``encoding``, ``height``, ``width``, ``step``, ``data``), so
rclpy messages (the node) and rosbags-deserialized ones (bag replay) take the same path.
:meth:`ImageDecoder.check` is O(1) (header, size, encoding: what a subscription callback can
afford for every frame); :meth:`ImageDecoder.decode` touches the pixels and runs once per
inference, for the frames the synced observation uses. Both raise
:class:`~reflex_ros.engine.types.ObservationError` naming the topic and what was expected.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from reflex_ros.engine.types import ObservationError

MSG_TYPE = "sensor_msgs/msg/Image"

# encoding -> (channels, channel indices that give R, G, B). Untyped OpenCV encodings
# (8UC3...) carry no colour order, so they are refused rather than guessed.
_ENCODINGS: dict[str, tuple[int, tuple[int, int, int]]] = {
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, (0, 0, 0)),
}
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_ENCODINGS)


def _as_uint8(data: Any) -> np.ndarray:
    """A flat uint8 view of ``data`` (bytes, array.array('B'), list or ndarray), no copy
    where the buffer protocol allows it."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8) if data.dtype.itemsize == 1 else data.astype(np.uint8)
    if isinstance(data, list | tuple):
        return np.asarray(data, dtype=np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


class ImageDecoder:
    """rgb8, bgr8, rgba8, bgra8 and mono8 (alpha dropped, mono replicated), ``step`` row
    padding honoured."""

    msg_type = MSG_TYPE

    def check(self, msg: Any, topic: str) -> None:
        encoding = str(msg.encoding)
        spec = _ENCODINGS.get(encoding)
        if spec is None:
            raise ObservationError(
                f"{topic}: unsupported image encoding {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}")
        height, width, step = int(msg.height), int(msg.width), int(msg.step)
        if height <= 0 or width <= 0:
            raise ObservationError(f"{topic}: empty image ({width}x{height}, encoding {encoding})")
        row_bytes = width * spec[0]
        if step < row_bytes:
            raise ObservationError(
                f"{topic}: step {step} is smaller than width*channels = {row_bytes} "
                f"for a {width}x{height} {encoding} image")
        size = len(msg.data)
        if size != step * height:
            raise ObservationError(
                f"{topic}: {encoding} image {width}x{height} (step {step}) has {size} bytes, "
                f"expected {step * height}")

    def decode(self, msg: Any, topic: str) -> np.ndarray:
        self.check(msg, topic)  # O(1); the payload may have been replaced since it was offered
        channels, rgb_index = _ENCODINGS[str(msg.encoding)]
        height, width, step = int(msg.height), int(msg.width), int(msg.step)
        pixels = _as_uint8(msg.data).reshape(height, step)[:, :width * channels].reshape(height, width, channels)
        if channels == 1:
            return np.repeat(pixels, 3, axis=2)
        if channels == 3 and rgb_index == (0, 1, 2):
            return pixels
        return pixels[:, :, list(rgb_index)]
