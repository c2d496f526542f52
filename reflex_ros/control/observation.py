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

Stamps are checked when offered (the live loop sets ``max_future_ns``): a message stamped more
than that ahead of its arrival, or older than the previous message on its topic, is refused
(:class:`StampError`), so a burst of future-stamped data can never become the "newest" set
the loop keeps choosing. ``assemble(now_ns=...)`` also evicts buffered messages that lie in
the future of the node's clock (after that clock went back, e.g. a simulator restart). A
``state_check`` (the loop's limit check) refuses a joint state before it is buffered.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from reflex_ros.control.input_rates import InputRates
from reflex_ros.control.inputs import AUTO_CAMERA_TYPE, camera_decoder, camera_type_for, joint_state_to_vector
from reflex_ros.control.inputs.joint_state import StateFault
from reflex_ros.control.stamps import stamp_to_ns
from reflex_ros.control.sync import ApproximateTimeSync
from reflex_ros.engine.types import Observation, ObservationError
from reflex_ros.vocab import JOINT_STATES_TOPIC


class StampError(ObservationError):
    """An input stamped too far in the future, or older than the previous one on its topic."""


def _s(ns: int) -> str:
    return f"{ns * 1e-9:.3f} s"


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
                 joint_topic: str = JOINT_STATES_TOPIC, camera_type: str | Mapping[str, str] = AUTO_CAMERA_TYPE,
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
        # per topic: "auto" reads a ".../compressed" topic as CompressedImage; a mapping names each
        self.camera_types = {t: camera_type_for(t, camera_type if isinstance(camera_type, str) else camera_type[t])
                             for t in self.camera_topics}
        self.decoders = {t: camera_decoder(kind) for t, kind in self.camera_types.items()}
        self.rates = InputRates([*self.camera_topics, self.joint_topic])  # received Hz, newest age
        self._sync = ApproximateTimeSync(
            [*self.camera_topics, JOINT_STREAM],
            capacity={JOINT_STREAM: joint_capacity, **{t: camera_capacity for t in self.camera_topics}})
        self._decoded: dict[str, tuple[int, np.ndarray]] = {}  # topic -> (stamp, image) of the last decode
        self._on_zero_stamp = on_zero_stamp
        self._zero_warned: set[str] = set()
        self.last_state: np.ndarray | None = None
        self.max_future_ns: int | None = None  # None: stamps are not checked (bag replay)
        self.state_check: Callable[[np.ndarray], None] | None = None  # raises StateFault
        self._newest: dict[str, int] = {}  # topic -> newest accepted stamp

    def _stamp(self, msg: Any, topic: str, arrival_ns: int) -> int:
        stamp = stamp_to_ns(msg.header.stamp)
        if stamp == 0:
            if topic not in self._zero_warned:
                self._zero_warned.add(topic)
                if self._on_zero_stamp is not None:
                    self._on_zero_stamp(topic)
            return int(arrival_ns)
        return stamp

    def _check_stamp(self, topic: str, stamp: int, arrival_ns: int) -> None:
        """Refuse a stamp from the future (beyond ``max_future_ns``) or one older than the
        previous message on the topic; the error names the topic and both clocks."""
        limit = self.max_future_ns
        if limit is None or arrival_ns <= 0:  # 0: a sim-time clock before its first /clock message
            return
        ahead = stamp - int(arrival_ns)
        if ahead > limit:
            raise StampError(f"{topic}: header.stamp {_s(stamp)} is {ahead * 1e-9:.3f} s ahead of the node clock "
                             f"{_s(arrival_ns)} (max_future_stamp_ms {limit * 1e-6:g}); message refused (clock skew "
                             "or a bad driver?)")
        newest = self._newest.get(topic)
        # a previous stamp that is itself in the future now means the node's clock went back
        # (a simulator restart): start over rather than refuse everything from then on
        if newest is not None and stamp < newest <= int(arrival_ns) + limit:
            raise StampError(f"{topic}: header.stamp {_s(stamp)} is older than the previous message's "
                             f"{_s(newest)} (node clock {_s(arrival_ns)}); message refused (out of order)")

    def offer_camera(self, topic: str, msg: Any, arrival_ns: int) -> int:
        """O(1): check and buffer a frame; returns its stamp. Raises ObservationError."""
        self.rates.received(topic, arrival_ns)
        self.decoders[topic].check(msg, topic)
        stamp = self._stamp(msg, topic, arrival_ns)
        self._check_stamp(topic, stamp, arrival_ns)
        self._sync.add(topic, stamp, _Offered(msg, int(arrival_ns)))
        self._newest[topic] = stamp
        self.rates.accepted(topic, stamp)
        return stamp

    def offer_joint_state(self, msg: Any, arrival_ns: int) -> tuple[int, np.ndarray]:
        """Read the joints by name and buffer them; returns (stamp, positions). Raises
        ObservationError (missing or duplicated joint, NaN, a glitch value, a bad stamp,
        StateFault from ``state_check``)."""
        self.rates.received(self.joint_topic, arrival_ns)
        state = joint_state_to_vector(msg, self.joint_names, self.joint_topic)
        stamp = self._stamp(msg, self.joint_topic, arrival_ns)
        self._check_stamp(self.joint_topic, stamp, arrival_ns)
        if self.state_check is not None:
            self.state_check(state)
        self._sync.add(JOINT_STREAM, stamp, _Offered(state, int(arrival_ns)))
        self._newest[self.joint_topic] = stamp
        self.rates.accepted(self.joint_topic, stamp)
        self.last_state = state
        return stamp, state

    def _image(self, topic: str, stamp: int, msg: Any) -> np.ndarray:
        cached = self._decoded.get(topic)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        image = self.decoders[topic].decode(msg, topic)
        self._decoded[topic] = (stamp, image)
        return image

    def assemble(self, slop_ns: int, instruction: str, now_ns: int | None = None
                 ) -> tuple[AssembledObservation | None, list[tuple[str, ObservationError]]]:
        """The newest synced observation (None if there is none) and the frames rejected on
        the way, as (topic, error); each is already dropped from the buffer. With ``now_ns``
        (and ``max_future_ns``), messages stamped beyond ``now_ns + max_future_ns`` are evicted
        first."""
        if now_ns is not None and self.max_future_ns is not None:
            self._sync.evict_newer_than(int(now_ns) + self.max_future_ns)
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
        self._newest.clear()
        self.last_state = None


__all__ = ["JOINT_STREAM", "AssembledObservation", "ObservationAssembler", "StampError", "StateFault"]
