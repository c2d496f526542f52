"""Configure's checks of the robot against the export (ROS-free): cameras by name, state size."""

from __future__ import annotations

import pytest

from reflex_ros.control.configure import ConfigureError, camera_mapping, fit_engine
from reflex_ros.engine.types import EngineInfo

TOP, WRIST, EMPTY = "observation.images.top", "observation.images.wrist", "observation.images.empty_camera_0"


def info(cameras: tuple[str, ...] = (TOP, WRIST, EMPTY), optional: tuple[str, ...] = (EMPTY,),
         state_dim: int = 6) -> EngineInfo:
    return EngineInfo(engine="onnx", provider="cpu", dtype="fp32", chunk_size=50, action_dim=6, max_state_dim=32,
                      num_cameras=len(cameras), image_size=224, supported_nfe=(10,), model_hash="h",
                      camera_names=cameras, optional_cameras=optional, state_dim=state_dim, action_width=32)


def test_named_cameras_map_by_name_in_any_order_and_empty_cameras_need_no_topic() -> None:
    assert camera_mapping(["/wrist", "/top"], [WRIST, TOP], info()) == [WRIST, TOP]


@pytest.mark.parametrize(("topics", "names", "match"), [
    (["/a", "/b"], [], r"cameras are named \['observation.images.top', .*set camera_names"),
    (["/a"], [TOP], r"camera\(s\) \['observation.images.wrist'\] have no topic"),
    (["/a", "/b"], [TOP, "observation.images.side"], r"camera_names \['observation.images.side'\] are not cameras"),
    (["/a", "/b"], [TOP], r"camera_names has 1 entries but camera_topics 2"),
])
def test_a_camera_is_never_guessed_by_position(topics, names, match) -> None:
    with pytest.raises(ConfigureError, match=match):
        camera_mapping(topics, names, info())


def test_unnamed_cameras_are_fed_by_position() -> None:
    ref = info(cameras=("camera0", "camera1"), optional=())
    assert camera_mapping(["/a", "/b"], [], ref) == ["camera0", "camera1"]
    with pytest.raises(ConfigureError, match=r"expects 2 camera\(s\) but camera_topics lists 1"):
        camera_mapping(["/a"], [], ref)


def test_the_state_has_exactly_the_joints_the_policy_normalizes() -> None:
    values = {"joint_names": ["a", "b", "c"], "camera_topics": ["/t", "/w"], "camera_names": [TOP, WRIST],
              "chunk_size": 50}
    with pytest.raises(ConfigureError, match=r"state has 6 values .* joint_names lists 3"):
        fit_engine(values, info(), explicit=(), warn=print)
    six = {**values, "joint_names": list("abcdef")}
    assert fit_engine(six, info(), explicit=(), warn=print)["camera_names"] == [TOP, WRIST]
