"""Camera decoders, registered by ROS 2 message type; and the joint-state reader.

A camera decoder turns one message into an RGB uint8 ``(H, W, 3)`` array at the camera's own
resolution, in two steps (see :class:`CameraDecoder`): an O(1) ``check`` in the subscription
callback, and ``decode`` once per inference for the frames an observation uses.

To add an input type (e.g. ``sensor_msgs/msg/CompressedImage``): write one module here with a
class that has ``msg_type``, ``check`` and ``decode``, and add one entry to
:data:`CAMERA_DECODERS`. The node's ``camera_message_type`` parameter offers every key
(its ``choices`` come from this table) and bag replay recognises camera topics by it.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

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
}
DEFAULT_CAMERA_TYPE = ImageDecoder.msg_type


def camera_decoder(msg_type: str) -> CameraDecoder:
    try:
        return CAMERA_DECODERS[msg_type]
    except KeyError:
        raise KeyError(f"no camera decoder for {msg_type!r}; registered: {sorted(CAMERA_DECODERS)}") from None


__all__ = ["CAMERA_DECODERS", "DEFAULT_CAMERA_TYPE", "JOINT_STATE_TYPE", "CameraDecoder", "camera_decoder",
           "joint_state_to_vector"]
