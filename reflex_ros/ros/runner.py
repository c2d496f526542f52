"""`reflex-ros run`: what `ros2 launch reflex_ros policy.launch.py` does, without the ros2 CLI.

It starts the policy node as a child process with the parameters the launch file would give
(the params file, then export_dir / embodiment / auto_calibrate, then any --ros-args),
drives configure -> activate through the lifecycle services, streams the node's log, and on
Ctrl-C / SIGTERM drives deactivate -> cleanup -> shutdown (the node publishes a hold
trajectory on deactivate) and exits 0. A configure failure exits 2 with the node's reason.

:class:`PolicyNodeProcess` is the same logic as a Python API (context manager), used by the
demo and the tests. The child runs in its own session, so a terminal's Ctrl-C reaches only
the runner, which then shuts the node down in order instead of both dying at once.

Environment: the child gets this process's environment plus the explicit settings of
:func:`ros_environment` (ROS_DOMAIN_ID, discovery range, AMENT_PREFIX_PATH, unbuffered
output, and the Fast DDS profile config/fastdds.xml unless one is set); the runner's own
service client joins the same domain.

Top-level imports are stdlib only (``reflex-ros --help`` stays instant).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from reflex_ros.ros.process import ChildProcess, stop_on_signals
from reflex_ros.vocab import NODE_NAME

NODE_MODULE = "reflex_ros.ros.policy_node"
DEFAULT_NODE_NAME = NODE_NAME
# Settings the node and the runner's client must agree on to see each other over DDS.
PROPAGATED_ENV = ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_STATIC_PEERS",
                  "ROS_LOCALHOST_ONLY", "RMW_IMPLEMENTATION", "AMENT_PREFIX_PATH")
_USE_DEFAULT = object()


class NodeProcessError(RuntimeError):
    """The node process died, or a lifecycle transition failed; the message says why."""


def ros_environment(base: Mapping[str, str] | None = None, *, domain_id: int | None = None,
                    overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The child's environment: ``base`` (default: os.environ) with the ROS settings made
    explicit. PROPAGATED_ENV keys pass through unchanged; ``domain_id`` replaces
    ROS_DOMAIN_ID; AMENT_PREFIX_PATH defaults to this interpreter's prefix (ament_index
    lookups of the config files); output is unbuffered so the log streams live; Fast DDS
    loads config/fastdds.xml (camera frames over shared memory, see :mod:`reflex_ros.ros.dds`)
    unless a profile is already set."""
    from reflex_ros.ros.dds import dds_environment

    env = dict(os.environ if base is None else base)
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(int(domain_id))
    env.setdefault("AMENT_PREFIX_PATH", sys.prefix)
    env = dds_environment(env)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("RCUTILS_COLORIZED_OUTPUT", "0")
    if overrides:
        env.update(overrides)
    return env


def node_topic(private_topic: str, node_name: str = NODE_NAME, namespace: str = "") -> str:
    """A node's private topic (``~/joint_trajectory``) as others see it
    (``/reflex_policy/joint_trajectory``); other topics are returned unchanged."""
    if not private_topic.startswith("~/"):
        return private_topic
    ns = namespace.strip("/")
    return f"/{ns + '/' if ns else ''}{node_name}/{private_topic[2:]}"


def default_params_file() -> Path | None:
    """config/policy.yaml from the source tree, else from the installed share directory."""
    candidates = [Path(__file__).resolve().parents[2] / "config" / "policy.yaml"]
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p] + [sys.prefix]
    candidates += [Path(p) / "share" / "reflex_ros" / "config" / "policy.yaml" for p in prefixes]
    return next((c for c in candidates if c.is_file()), None)


def _yaml_value(value: Any) -> str:
    """A -p value: booleans and numbers bare, strings JSON-quoted (JSON is YAML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)


def node_command(export_dir: str | os.PathLike[str] | None, *, embodiment: str | None = None,
                 params_file: str | os.PathLike[str] | None = None, auto_calibrate: bool | None = None,
                 node_name: str = DEFAULT_NODE_NAME, namespace: str = "",
                 parameters: Mapping[str, Any] | None = None, ros_args: Sequence[str] = (),
                 python: str = sys.executable) -> list[str]:
    """The node's command line, in the launch file's parameter order (later wins)."""
    cmd = [python, "-m", NODE_MODULE, "--ros-args", "-r", f"__node:={node_name}"]
    if namespace:
        cmd += ["-r", f"__ns:={namespace if namespace.startswith('/') else '/' + namespace}"]
    if params_file:
        cmd += ["--params-file", str(params_file)]
    given: dict[str, Any] = {}
    if export_dir:
        given["export_dir"] = str(Path(export_dir).expanduser().resolve())
    if embodiment:
        given["embodiment"] = embodiment
    if auto_calibrate is not None:
        given["auto_calibrate"] = bool(auto_calibrate)
    given.update(parameters or {})
    for key, value in given.items():
        cmd += ["-p", f"{key}:={_yaml_value(value)}"]
    extra = list(ros_args)
    if extra and extra[0] == "--ros-args":
        extra = extra[1:]
    return cmd + extra


class PolicyNodeProcess:
    """The policy node in a child process, driven through its lifecycle services.

    ``with PolicyNodeProcess(export_dir, embodiment="so100") as node:`` starts the process,
    configures and activates it (``autostart``), and on exit deactivates, cleans up, shuts
    down and reaps it. ``log`` receives every line the node prints (default: stderr).
    """

    def __init__(self, export_dir: str | os.PathLike[str] | None, *, embodiment: str | None = None,
                 params_file: Any = _USE_DEFAULT, auto_calibrate: bool | None = None,
                 node_name: str = DEFAULT_NODE_NAME, namespace: str = "",
                 parameters: Mapping[str, Any] | None = None, ros_args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None, log: Callable[[str], None] | None = None,
                 autostart: bool = True, python: str = sys.executable) -> None:
        self.params_file = default_params_file() if params_file is _USE_DEFAULT else params_file
        self.command = node_command(
            export_dir, embodiment=embodiment, params_file=self.params_file, auto_calibrate=auto_calibrate,
            node_name=node_name, namespace=namespace, parameters=parameters, ros_args=ros_args, python=python)
        self.env = ros_environment(env)
        ns = namespace.strip("/")
        self.fqn = f"/{ns}/{node_name}" if ns else f"/{node_name}"
        self.autostart = autostart
        self._log = log if log is not None else (lambda line: print(line, file=sys.stderr, flush=True))
        # lifeline: the node shuts down (holding position) if this process dies without stopping it
        self.child = ChildProcess(self.command, env=self.env, on_line=self._log, lifeline=True)
        self.lines = self.child.lines
        self._started = False
        self._ctx = None
        self._client_node = None
        self._executor = None
        self._clients: dict[str, Any] = {}

    # ------------------------------------------------------------------ process

    @property
    def pid(self) -> int | None:
        return self.child.pid

    @property
    def alive(self) -> bool:
        return self.child.alive

    @property
    def returncode(self) -> int | None:
        return self.child.returncode

    def wait_for_log(self, text: str, timeout_s: float = 30.0, start: int = 0) -> str | None:
        """The first line (from index ``start`` of :attr:`lines`) containing ``text``."""
        return self.child.wait_for_log(text, timeout_s, start)

    def _tail(self, n: int = 15) -> str:
        return self.child.tail(n)

    def start(self, timeout_s: float = 90.0) -> PolicyNodeProcess:
        """Spawn the node and wait for its lifecycle services."""
        if self._started:
            raise NodeProcessError("already started")
        self._started = True
        self.child.start()
        self._init_client()
        deadline = time.monotonic() + timeout_s
        for name in ("change_state", "get_state"):
            client = self._clients[name]
            while not client.wait_for_service(timeout_sec=0.25):
                if not self.alive:
                    self.child.stop()
                    raise NodeProcessError(
                        f"policy node exited with code {self.returncode} before its services came up:\n{self._tail()}")
                if time.monotonic() > deadline:
                    raise NodeProcessError(f"no {self.fqn}/{name} service within {timeout_s:.0f} s:\n{self._tail()}")
        return self

    def _init_client(self) -> None:
        import rclpy
        from lifecycle_msgs.srv import ChangeState, GetState
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions

        self._ctx = Context()
        domain = self.env.get("ROS_DOMAIN_ID")
        rclpy.init(context=self._ctx, domain_id=int(domain) if domain else None,
                   signal_handler_options=SignalHandlerOptions.NO)
        self._client_node = rclpy.create_node(
            f"reflex_runner_{os.getpid()}_{id(self) & 0xFFFF:x}", context=self._ctx,
            start_parameter_services=False, enable_rosout=False)
        self._executor = SingleThreadedExecutor(context=self._ctx)
        self._executor.add_node(self._client_node)
        self._clients = {
            "change_state": self._client_node.create_client(ChangeState, f"{self.fqn}/change_state"),
            "get_state": self._client_node.create_client(GetState, f"{self.fqn}/get_state"),
        }

    def _call(self, name: str, request: Any, timeout_s: float) -> Any:
        future = self._clients[name].call_async(request)
        deadline = time.monotonic() + timeout_s
        while not future.done():
            self._executor.spin_until_future_complete(future, timeout_sec=0.25)
            if future.done():
                break
            if not self.alive:
                raise NodeProcessError(f"policy node exited with code {self.returncode}:\n{self._tail()}")
            if time.monotonic() > deadline:
                self._clients[name].remove_pending_request(future)
                raise NodeProcessError(f"{self.fqn}/{name} did not answer within {timeout_s:.0f} s")
        return future.result()

    # ------------------------------------------------------------------ lifecycle

    def state(self, timeout_s: float = 30.0) -> str:
        """The node's lifecycle state label (unconfigured, inactive, active, finalized...)."""
        from lifecycle_msgs.srv import GetState

        return str(self._call("get_state", GetState.Request(), timeout_s).current_state.label)

    def transition(self, label: str, timeout_s: float = 180.0) -> None:
        """Request a transition by label; on refusal raise with the node's own reason."""
        from lifecycle_msgs.srv import ChangeState

        mark = len(self.lines)
        request = ChangeState.Request()
        request.transition.label = label
        if self._call("change_state", request, timeout_s).success:
            return
        reason = self.wait_for_log(f"{label} failed", timeout_s=5.0, start=mark) if label == "configure" else None
        if reason is None:
            reason = self.wait_for_log("failed", timeout_s=1.0, start=mark)
        detail = reason.split("]: ", 1)[-1] if reason else f"the node refused '{label}' (state {self.state()})"
        raise NodeProcessError(detail)

    def configure(self, timeout_s: float = 300.0) -> None:
        self.transition("configure", timeout_s)

    def activate(self, timeout_s: float = 60.0) -> None:
        self.transition("activate", timeout_s)

    def deactivate(self, timeout_s: float = 90.0) -> None:
        self.transition("deactivate", timeout_s)

    def cleanup(self, timeout_s: float = 60.0) -> None:
        self.transition("cleanup", timeout_s)

    def shutdown_node(self, timeout_s: float = 60.0) -> None:
        self.transition("shutdown", timeout_s)

    def bring_up(self) -> None:
        """configure -> activate."""
        self.configure()
        self.activate()

    def stop(self, timeout_s: float = 60.0) -> int:
        """deactivate -> cleanup -> shutdown as the state requires, then reap the process
        (SIGINT, then SIGKILL if it will not go). Returns the exit code."""
        if not self._started:
            return 0
        if self.alive and self._executor is not None:
            steps = {"active": ("deactivate", "cleanup", "shutdown"), "inactive": ("cleanup", "shutdown"),
                     "unconfigured": ("shutdown",)}
            try:
                for label in steps.get(self.state(timeout_s=10.0), ()):
                    self.transition(label, timeout_s=timeout_s)
            except NodeProcessError as exc:
                self._log(f"[reflex-ros run] orderly shutdown incomplete: {exc}")
        # after shutdown the node exits by itself; SIGINT (then SIGKILL) if it does not
        code = self.child.stop(signal.SIGINT, timeout_s=15.0, grace_s=timeout_s)
        self._close_client()
        return code

    def kill(self) -> None:
        """Last resort (tests' finalizers): no transitions, just end the process."""
        self.child.stop(signal.SIGTERM, timeout_s=15.0)
        self._close_client()

    def _close_client(self) -> None:
        if self._ctx is None:
            return
        try:
            if self._executor is not None:
                self._executor.shutdown()
            if self._client_node is not None:
                self._client_node.destroy_node()
        finally:
            import rclpy

            rclpy.try_shutdown(context=self._ctx)
            self._ctx = self._executor = self._client_node = None

    def __enter__(self) -> PolicyNodeProcess:
        try:
            self.start()
            if self.autostart:
                self.bring_up()
        except BaseException:
            self.stop(timeout_s=30.0) if self.alive else self.kill()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            self.kill()


# ---------------------------------------------------------------------- CLI


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run", help="run the policy node with configure + activate (launch-file equivalent)",
        description="Start the lifecycle policy node, configure and activate it, stream its log; "
                    "Ctrl-C deactivates (hold position), cleans up and shuts it down.",
        epilog="example (a LeRobot SmolVLA export on an SO-101):\n"
               "  reflex-ros run ~/exports/smolvla --embodiment so100 \\\n"
               "    --camera observation.images.top=/cam/top/image_raw \\\n"
               "    --camera observation.images.wrist=/cam/wrist/image_raw --instruction 'pick up the cube'\n"
               "A checkpoint's cameras are matched by name, never by position: every image feature of the "
               "policy needs a --camera (LeRobot's empty cameras excepted).\n\n"
               "compressed cameras (sensor_msgs/CompressedImage, JPEG or PNG): give the image_transport topic,\n"
               "  --camera observation.images.top=/cam/top/image_raw/compressed\n"
               "  (a topic ending in /compressed is read as CompressedImage; camera_message_type overrides)\n\n"
               "FollowJointTrajectory goals instead of the ~/joint_trajectory topic:\n"
               "  reflex-ros run EXPORT --embodiment so100 --output-interface action --controller arm_controller\n"
               "  (goals go to arm_controller/follow_joint_trajectory; each preempts the previous one)\n\n"
               "Fast DDS: the node runs with reflex_ros's config/fastdds.xml (camera frames over shared memory)\n"
               "unless FASTDDS_DEFAULT_PROFILES_FILE / FASTRTPS_DEFAULT_PROFILES_FILE is set; start the camera\n"
               "driver with FASTDDS_DEFAULT_PROFILES_FILE pointing at the same file.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export_dir", help="export directory (reflex-ros export --output DIR)")
    parser.add_argument("--embodiment", default=None, help="embodiment preset (franka, so100, ur5) or yaml path")
    parser.add_argument("--params-file", default=None,
                        help="ROS 2 parameters yaml (default: reflex_ros config/policy.yaml)")
    parser.add_argument("--auto-calibrate", action="store_true", help="set auto_calibrate:=true")
    parser.add_argument("--camera", action="append", default=[], metavar="NAME=TOPIC",
                        help="feed the model camera NAME (a LeRobot image feature key such as "
                             "observation.images.top) from TOPIC; repeat per camera. Sets camera_names and "
                             "camera_topics in this order")
    parser.add_argument("--instruction", default=None, help="the language instruction (sets instruction)")
    parser.add_argument("--output-interface", choices=("topic", "action"), default=None,
                        help="topic: trajectory_msgs/JointTrajectory on ~/joint_trajectory (default); action: each "
                             "chunk as a control_msgs/FollowJointTrajectory goal (sets output_interface)")
    parser.add_argument("--controller", default=None, metavar="NAME",
                        help="the joint_trajectory_controller receiving the goals with --output-interface action "
                             "(sets controller_name; default joint_trajectory_controller)")
    parser.add_argument("--node-name", default=DEFAULT_NODE_NAME, help="node name (default %(default)s)")
    parser.add_argument("--namespace", default="", help="node namespace")
    parser.add_argument("--ros-args", dest="ros_args", nargs=argparse.REMAINDER, default=[],
                        help="everything after it goes to the node verbatim (-p name:=value, -r ...)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    export_dir = Path(args.export_dir).expanduser()
    if not export_dir.is_dir():
        print(f"reflex-ros run: export directory {str(export_dir)!r} does not exist; "
              f"create one with `reflex-ros export --model tiny --output DIR`", file=sys.stderr)
        return 2
    params_file: Any = _USE_DEFAULT
    if args.params_file:
        params_file = Path(args.params_file).expanduser()
        if not params_file.is_file():
            print(f"reflex-ros run: params file {str(params_file)!r} does not exist", file=sys.stderr)
            return 2
    parameters: dict[str, Any] = {}
    if args.camera:
        pairs = [item.partition("=") for item in args.camera]
        bad = [item for item, (name, eq, topic) in zip(args.camera, pairs, strict=True) if not (name and eq and topic)]
        if bad:
            print(f"reflex-ros run: --camera takes NAME=TOPIC, got {bad}", file=sys.stderr)
            return 2
        parameters["camera_names"] = [name for name, _, _ in pairs]
        parameters["camera_topics"] = [topic for _, _, topic in pairs]
    if args.instruction is not None:
        parameters["instruction"] = args.instruction
    if args.output_interface is not None:
        parameters["output_interface"] = args.output_interface
    if args.controller is not None:
        parameters["controller_name"] = args.controller
    node = PolicyNodeProcess(
        export_dir, embodiment=args.embodiment, params_file=params_file,
        auto_calibrate=True if args.auto_calibrate else None, node_name=args.node_name,
        namespace=args.namespace, parameters=parameters, ros_args=args.ros_args)
    with stop_on_signals() as stop:
        try:
            try:
                node.start()
                node.configure()
                if stop.is_set():
                    raise KeyboardInterrupt
                node.activate()
            except NodeProcessError as exc:
                print(f"reflex-ros run: {exc}", file=sys.stderr)
                node.stop(timeout_s=30.0)
                return 2
            except KeyboardInterrupt:
                node.stop()
                return 0
            print(f"[reflex-ros run] {node.fqn} active; Ctrl-C to stop (node pid {node.pid})", file=sys.stderr,
                  flush=True)
            while not stop.is_set() and node.alive:
                stop.wait(0.2)
            if not node.alive:
                print(f"reflex-ros run: the node exited unexpectedly (code {node.returncode})", file=sys.stderr)
                return 1
            print("[reflex-ros run] stopping: deactivate -> cleanup -> shutdown", file=sys.stderr, flush=True)
            code = node.stop()
            return 0 if code == 0 else 1
        finally:
            node.kill()


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m reflex_ros.ros.runner EXPORT_DIR ...`` (same as ``reflex-ros run``)."""
    parser = argparse.ArgumentParser(prog="reflex-ros")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["run", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
