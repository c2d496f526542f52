"""Launch the reflex_ros lifecycle policy node and bring it to active.

    ros2 launch reflex_ros policy.launch.py export_dir:=/path/to/export embodiment:=so100
    ros2 launch reflex_ros policy.launch.py export_dir:=... auto_calibrate:=true params_file:=my.yaml

The node starts unconfigured; this file emits `configure`, and once the node reaches
`inactive` it emits `activate`. If configure fails, the node logs why and stays
unconfigured (fix the parameter and `ros2 lifecycle set /reflex_policy configure`).
`reflex-ros run EXPORT_DIR` does the same on machines without the ros2 CLI.
"""

# ruff sees the repository's launch/ folder and would file `launch` as first-party.
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, RegisterEventHandler
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare
from lifecycle_msgs.msg import Transition

from reflex_ros.vocab import NODE_NAME


def generate_launch_description() -> LaunchDescription:
    export_dir = LaunchConfiguration("export_dir")
    embodiment = LaunchConfiguration("embodiment")
    auto_calibrate = LaunchConfiguration("auto_calibrate")
    params_file = LaunchConfiguration("params_file")

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
    ]

    policy_node = LifecycleNode(
        package="reflex_ros",
        executable="policy_node",
        name=NODE_NAME,
        namespace="",
        output="screen",
        parameters=[
            params_file,
            {
                "export_dir": ParameterValue(export_dir, value_type=str),
                "embodiment": ParameterValue(embodiment, value_type=str),
                "auto_calibrate": ParameterValue(auto_calibrate, value_type=bool),
            },
        ],
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

    return LaunchDescription([*arguments, policy_node, activate_when_inactive, configure])
