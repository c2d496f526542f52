"""The Fast DDS profile (config/fastdds.xml) and where it is applied."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from reflex_ros.ros.dds import dds_environment, default_profile_path, profile_in_use
from reflex_ros.ros.runner import ros_environment

NS = {"d": "http://www.eprosima.com"}


def test_profile_carries_frames_over_shared_memory_in_one_piece() -> None:
    path = default_profile_path()
    assert path is not None and path.name == "fastdds.xml"
    root = ET.parse(path).getroot()
    descriptors = {d.findtext("d:transport_id", namespaces=NS): d for d in root.iterfind(".//d:transport_descriptor", NS)}
    types = {tid: d.findtext("d:type", namespaces=NS) for tid, d in descriptors.items()}
    assert sorted(types.values()) == ["SHM", "UDPv4"]
    shm = next(d for d in descriptors.values() if d.findtext("d:type", namespaces=NS) == "SHM")
    segment = int(shm.findtext("d:segment_size", namespaces=NS))
    max_message = int(shm.findtext("d:maxMessageSize", namespaces=NS))
    frame_1080p = 1920 * 1080 * 3
    assert max_message >= frame_1080p and segment >= 2 * max_message  # a raw frame is never fragmented
    participant = root.find(".//d:participant", NS)
    assert participant.get("is_default_profile") == "true"
    used = [t.text for t in participant.iterfind(".//d:userTransports/d:transport_id", NS)]
    assert sorted(used) == sorted(descriptors)
    assert participant.findtext(".//d:useBuiltinTransports", namespaces=NS) == "false"


def test_environment_applies_the_profile_unless_one_is_set(tmp_path) -> None:
    ours = str(default_profile_path().resolve())
    assert dds_environment({})["FASTDDS_DEFAULT_PROFILES_FILE"] == ours
    assert profile_in_use(dds_environment({})) == ours
    # a user's profile wins, under either variable name
    assert dds_environment({"FASTRTPS_DEFAULT_PROFILES_FILE": "/u.xml"}) == {"FASTRTPS_DEFAULT_PROFILES_FILE": "/u.xml"}
    assert dds_environment({"FASTDDS_DEFAULT_PROFILES_FILE": "/u.xml"})["FASTDDS_DEFAULT_PROFILES_FILE"] == "/u.xml"
    # opt out, or another file
    assert "FASTDDS_DEFAULT_PROFILES_FILE" not in dds_environment({"REFLEX_FASTDDS_PROFILE": "none"})
    other = tmp_path / "other.xml"
    other.write_text("<dds/>")
    assert dds_environment({"REFLEX_FASTDDS_PROFILE": str(other)})["FASTDDS_DEFAULT_PROFILES_FILE"] == str(other)
    # the runner's children (reflex-ros run, demo, sim, the tests' node) get it
    assert ros_environment({})["FASTDDS_DEFAULT_PROFILES_FILE"] == ours
    assert ros_environment({"FASTRTPS_DEFAULT_PROFILES_FILE": "/u.xml"}).get("FASTDDS_DEFAULT_PROFILES_FILE") is None
