"""Camera decoders, registered by ROS 2 message type; and the joint-state reader.

A camera decoder turns one message into an RGB uint8 ``(H, W, 3)`` array at the camera's own
resolution, in two steps (see :class:`CameraDecoder`): an O(1) ``check`` in the subscription
callback, and ``decode`` once per inference for the frames an observation uses.

To add an input type: write one module here with a class that has ``msg_type``, ``check``
and ``decode``, and add one entry to :data:`CAMERA_DECODERS`. The node's
``camera_message_type`` parameter offers every key (its ``choices`` come from this table, plus
``auto``) and bag replay recognises camera topics by it.

``auto`` (the default) picks per topic: a topic ending in ``/compressed`` (image_transport's
name for a camera's compressed stream) is ``sensor_msgs/msg/CompressedImage``, any other
``sensor_msgs/msg/Image`` (:func:`camera_type_for`).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from reflex_ros.control.inputs.compressed import TOPIC_SUFFIX as COMPRESSED_SUFFIX
from reflex_ros.control.inputs.compressed import CompressedImageDecoder
from reflex_ros.control.inputs.image import ImageDecoder
from reflex_ros.control.inputs.joint_state import MSG_TYPE as JOINT_STATE_TYPE
from reflex_ros.control.inputs.joint_state import joint_state_to_vector


class CameraDecoder(Protocol):
    msg_type: str  # ROS 2 type name, "package/msg/Name" (what rosbags and ros2 topic show)

    def check(self, msg: Any, topic: str) -> None:
        """O(1) checks (header, size, encoding); raise ObservationError naming ``topic``."""

    def decode(self, msg: Any, topic: str) -> np.ndarray:
        """RGB uint8 ``(H, W, 3)``; raise ObservationError naming ``topic`` on a corrupt payload."""


CAMERA_DECODERS: dict[str, CameraDecoder] = {
    ImageDecoder.msg_type: ImageDecoder(),
    CompressedImageDecoder.msg_type: CompressedImageDecoder(),
}
AUTO_CAMERA_TYPE = "auto"  # per topic: ".../compressed" -> CompressedImage, else Image
DEFAULT_CAMERA_TYPE = ImageDecoder.msg_type
CAMERA_TYPE_CHOICES: tuple[str, ...] = (AUTO_CAMERA_TYPE, *CAMERA_DECODERS)


def camera_type_for(topic: str, configured: str = AUTO_CAMERA_TYPE) -> str:
    """The message type a camera topic is read as: ``configured`` unless it is ``auto``."""
    if configured != AUTO_CAMERA_TYPE:
        return configured
    return CompressedImageDecoder.msg_type if topic.rstrip("/").endswith(COMPRESSED_SUFFIX) else DEFAULT_CAMERA_TYPE


def camera_decoder(msg_type: str) -> CameraDecoder:
    try:
        return CAMERA_DECODERS[msg_type]
    except KeyError:
        raise KeyError(f"no camera decoder for {msg_type!r}; registered: {sorted(CAMERA_DECODERS)}") from None


__all__ = ["AUTO_CAMERA_TYPE", "CAMERA_DECODERS", "CAMERA_TYPE_CHOICES", "DEFAULT_CAMERA_TYPE", "JOINT_STATE_TYPE",
           "CameraDecoder", "camera_decoder", "camera_type_for", "joint_state_to_vector"]
