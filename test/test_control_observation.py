"""The observation assembler (control/observation.py) the node and bag replay share: cheap
checks when a message is offered, decoding once per inference for the frames a synced
observation uses, corrupt payloads dropped with the topic named."""

from __future__ import annotations

import numpy as np
import pytest
from _ros_harness import joint_state, rgb_image

from reflex_ros.control.observation import JOINT_STREAM, ObservationAssembler
from reflex_ros.engine.types import ObservationError

JOINTS = ["a", "b"]
CAMS = ["/cam/front", "/cam/wrist"]
MS = 1_000_000
T0 = 1_000_000 * MS


def _assembler(warned: list | None = None) -> ObservationAssembler:
    return ObservationAssembler(CAMS, JOINTS, joint_topic="/joints",
                                on_zero_stamp=(warned.append if warned is not None else None))


def _offer_set(asm: ObservationAssembler, stamp: int, positions=(0.1, 0.2), size: int = 8) -> None:
    asm.offer_joint_state(joint_state(stamp, JOINTS, positions), arrival_ns=stamp + 1 * MS)
    for i, cam in enumerate(CAMS):
        asm.offer_camera(cam, rgb_image(stamp + i * MS, size, seed=stamp // MS + i), arrival_ns=stamp + 2 * MS)


def test_assembles_the_newest_synced_set_at_native_resolution() -> None:
    asm = _assembler()
    _offer_set(asm, T0)
    _offer_set(asm, T0 + 40 * MS, positions=(0.3, 0.4))
    assembled, rejected = asm.assemble(slop_ns=5 * MS, instruction="pick")
    assert rejected == []
    obs = assembled.observation
    assert obs.stamp_ns == T0 + 41 * MS  # the newest member (the wrist frame)
    assert obs.instruction == "pick" and obs.state.tolist() == pytest.approx([0.3, 0.4])
    expected = np.frombuffer(bytes(rgb_image(T0 + 40 * MS, 8, seed=T0 // MS + 40).data), np.uint8).reshape(8, 8, 3)
    np.testing.assert_array_equal(obs.images[0], expected)
    assert assembled.stamps_ns == {"/cam/front": T0 + 40 * MS, "/cam/wrist": T0 + 41 * MS, JOINT_STREAM: T0 + 40 * MS}
    assert assembled.newest_input() in CAMS and assembled.ready_ns[JOINT_STREAM] == T0 + 41 * MS


def test_a_frame_is_decoded_once_however_often_it_is_used() -> None:
    asm = _assembler()
    _offer_set(asm, T0)
    first, _ = asm.assemble(slop_ns=5 * MS, instruction="")
    again, _ = asm.assemble(slop_ns=5 * MS, instruction="")  # a control tick with no new frame
    assert first.observation.images[0].shape == (8, 8, 3)  # native size: the engine resizes
    assert again.observation.images[0] is first.observation.images[0]


def test_bad_messages_are_refused_when_offered_naming_the_topic() -> None:
    asm = _assembler()
    bad = rgb_image(T0, 8)
    bad.encoding = "16UC1"
    with pytest.raises(ObservationError, match=r"/cam/front: unsupported image encoding '16UC1'"):
        asm.offer_camera("/cam/front", bad, T0)
    with pytest.raises(ObservationError, match=r"/joints: joint 'b' missing"):
        asm.offer_joint_state(joint_state(T0, ["a"], [0.0]), T0)
    assert asm.last_state is None
    assert asm.assemble(5 * MS, "") == (None, [])  # nothing was buffered


def test_a_corrupt_payload_is_rejected_at_assembly_and_the_next_best_set_used() -> None:
    asm = _assembler()
    _offer_set(asm, T0)
    asm.offer_joint_state(joint_state(T0 + 40 * MS, JOINTS, (0.0, 0.0)), T0 + 40 * MS)
    asm.offer_camera("/cam/front", rgb_image(T0 + 40 * MS, 8), T0 + 40 * MS)
    wrist = rgb_image(T0 + 41 * MS, 8)
    asm.offer_camera("/cam/wrist", wrist, T0 + 41 * MS)
    wrist.data = bytes(5)  # the payload went bad after the O(1) check
    assembled, rejected = asm.assemble(slop_ns=5 * MS, instruction="")
    assert [topic for topic, _ in rejected] == ["/cam/wrist"]
    assert "/cam/wrist" in str(rejected[0][1]) and "expected 192" in str(rejected[0][1])
    assert assembled is not None and assembled.stamp_ns == T0 + 1 * MS  # the older, intact set
    assert asm.assemble(slop_ns=5 * MS, instruction="")[1] == []  # dropped from the buffer: reported once


def test_zero_stamps_take_the_arrival_time_and_warn_once_per_topic() -> None:
    warned: list[str] = []
    asm = _assembler(warned=warned)
    for k in range(3):
        assert asm.offer_camera("/cam/front", rgb_image(0, 8), arrival_ns=T0 + k * MS) == T0 + k * MS
    assert warned == ["/cam/front"]


def test_named_cameras_reach_the_engine_by_name() -> None:
    """With camera_names the observation carries images keyed by model camera, so the engine
    never pairs a topic with a camera by position."""
    asm = ObservationAssembler(CAMS, JOINTS, joint_topic="/joints", camera_names=["observation.images.top",
                                                                                   "observation.images.wrist"])
    _offer_set(asm, T0)
    assembled, _ = asm.assemble(slop_ns=5 * MS, instruction="")
    images = assembled.observation.images
    assert sorted(images) == ["observation.images.top", "observation.images.wrist"]
    wrist = np.frombuffer(bytes(rgb_image(T0 + MS, 8, seed=T0 // MS + 1).data), np.uint8).reshape(8, 8, 3)
    np.testing.assert_array_equal(images["observation.images.wrist"], wrist)

