"""One observation assembler, for the live node and for bag replay.

Callbacks (or a bag reader) *offer* messages as they arrive:

* a camera frame is checked in O(1) (header, size, encoding: :meth:`CameraDecoder.check`) and
  buffered raw with its stamp; a bad one is rejected right there, naming the topic;
* a joint state is read by joint name at once (J values; the motion history and the
  hold-position command need every measurement) and buffered decoded.

Once per inference, :meth:`ObservationAssembler.assemble` asks the approximate-time sync for
the newest consistent set and decodes only the frames that set uses (a frame chosen again
by the next cycle is not decoded twice). A payload that fails to decode is dropped from the
buffer and reported, naming the topic, and the next best set is tried.

Zero header stamps are replaced by the arrival time (the node's clock; a bag's log time).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from reflex_ros.control.inputs import DEFAULT_CAMERA_TYPE, camera_decoder, joint_state_to_vector
from reflex_ros.control.stamps import stamp_to_ns
from reflex_ros.control.sync import ApproximateTimeSync
from reflex_ros.engine.types import Observation, ObservationError
from reflex_ros.vocab import JOINT_STATES_TOPIC

JOINT_STREAM = "joint_states"  # the sync's name for the joint-state stream (topics name the cameras)
CAMERA_CAPACITY = 16
JOINT_CAPACITY = 256  # a 500 Hz joint state must still hold the sample matching a late frame


@dataclass(frozen=True)
class _Offered:
    payload: Any  # a raw camera message, or the decoded joint positions
    ready_ns: int  # when it became available (arrival time)


@dataclass(frozen=True)
class AssembledObservation:
    """An observation and where its members came from (stamps and arrival times per stream)."""

    observation: Observation
    stamps_ns: dict[str, int]
    ready_ns: dict[str, int]

    @property
    def stamp_ns(self) -> int:
        return self.observation.stamp_ns

    def newest_input(self) -> str:
        """The stream whose member arrived last (what the observation waited for)."""
        return max(self.ready_ns, key=self.ready_ns.__getitem__)


class ObservationAssembler:
    """See the module docstring. Frames are decoded at the camera's native resolution: each
    model family resizes its own way inside the engine.

    Thread model: ``offer_*`` from the executor thread, ``assemble`` from one consumer (the
    control loop) only.
    """

    def __init__(self, camera_topics: Sequence[str], joint_names: Sequence[str], *,
                 camera_names: Sequence[str] | None = None,
                 joint_topic: str = JOINT_STATES_TOPIC, camera_type: str = DEFAULT_CAMERA_TYPE,
                 camera_capacity: int = CAMERA_CAPACITY,
                 joint_capacity: int = JOINT_CAPACITY,
                 on_zero_stamp: Callable[[str], None] | None = None) -> None:
        self.camera_topics = list(camera_topics)
        # the model camera each topic feeds: observations carry images by name, so a named
        # camera is never matched by position (None: a list in topic order)
        self.camera_names = list(camera_names) if camera_names else None
        if self.camera_names is not None and len(self.camera_names) != len(self.camera_topics):
            raise ValueError(f"camera_names {self.camera_names} and camera_topics {self.camera_topics} differ in length")
        self.joint_names = tuple(joint_names)
        self.joint_topic = joint_topic
        self.decoder = camera_decoder(camera_type)
        self._sync = ApproximateTimeSync(
            [*self.camera_topics, JOINT_STREAM],
            capacity={JOINT_STREAM: joint_capacity, **{t: camera_capacity for t in self.camera_topics}})
        self._decoded: dict[str, tuple[int, np.ndarray]] = {}  # topic -> (stamp, image) of the last decode
        self._on_zero_stamp = on_zero_stamp
        self._zero_warned: set[str] = set()
        self.last_state: np.ndarray | None = None

    def _stamp(self, msg: Any, topic: str, arrival_ns: int) -> int:
        stamp = stamp_to_ns(msg.header.stamp)
        if stamp == 0:
            if topic not in self._zero_warned:
                self._zero_warned.add(topic)
                if self._on_zero_stamp is not None:
                    self._on_zero_stamp(topic)
            return int(arrival_ns)
        return stamp

    def offer_camera(self, topic: str, msg: Any, arrival_ns: int) -> int:
        """O(1): check and buffer a frame; returns its stamp. Raises ObservationError."""
        self.decoder.check(msg, topic)
        stamp = self._stamp(msg, topic, arrival_ns)
        self._sync.add(topic, stamp, _Offered(msg, int(arrival_ns)))
        return stamp

    def offer_joint_state(self, msg: Any, arrival_ns: int) -> tuple[int, np.ndarray]:
        """Read the joints by name and buffer them; returns (stamp, positions). Raises
        ObservationError (missing joint, NaN)."""
        state = joint_state_to_vector(msg, self.joint_names, self.joint_topic)
        stamp = self._stamp(msg, self.joint_topic, arrival_ns)
        self._sync.add(JOINT_STREAM, stamp, _Offered(state, int(arrival_ns)))
        self.last_state = state
        return stamp, state

    def _image(self, topic: str, stamp: int, msg: Any) -> np.ndarray:
        cached = self._decoded.get(topic)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        image = self.decoder.decode(msg, topic)
        self._decoded[topic] = (stamp, image)
        return image

    def assemble(self, slop_ns: int, instruction: str
                 ) -> tuple[AssembledObservation | None, list[tuple[str, ObservationError]]]:
        """The newest synced observation (None if there is none) and the frames rejected on
        the way, as (topic, error); each is already dropped from the buffer."""
        rejected: list[tuple[str, ObservationError]] = []
        while True:
            synced = self._sync.latest_synced(int(slop_ns))
            if synced is None:
                return None, rejected
            images = []
            for topic in self.camera_topics:
                stamp = synced.stamps_ns[topic]
                try:
                    images.append(self._image(topic, stamp, synced.payloads[topic].payload))
                except ObservationError as exc:
                    self._sync.discard(topic, stamp)
                    rejected.append((topic, exc))
                    break
            else:
                by_name = dict(zip(self.camera_names, images, strict=True)) if self.camera_names else images
                observation = Observation(images=by_name, state=synced.payloads[JOINT_STREAM].payload,
                                          instruction=instruction, stamp_ns=synced.stamp_ns)
                ready = {name: offered.ready_ns for name, offered in synced.payloads.items()}
                return AssembledObservation(observation, dict(synced.stamps_ns), ready), rejected

    def clear(self) -> None:
        self._sync.clear()
        self._decoded.clear()
        self.last_state = None
