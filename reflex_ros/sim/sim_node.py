"""The simulated SO-101 arm as a ROS 2 node: joint states and a camera out, trajectories in.

Three threads, so that the slow part never stalls the fast ones:

* **physics** steps MuJoCo in real time against the wall clock (ROS system time), samples the
  trajectory executor every step, pushes the command through the actuation delay line, and
  publishes ``/joint_states`` stamped with the sim time of the state it reports;
* **render** owns the GL context (MuJoCo binds it to its creating thread) and renders the
  newest ``qpos`` snapshot the physics thread handed over at each camera tick (~40 ms a frame
  on llvmpipe); the image is stamped with the sim time of that snapshot, i.e. the state it
  shows, not the time rendering finished;
* the **ROS executor** (the caller's thread) receives trajectories and parameter changes.

Sim time: stamps are ``epoch + physics time``. In real time (the default) the epoch is the ROS
time at start, so stamps agree with every other node's clock. With ``publish_clock`` the
epoch is 0, ``/clock`` is published and ``real_time_factor`` may differ from 1; other nodes
then need ``use_sim_time:=true``.

Run it with ``reflex-ros sim`` or ``python -m reflex_ros.sim.sim_node --ros-args -p ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory

from reflex_ros.control.jtc import TrajectoryExecutor, parse_joint_trajectory
from reflex_ros.control.params import ParamSpec
from reflex_ros.msg import EpisodeStatus
from reflex_ros.ros.messages import time_msg
from reflex_ros.ros.params import NODE_OPTIONS, declare_parameters, parameter_values
from reflex_ros.ros.process import ros_context, spin_until
from reflex_ros.ros.runner import node_topic
from reflex_ros.sim.arm import DEFAULT_CAMERA, ArmRenderer, SimArm
from reflex_ros.sim.delay_line import CommandDelayLine
from reflex_ros.srv import ResetEpisode
from reflex_ros.vocab import (
    DEFAULT_CONTROLLER,
    JOINT_STATES_TOPIC,
    TRAJECTORY_TOPIC,
    follow_joint_trajectory_action,
)

NODE_NAME = "so101_sim"
DEFAULT_TRAJECTORY_TOPIC = node_topic(TRAJECTORY_TOPIC)  # the policy node's
# Physics may fall this far behind the wall clock (a loaded machine) before it stops
# catching up and jumps ahead instead (the world freezes for the gap; stamps stay true).
MAX_CATCH_UP_NS = 500_000_000
STEPS_PER_BURST = 25  # then yield the GIL so the ROS executor and renderer keep running
LOG_THROTTLE_S = 2.0
EPISODE_RATE_HZ = 10.0  # ~/episode status (sim time)

# The sim's parameters; everything but actuation_delay_ms is fixed at start-up.
SIM_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("joint_state_rate_hz", float, 100.0, "JointState publish rate (sim time)", read_only=True,
              bounds=(1.0, 500.0)),
    ParamSpec("camera_rate_hz", float, 15.0, "camera frame rate (sim time); 0 disables the camera", read_only=True,
              bounds=(0.0, 60.0)),
    ParamSpec("image_size", int, 128, "square image side in pixels", read_only=True, bounds=(16, 1024)),
    ParamSpec("camera", str, DEFAULT_CAMERA, "MJCF camera to render", read_only=True),
    ParamSpec("image_topic", str, "", "image topic; empty = /camera/<camera>/image_raw", read_only=True),
    ParamSpec("joint_states_topic", str, JOINT_STATES_TOPIC, "JointState output topic", read_only=True),
    ParamSpec("trajectory_topic", str, DEFAULT_TRAJECTORY_TOPIC,
              "JointTrajectory input topic (executed like ros2_control JTC)", read_only=True),
    ParamSpec("actuation_delay_ms", float, 0.0, "delay between the executor's command and the actuators "
              "(bus/servo lag); live", bounds=(0.0, 2000.0)),
    ParamSpec("action_controller", str, DEFAULT_CONTROLLER, "serve <action_controller>/follow_joint_trajectory "
              "(control_msgs/FollowJointTrajectory) like a joint_trajectory_controller; empty = no action server",
              read_only=True),
    ParamSpec("path_tolerance_rad", float, 0.0, "default path tolerance of action goals: |measured - desired| "
              "beyond it aborts the goal (PATH_TOLERANCE_VIOLATED); 0 = not checked; live", bounds=(0.0, 10.0)),
    ParamSpec("goal_tolerance_rad", float, 0.0, "default goal tolerance of action goals at the trajectory's end; "
              "0 = not checked", read_only=True, bounds=(0.0, 10.0)),
    ParamSpec("goal_time_tolerance_s", float, 0.0, "how long after the end a goal may take to get within the goal "
              "tolerance before it aborts (GOAL_TOLERANCE_VIOLATED); 0 = forever", read_only=True,
              bounds=(0.0, 60.0)),
    ParamSpec("open_loop_control", bool, False, "start each new trajectory from the last command instead of the "
              "measured state (JTC open_loop_control)", read_only=True),
    ParamSpec("defer_future_trajectories", bool, False, "a future-stamped trajectory waits for its stamp while the "
              "active one keeps running (JTC trajectory deferral); false = it takes over on arrival "
              "(Humble/Jazzy JTC)", read_only=True),
    ParamSpec("ignore_trajectory_stamps", bool, False, "start every trajectory when it arrives, whatever its "
              "header.stamp (a driver that executes points at arrival + time_from_start; the node's latency "
              "compensation is then what keeps stale rows out)", read_only=True),
    ParamSpec("initial_positions", "float[]", None, "start pose, one value per joint; empty = zeros",
              read_only=True),
    ParamSpec("pick_task", bool, True, "the pick-the-cube task: jaw pads on (the grasp the demo policy was "
              "trained with), ~/reset_episode (reflex_ros/srv/ResetEpisode) and ~/episode (reflex_ros/msg/"
              "EpisodeStatus, 10 Hz); false = the bare scene", read_only=True),
    ParamSpec("episode_seed", int, -1, "with pick_task: start with the episode of this seed (arm at home, cube "
              "at the seeded pose); -1 = the scene's own cube pose", read_only=True, bounds=(-1, 2**31 - 1)),
    ParamSpec("publish_clock", bool, False, "publish /clock from sim time (starts at 0)", read_only=True),
    ParamSpec("real_time_factor", float, 1.0, "sim seconds per wall second; != 1 needs publish_clock",
              read_only=True, bounds=(0.05, 20.0)),
    ParamSpec("clock_rate_hz", float, 250.0, "/clock publish rate (sim time)", read_only=True, bounds=(10.0, 1000.0)),
)


@dataclass
class SimStats:
    """Counters for the shutdown summary (and tests reading the log)."""

    steps: int = 0
    joint_states: int = 0
    frames: int = 0
    frames_skipped: int = 0  # camera ticks whose snapshot was replaced before rendering
    trajectories_accepted: int = 0
    trajectories_rejected: int = 0
    goals_accepted: int = 0
    goals_rejected: int = 0
    goals_succeeded: int = 0
    goals_aborted: int = 0
    goals_canceled: int = 0  # preempted by a newer goal, or on request
    realtime_jumps: int = 0
    episodes: int = 0
    successes: int = 0


class _RenderSlot:
    """Newest-wins handoff of (stamp, qpos) from physics to the render thread."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: tuple[int, np.ndarray] | None = None

    def put(self, stamp_ns: int, qpos: np.ndarray) -> bool:
        """Store a snapshot; returns True when it replaced one not yet rendered."""
        with self._cond:
            replaced = self._item is not None
            self._item = (stamp_ns, qpos)
            self._cond.notify()
        return replaced

    def take(self, timeout_s: float) -> tuple[int, np.ndarray] | None:
        with self._cond:
            if self._item is None:
                self._cond.wait(timeout_s)
            item, self._item = self._item, None
        return item


class SimNode(Node):
    """MuJoCo SO-101 arm executing JointTrajectory messages with JTC semantics."""

    def __init__(self, **node_kwargs) -> None:
        super().__init__(NODE_NAME, **{**node_kwargs, **NODE_OPTIONS})
        declare_parameters(self, SIM_PARAMS)
        p = parameter_values(self, [spec.name for spec in SIM_PARAMS])
        self.arm = SimArm()
        names = self.arm.joint_names
        initial = np.zeros(len(names))
        if p["initial_positions"]:
            if len(p["initial_positions"]) != len(names):
                raise ValueError(f"initial_positions needs {len(names)} values for {names}")
            initial = np.asarray(p["initial_positions"], dtype=np.float64)
        self.arm.set_positions(initial)
        self.task = None  # PickTask when pick_task: jaw pads, seeded resets, the success check
        self._episode_seed = -1
        if p["pick_task"]:
            from reflex_ros.sim.task import HOME_POSITION, PickTask

            self.task = PickTask(self.arm)
            if p["episode_seed"] >= 0:
                if p["initial_positions"]:
                    raise ValueError("episode_seed starts the arm at home; leave initial_positions empty")
                self.task.reset(p["episode_seed"])
                self._episode_seed = int(p["episode_seed"])
                initial = HOME_POSITION.copy()
        elif p["episode_seed"] >= 0:
            raise ValueError("episode_seed needs pick_task:=true")

        self.stats = SimStats()
        self._lock = threading.Lock()  # guards arm, executor and delay line
        self._executor = TrajectoryExecutor(names, initial, defer_future=p["defer_future_trajectories"])
        self._delay = CommandDelayLine(int(round(p["actuation_delay_ms"] * 1e6)), initial)
        self._open_loop = p["open_loop_control"]
        self._ignore_stamps = p["ignore_trajectory_stamps"]
        self._step_ns = int(round(self.arm.timestep_s * 1e9))
        self._js_period_ns = int(round(1e9 / p["joint_state_rate_hz"]))
        self._cam_period_ns = int(round(1e9 / p["camera_rate_hz"])) if p["camera_rate_hz"] > 0 else 0
        self._image_size = p["image_size"]
        self._camera = p["camera"]
        self._publish_clock = p["publish_clock"]
        self._rtf = p["real_time_factor"]
        if self._rtf != 1.0 and not self._publish_clock:
            raise ValueError(
                "real_time_factor != 1 needs publish_clock:=true (and use_sim_time:=true on the "
                "other nodes); otherwise stamps would drift away from their ROS time"
            )
        self._clock_period_ns = int(round(1e9 / p["clock_rate_hz"]))
        self._epoch_ns = 0 if self._publish_clock else time.time_ns()
        self._sim_ns = 0  # physics time since the epoch; written by the physics thread only
        self._success_logged = False

        reliable = QoSProfile(
            depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST
        )
        # Reliable keep-last-2 images match both reliable and best-effort (sensor-data)
        # subscribers, and a slow subscriber only ever gets the newest frames.
        image_qos = QoSProfile(
            depth=2, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST
        )
        image_topic = p["image_topic"] or f"/camera/{self._camera}/image_raw"
        self._js_pub = self.create_publisher(JointState, p["joint_states_topic"], reliable)
        self._image_pub = self.create_publisher(Image, image_topic, image_qos)
        self._clock_pub = self.create_publisher(Clock, "/clock", 10) if self._publish_clock else None
        self._episode_pub = self._reset_srv = None
        if self.task is not None:
            self._episode_pub = self.create_publisher(EpisodeStatus, "~/episode", reliable)
            self._reset_srv = self.create_service(ResetEpisode, "~/reset_episode", self._on_reset_episode)
        self._traj_sub = self.create_subscription(
            JointTrajectory, p["trajectory_topic"], self._on_trajectory, reliable
        )
        self._path_tolerance = p["path_tolerance_rad"]
        self._action = None
        if p["action_controller"]:
            from reflex_ros.sim.jtc_action import JtcActionServer

            self._action = JtcActionServer(
                self, follow_joint_trajectory_action(p["action_controller"]), lock=self._lock,
                executor=self._executor, measured=lambda: self.arm.state().positions, now_ns=self.sim_now_ns,
                open_loop=self._open_loop, path_tolerance=lambda: self._path_tolerance,
                goal_tolerance=p["goal_tolerance_rad"], goal_time_s=p["goal_time_tolerance_s"], stats=self.stats)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._stop = threading.Event()
        self._render_slot = _RenderSlot()
        self._render_ready = threading.Event()
        self._physics_thread = threading.Thread(target=self._physics_loop, name="sim-physics", daemon=True)
        self._render_thread = threading.Thread(target=self._render_loop, name="sim-render", daemon=True)
        self.get_logger().info(
            f"SO-101 sim: joints {list(names)}; {p['joint_states_topic']} at {p['joint_state_rate_hz']:g} Hz; "
            f"{image_topic} {self._image_size}x{self._image_size} rgb8 at {p['camera_rate_hz']:g} Hz; "
            f"trajectories from {p['trajectory_topic']} "
            f"({'started on arrival, stamps ignored' if p['ignore_trajectory_stamps'] else 'deferred until their stamp' if p['defer_future_trajectories'] else 'take over on arrival'}"
            f"{', open loop' if p['open_loop_control'] else ''})"
            + (f" and goals on {self.resolve_topic_name(self._action.action_name)}" if self._action else "")
            + (f"; pick task (jaw pads, {self.resolve_topic_name('~/reset_episode')}, "
               f"{self.resolve_topic_name('~/episode')})" if self.task is not None else "; bare scene")
            + f"; actuation delay {p['actuation_delay_ms']:g} ms; "
            + (f"sim time on /clock at {self._rtf:g}x real time" if self._publish_clock else "real time")
        )

    # ---------------------------------------------------------------- parameters
    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        for param in params:
            if param.name == "actuation_delay_ms":
                with self._lock:
                    self._delay.delay_ns = int(round(float(param.value) * 1e6))
                self.get_logger().info(f"actuation delay now {float(param.value):g} ms")
            elif param.name == "path_tolerance_rad":
                self._path_tolerance = float(param.value)
                self.get_logger().info(f"default path tolerance of action goals now {self._path_tolerance:g} rad")
        return SetParametersResult(successful=True)

    # ---------------------------------------------------------------- time
    def sim_now_ns(self) -> int:
        """Stamp of the newest physics state (ROS time in real-time mode)."""
        return self._epoch_ns + self._sim_ns

    def _target_sim_ns(self, mono0_ns: int) -> int:
        if self._publish_clock:
            return int((time.monotonic_ns() - mono0_ns) * self._rtf)
        return time.time_ns() - self._epoch_ns

    # ---------------------------------------------------------------- trajectories
    def _on_trajectory(self, msg: JointTrajectory) -> None:
        try:
            trajectory = parse_joint_trajectory(msg)
        except ValueError as exc:
            self.stats.trajectories_rejected += 1
            self.get_logger().error(f"trajectory rejected: {exc}", throttle_duration_sec=LOG_THROTTLE_S)
            return
        with self._lock:
            now_ns = self.sim_now_ns()
            if self._ignore_stamps:
                trajectory = dataclasses.replace(trajectory, start_ns=0)  # 0 = when it arrives
            measured = None if self._open_loop else self.arm.state().positions
            result = self._executor.submit(trajectory, now_ns, measured)
        if result.unknown_joints:
            self.get_logger().warning(
                f"ignoring unknown joints {list(result.unknown_joints)}; this arm has {list(self.arm.joint_names)}",
                throttle_duration_sec=LOG_THROTTLE_S,
            )
        if result.accepted:
            self.stats.trajectories_accepted += 1
        else:
            self.stats.trajectories_rejected += 1
            self.get_logger().warning(
                f"trajectory rejected: {result.reason}", throttle_duration_sec=LOG_THROTTLE_S
            )

    # ---------------------------------------------------------------- episodes
    def _on_reset_episode(self, request: ResetEpisode.Request, response: ResetEpisode.Response):
        """Arm at home, cube at the seeded pose (settled), every trajectory and command in
        flight dropped: nothing sent for the previous episode reaches this one."""
        from reflex_ros.sim.task import HOME_POSITION

        seed = int(request.seed)
        if seed < 0:
            response.success = False
            response.message = f"seed must be >= 0, got {seed}"
            return response
        with self._lock:
            xy = self.task.reset(seed)
            self._executor.reset(HOME_POSITION)
            self._delay.reset(HOME_POSITION)
            self._episode_seed = seed
            self._success_logged = False
        self.stats.episodes += 1
        response.success = True
        response.cube_xy = [float(xy[0]), float(xy[1])]
        response.message = f"episode seed {seed}: cube at x {xy[0]:.3f} y {xy[1]:.3f} m, arm at home"
        self.get_logger().info(response.message)
        return response

    def _episode_status(self, stamp_ns: int) -> EpisodeStatus:
        """Read under the lock by the physics thread."""
        task = self.task
        msg = EpisodeStatus()
        msg.header.stamp = time_msg(stamp_ns)
        msg.header.frame_id = "world"
        msg.seed = self._episode_seed
        msg.time_s = float(task.time_s)
        msg.lifted = bool(task.lifted())
        msg.success = bool(task.success)
        msg.cube_position = [float(v) for v in task.cube_position()]
        return msg

    # ---------------------------------------------------------------- threads
    def start(self) -> None:
        """Start rendering, then physics: creating the GL context takes a while and holds the
        GIL, so the clock starts only once the camera is ready (or has failed)."""
        if self._cam_period_ns:
            self._render_thread.start()
            self._render_ready.wait(timeout=30.0)
        if not self._publish_clock:
            self._epoch_ns = time.time_ns()
        self._physics_thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in (self._physics_thread, self._render_thread):
            if thread.is_alive():
                thread.join(timeout=5.0)

    def _physics_loop(self) -> None:
        try:
            self._run_physics()
        except Exception as exc:  # noqa: BLE001 - report, never die silently
            self.get_logger().fatal(f"physics thread stopped: {exc!r}")
            raise

    def _run_physics(self) -> None:
        js = JointState()
        js.name = list(self.arm.joint_names)
        step_ns = self._step_ns
        next_js_ns = next_cam_ns = next_clock_ns = next_episode_ns = 0
        episode_period_ns = int(round(1e9 / EPISODE_RATE_HZ))
        mono0_ns = time.monotonic_ns()
        while not self._stop.is_set():
            target_ns = self._target_sim_ns(mono0_ns)
            if target_ns - self._sim_ns > MAX_CATCH_UP_NS:
                self.stats.realtime_jumps += 1
                self.get_logger().warning(
                    f"physics fell {(target_ns - self._sim_ns) / 1e6:.0f} ms behind the wall clock; jumping ahead",
                    throttle_duration_sec=LOG_THROTTLE_S,
                )
                self._sim_ns = target_ns - step_ns
                next_js_ns = next_cam_ns = next_clock_ns = next_episode_ns = self._sim_ns
            for _ in range(STEPS_PER_BURST):
                if self._sim_ns + step_ns > target_ns:
                    break
                state = qpos = episode = None
                with self._lock:
                    t_ns = self._epoch_ns + self._sim_ns
                    command = self._executor.sample(t_ns)
                    self._delay.push(t_ns, command)
                    self.arm.set_command(self._delay.output(t_ns))
                    self.arm.step()
                    self._sim_ns += step_ns
                    if self.task is not None:
                        self.task.update_success()
                        if self._sim_ns >= next_episode_ns:
                            episode = self._episode_status(self._epoch_ns + self._sim_ns)
                    if self._sim_ns >= next_js_ns:
                        state = self.arm.state()
                    if self._cam_period_ns and self._sim_ns >= next_cam_ns:
                        qpos = self.arm.qpos_snapshot()
                self.stats.steps += 1
                stamp_ns = self._epoch_ns + self._sim_ns
                if state is not None:
                    next_js_ns += self._js_period_ns
                    js.header.stamp = time_msg(stamp_ns)
                    js.position = state.positions.tolist()
                    js.velocity = state.velocities.tolist()
                    js.effort = state.efforts.tolist()
                    self._js_pub.publish(js)
                    self.stats.joint_states += 1
                if qpos is not None:
                    next_cam_ns += self._cam_period_ns
                    if self._render_slot.put(stamp_ns, qpos):
                        self.stats.frames_skipped += 1
                if episode is not None:
                    next_episode_ns += episode_period_ns
                    self._episode_pub.publish(episode)
                    if episode.success and not self._success_logged:
                        self._success_logged = True
                        self.stats.successes += 1
                        self.get_logger().info(f"episode seed {episode.seed}: success at {episode.time_s:.1f} s "
                                               "(cube lifted and held)")
                if self._clock_pub is not None and self._sim_ns >= next_clock_ns:
                    next_clock_ns += self._clock_period_ns
                    self._clock_pub.publish(Clock(clock=time_msg(stamp_ns)))
            ahead_ns = self._sim_ns + step_ns - self._target_sim_ns(mono0_ns)
            # Sleep until the next step is due (in wall time); sleep(0) just yields the GIL.
            time.sleep(max(0.0, ahead_ns / 1e9 / (self._rtf if self._publish_clock else 1.0)))

    def _render_loop(self) -> None:
        try:
            renderer = ArmRenderer(self.arm.model, self._image_size, self._camera)
            renderer.render(self.arm.qpos_snapshot())  # the first frame pays for shader setup
        except Exception as exc:  # noqa: BLE001 - the arm still runs without a camera
            self._render_ready.set()
            self.get_logger().error(
                f"camera disabled, offscreen rendering failed: {exc}. Headless hosts need MUJOCO_GL=egl "
                "and an EGL driver (e.g. Mesa: apt-get install libegl1 libgl1-mesa-dri)"
            )
            return
        self._render_ready.set()
        image = Image()
        image.header.frame_id = f"{self._camera}_camera"
        image.height = image.width = self._image_size
        image.encoding = "rgb8"
        image.step = 3 * self._image_size
        try:
            while not self._stop.is_set():
                item = self._render_slot.take(timeout_s=0.1)
                if item is None:
                    continue
                stamp_ns, qpos = item
                pixels = renderer.render(qpos)
                image.header.stamp = time_msg(stamp_ns)
                image.data = pixels.tobytes()
                self._image_pub.publish(image)
                self.stats.frames += 1
        finally:
            renderer.close()


def run_sim(ros_args: list[str] | None = None, duration_s: float | None = None) -> int:
    """Run the sim node until ``duration_s`` elapses, Ctrl-C or SIGTERM. Returns an exit code.

    The physics and render threads are stopped before rclpy (see ros/process.py).
    """
    with ros_context(["reflex-ros-sim", *(ros_args or [])]) as stop:
        try:
            node = SimNode()
        except ValueError as exc:
            print(f"reflex-ros sim: {exc}", file=sys.stderr)
            return 2
        try:
            executor = SingleThreadedExecutor()
            executor.add_node(node)
            node.start()
            deadline = None if duration_s is None else time.monotonic() + duration_s
            spin_until(executor, lambda: stop.is_set() or (deadline is not None and time.monotonic() >= deadline))
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        finally:
            node.stop()
            s = node.stats
            print(
                f"[{NODE_NAME}] stopped: {s.steps} physics steps, {s.joint_states} joint states, "
                f"{s.frames} frames ({s.frames_skipped} camera ticks skipped), trajectories "
                f"{s.trajectories_accepted} accepted / {s.trajectories_rejected} rejected, goals "
                f"{s.goals_accepted} accepted / {s.goals_rejected} rejected / {s.goals_succeeded} succeeded / "
                f"{s.goals_aborted} aborted / {s.goals_canceled} canceled, "
                f"{s.realtime_jumps} real-time jumps, episodes {s.episodes} reset / {s.successes} succeeded",
                flush=True,
            )
            node.destroy_node()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m reflex_ros.sim.sim_node [--duration-s S] --ros-args -p name:=value ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ros_args: list[str] = []
    if "--ros-args" in argv:
        i = argv.index("--ros-args")
        argv, ros_args = argv[:i], argv[i:]
    parser = argparse.ArgumentParser(
        prog="python -m reflex_ros.sim.sim_node", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--duration-s", type=float, default=None, help="stop after S seconds (default: run until Ctrl-C)"
    )
    args = parser.parse_args(argv)
    return run_sim(ros_args, args.duration_s)


if __name__ == "__main__":
    sys.exit(main())
