"""The FollowJointTrajectory interface built into the pip venv from interfaces/control_msgs is
the one a joint_trajectory_controller serves.

DDS matches an action client to a server by type name *and* RIHS01 type hash (REP-2011), so a
field renamed, retyped or reordered in our definition would make every goal to a real
controller go unanswered, while our own sim (built from the same file) still worked. The
expected hashes were read from control_msgs' generated type description of the
FollowJointTrajectory interface (ros-controls/control_msgs 6.8.0, the one Kilted's
ros2_controllers uses)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

EXPECTED = {
    "control_msgs/action/FollowJointTrajectory":
        "RIHS01_ff29901b2693f5deb847e96084a1c2cdb26e70b7c847be21859b70a55fb29cf0",
    "control_msgs/action/FollowJointTrajectory_Goal":
        "RIHS01_8a9060704b269608f5a340934cc26e66869dd14bdac29e2e7fd9ec8b9882d205",
    "control_msgs/action/FollowJointTrajectory_Result":
        "RIHS01_8002e99ed2c14c6faa522f2a93c26d744c5982f254f9e98ff9c6f19789bdb220",
    "control_msgs/action/FollowJointTrajectory_Feedback":
        "RIHS01_0bb018d181bdc6384dd75365480967bd1d6eaee4ef3dd597c64cd0b8bdc10867",
    "control_msgs/action/FollowJointTrajectory_SendGoal":
        "RIHS01_b13789dddc325a7a962825c45e28c77d37237ec129dd0c34dc5994562938c57f",
    "control_msgs/msg/JointTolerance":
        "RIHS01_c254f9cece0f3b733017b6990fd46d1326e25242d6b8844398c97d9a88e7d648",
    "control_msgs/msg/JointComponentTolerance":
        "RIHS01_739ea7566931944d33830fa10f1bf5e7a7fbdc3172bce7a7eaac642bd6e3ffa4",
}


def _type_description() -> Path:
    prefixes = [Path(sys.prefix)] + [Path(p) for p in
                                     os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    for prefix in prefixes:
        path = prefix / "share" / "control_msgs" / "action" / "FollowJointTrajectory.json"
        if path.is_file():
            return path
    pytest.fail(f"no control_msgs FollowJointTrajectory.json under {[str(p) for p in prefixes]}; "
                "`make setup` builds interfaces/control_msgs into the venv")


def test_follow_joint_trajectory_type_hashes_match_the_controllers() -> None:
    described = {h["type_name"]: h["hash_string"]
                 for h in json.loads(_type_description().read_text())["type_hashes"]}
    assert {name: described.get(name) for name in EXPECTED} == EXPECTED


def test_the_python_types_have_the_controllers_fields() -> None:
    from control_msgs.action import FollowJointTrajectory

    goal = FollowJointTrajectory.Goal.get_fields_and_field_types()
    assert list(goal) == ["trajectory", "multi_dof_trajectory", "path_tolerance",
                          "component_path_tolerance", "goal_tolerance",
                          "component_goal_tolerance", "goal_time_tolerance"]
    assert FollowJointTrajectory.Result.PATH_TOLERANCE_VIOLATED == -4
