"""Launch the reflex_ros lifecycle policy node and bring it to active.

    ros2 launch reflex_ros policy.launch.py export_dir:=/path/to/export embodiment:=so100
    ros2 launch reflex_ros policy.launch.py export_dir:=... auto_calibrate:=true params_file:=my.yaml
    ros2 launch reflex_ros policy.launch.py export_dir:=~/exports/smolvla embodiment:=so100 \
        cameras:=observation.images.top=/cam/top/image_raw,observation.images.wrist=/cam/wrist/image_raw

``cameras`` (NAME=TOPIC pairs, comma-separated) feeds each model camera by name: a LeRobot
policy's image features are never matched to topics by position. Empty (the default) leaves
camera_topics / camera_names to the params file.

The node starts unconfigured; this file emits `configure`, and once the node reaches
`inactive` it emits `activate`. If configure fails, the node logs why and stays
unconfigured (fix the parameter and `ros2 lifecycle set /reflex_policy configure`).
`reflex-ros run EXPORT_DIR` does the same on machines without the ros2 CLI.

Fast DDS: unless FASTDDS_DEFAULT_PROFILES_FILE or FASTRTPS_DEFAULT_PROFILES_FILE is set, the
node runs with config/fastdds.xml (camera frames over shared memory in one piece; the camera
driver needs the same variable, see that file). ``fastdds_profile:=`` picks another file;
``fastdds_profile:=none`` leaves Fast DDS's defaults.
"""

import os

# ruff sees the repository's launch/ folder and would file `launch` as first-party.
from launch import LaunchDescription
from launch.actions import (
    DeclareLaunchArgument,
    EmitEvent,
    OpaqueFunction,
    RegisterEventHandler,
    SetEnvironmentVariable,
)
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare
from lifecycle_msgs.msg import Transition

from reflex_ros.vocab import NODE_NAME


def camera_parameters(cameras: str) -> dict:
    """``"name=topic,name2=topic2"`` -> {camera_names, camera_topics}; empty -> {} (the params
    file's values stand)."""
    pairs = [item.strip().partition("=") for item in cameras.split(",") if item.strip()]
    if not pairs:
        return {}
    if any(not (name and eq and topic) for name, eq, topic in pairs):
        raise ValueError(f"cameras:={cameras!r}: expected NAME=TOPIC pairs separated by commas")
    return {"camera_names": [name for name, _, _ in pairs], "camera_topics": [topic for _, _, topic in pairs]}


PROFILE_VARS = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")


def fastdds_profile(choice: str, default_path: str, environ=os.environ) -> str | None:
    """The profile file to set FASTDDS_DEFAULT_PROFILES_FILE to, or None to leave it: a profile
    already in the environment wins, ``none`` sets nothing, empty means ``default_path``."""
    if any(environ.get(var) for var in PROFILE_VARS) or choice.strip().lower() == "none":
        return None
    return choice.strip() or default_path


def launch_setup(context, *args, **kwargs):
    """The node and its autostart, built once the launch arguments are known (the camera
    pairs decide which parameters are passed at all)."""
    given = {
        "export_dir": ParameterValue(LaunchConfiguration("export_dir"), value_type=str),
        "embodiment": ParameterValue(LaunchConfiguration("embodiment"), value_type=str),
        "auto_calibrate": ParameterValue(LaunchConfiguration("auto_calibrate"), value_type=bool),
    }
    given.update(camera_parameters(LaunchConfiguration("cameras").perform(context)))
    policy_node = LifecycleNode(
        package="reflex_ros",
        executable="policy_node",
        name=NODE_NAME,
        namespace="",
        output="screen",
        parameters=[LaunchConfiguration("params_file"), given],
    )
    configure = EmitEvent(event=ChangeState(
        lifecycle_node_matcher=matches_action(policy_node),
        transition_id=Transition.TRANSITION_CONFIGURE,
    ))
    activate_when_inactive = RegisterEventHandler(OnStateTransition(
        target_lifecycle_node=policy_node,
        start_state="configuring",
        goal_state="inactive",
        entities=[EmitEvent(event=ChangeState(
            lifecycle_node_matcher=matches_action(policy_node),
            transition_id=Transition.TRANSITION_ACTIVATE,
        ))],
    ))
    default_profile = PathJoinSubstitution([FindPackageShare("reflex_ros"), "config", "fastdds.xml"]).perform(context)
    profile = fastdds_profile(LaunchConfiguration("fastdds_profile").perform(context), default_profile)
    environment = [SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", profile)] if profile else []
    return [*environment, policy_node, activate_when_inactive, configure]


def generate_launch_description() -> LaunchDescription:
    arguments = [
        DeclareLaunchArgument(
            "export_dir", description="Export directory written by `reflex-ros export`"),
        DeclareLaunchArgument(
            "embodiment", default_value="",
            description="Embodiment preset (franka, so100, ur5) or a yaml path; empty = none"),
        DeclareLaunchArgument(
            "auto_calibrate", default_value="false",
            description="Resolve nfe/chunk_size/latency from the calibration cache and learn latency live"),
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([FindPackageShare("reflex_ros"), "config", "policy.yaml"]),
            description="ROS 2 parameters file for the node"),
        DeclareLaunchArgument(
            "cameras", default_value="",
            description="NAME=TOPIC pairs, comma-separated: the model camera each topic feeds (LeRobot image "
                        "feature keys, e.g. observation.images.top=/cam/top/image_raw); empty = the params file's "
                        "camera_topics / camera_names"),
        DeclareLaunchArgument(
            "fastdds_profile", default_value="",
            description="Fast DDS XML profile for the node (empty = reflex_ros config/fastdds.xml unless "
                        "FASTDDS_DEFAULT_PROFILES_FILE / FASTRTPS_DEFAULT_PROFILES_FILE is set; none = Fast DDS "
                        "defaults). The camera driver needs the same profile"),
    ]
    return LaunchDescription([*arguments, OpaqueFunction(function=launch_setup)])
