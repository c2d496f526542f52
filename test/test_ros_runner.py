"""`reflex-ros run` as a user runs it, and the launch file.

The CLI runs as a real process in its own process group; SIGINT to that group is what a
terminal's Ctrl-C does. launch_ros is not installable here, so the launch file is compiled
and its arguments and parameters checked against the node's declared parameters.
"""

from __future__ import annotations

import ast
import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from _ros_harness import RosHarness, stamp_ns, wait_for

from reflex_ros.control import params as P
from reflex_ros.ros.runner import node_command, ros_environment

REPO = Path(__file__).resolve().parent.parent
LAUNCH = REPO / "launch" / "policy.launch.py"
POLICY_YAML = REPO / "config" / "policy.yaml"


class _Cli:
    """`python -m reflex_ros.cli run ...` with its output collected line by line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reflex_ros.cli", "run", *args], stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True, env=ros_environment())
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def has(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def wait(self, timeout_s: float = 120.0) -> int:
        try:
            return self.proc.wait(timeout=timeout_s)
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self._reader.join(timeout=10)


def test_run_streams_log_publishes_and_ctrl_c_shuts_down_in_order(tiny_export: Path) -> None:
    cli = _Cli(str(tiny_export), "--embodiment", "so100", "--node-name", "reflex_run_test",
               "--ros-args", "-p", "execute_steps:=3")
    robot = RosHarness(node_fqn="/reflex_run_test")
    try:
        wait_for(lambda: cli.has("active; Ctrl-C to stop") or cli.proc.poll() is not None, 120, "the node to activate")
        assert cli.proc.poll() is None, "\n".join(cli.lines)
        assert cli.has("[reflex_run_test]: configured in")  # the node's own log is streamed
        robot.feed(True, rate_hz=30.0)
        robot.wait_chunks(2, timeout_s=90)
        assert robot.get_params("execute_steps") == [3]  # --ros-args reached the node
        os.killpg(cli.proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert cli.wait() == 0, "\n".join(cli.lines)
        assert cli.has("stopping: deactivate -> cleanup -> shutdown")
        assert cli.has("inactive: published a hold-position trajectory")
        assert cli.has("cleaned up: engine released")
    finally:
        robot.close()
        cli.close()


def test_run_exits_2_with_the_nodes_reason_when_configure_fails(tmp_path: Path) -> None:
    not_an_export = tmp_path / "empty"
    not_an_export.mkdir()
    cli = _Cli(str(not_an_export), "--embodiment", "so100", "--node-name", "reflex_run_fail")
    assert cli.wait() == 2
    assert cli.has("reflex-ros run: configure failed:") and cli.has("reflex_config.json")
    cli = _Cli(str(tmp_path / "missing"))
    assert cli.wait() == 2 and cli.has("does not exist")


def test_node_command_matches_the_launch_files_parameters(tmp_path: Path) -> None:
    cmd = node_command(tmp_path, embodiment="so100", params_file=POLICY_YAML, auto_calibrate=True,
                       ros_args=["--ros-args", "-p", "nfe:=4"])
    assert cmd[1:3] == ["-m", "reflex_ros.ros.policy_node"]
    i = cmd.index("--params-file")
    assert cmd[i + 1] == str(POLICY_YAML)
    tail = cmd[i + 2:]
    assert tail == ["-p", f'export_dir:="{tmp_path.resolve()}"', "-p", 'embodiment:="so100"',
                    "-p", "auto_calibrate:=true", "-p", "nfe:=4"]
    named = node_command(tmp_path, parameters={"camera_names": ["observation.images.top"], "camera_topics": ["/a"]})
    assert named[-4:] == ["-p", 'camera_names:=["observation.images.top"]', "-p", 'camera_topics:=["/a"]']
    env = ros_environment({"ROS_DOMAIN_ID": "7"}, domain_id=42)
    assert env["ROS_DOMAIN_ID"] == "42" and env["PYTHONUNBUFFERED"] == "1" and env["AMENT_PREFIX_PATH"]


def _launch_tree() -> ast.Module:
    source = LAUNCH.read_text()
    compile(source, str(LAUNCH), "exec")
    return ast.parse(source)


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and
            getattr(n.func, "id", getattr(n.func, "attr", None)) == name]


def test_launch_file_declares_the_arguments_and_autostarts() -> None:
    tree = _launch_tree()
    args = {c.args[0].value for c in _calls(tree, "DeclareLaunchArgument")}
    assert args == {"export_dir", "embodiment", "auto_calibrate", "params_file", "cameras", "fastdds_profile"}
    (node,) = _calls(tree, "LifecycleNode")
    kw = {k.arg: k.value for k in node.keywords}
    assert kw["package"].value == "reflex_ros" and kw["name"].id == "NODE_NAME"
    assert any(isinstance(n, ast.ImportFrom) and n.module == "reflex_ros.vocab" and
               [a.name for a in n.names] == ["NODE_NAME"] for n in tree.body)
    passed = {k.value for d in ast.walk(tree) if isinstance(d, ast.Dict) for k in d.keys
              if isinstance(k, ast.Constant)}
    assert {"export_dir", "embodiment", "auto_calibrate", "camera_names", "camera_topics"} <= passed
    assert passed <= set(P.SPECS)
    # the camera pairs parser is plain Python: exercise it for real
    namespace: dict = {}
    exec(compile(ast.Module(body=[n for n in tree.body if isinstance(n, ast.FunctionDef)
                                  and n.name == "camera_parameters"], type_ignores=[]), str(LAUNCH), "exec"), namespace)
    parse = namespace["camera_parameters"]
    assert parse("") == {}
    assert parse("observation.images.top=/a, observation.images.wrist=/b") == {
        "camera_names": ["observation.images.top", "observation.images.wrist"], "camera_topics": ["/a", "/b"]}
    with pytest.raises(ValueError, match="NAME=TOPIC"):
        parse("observation.images.top")
    # the Fast DDS profile: ours by default, a profile already in the environment wins, none = none
    namespace = {"os": __import__("os")}
    exec(compile(ast.Module(body=[n for n in tree.body if isinstance(n, ast.Assign | ast.FunctionDef)
                                  and getattr(n, "name", "") in ("", "fastdds_profile")], type_ignores=[]),
                 str(LAUNCH), "exec"), namespace)
    profile = namespace["fastdds_profile"]
    assert profile("", "/share/fastdds.xml", environ={}) == "/share/fastdds.xml"
    assert profile("/mine.xml", "/share/fastdds.xml", environ={}) == "/mine.xml"
    assert profile("none", "/share/fastdds.xml", environ={}) is None
    assert profile("", "/share/fastdds.xml", environ={"FASTRTPS_DEFAULT_PROFILES_FILE": "/user.xml"}) is None
    (setenv,) = _calls(tree, "SetEnvironmentVariable")
    assert setenv.args[0].value == "FASTDDS_DEFAULT_PROFILES_FILE"
    transitions = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr.startswith("TRANSITION_")}
    assert transitions == {"TRANSITION_CONFIGURE", "TRANSITION_ACTIVATE"}
    handler = _calls(tree, "OnStateTransition")[0]
    hk = {k.arg: getattr(k.value, "value", None) for k in handler.keywords}
    assert (hk["start_state"], hk["goal_state"]) == ("configuring", "inactive")
    assert any(isinstance(f, ast.FunctionDef) and f.name == "generate_launch_description" for f in tree.body)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
def test_node_run_directly_shuts_down_cleanly_on_sigint(tiny_export: Path, sig: int) -> None:
    """`python -m reflex_ros.ros.policy_node` alone: SIGINT (or SIGHUP: its terminal closed,
    issue 13 item 6) while active holds and cleans up."""
    from reflex_ros.ros.runner import PolicyNodeProcess

    node = PolicyNodeProcess(tiny_export, embodiment="so100", node_name=f"reflex_direct_{sig}", log=lambda line: None)
    try:
        with node:
            robot = RosHarness(node_fqn=node.fqn)
            try:
                robot.feed(True, rate_hz=30.0)
                robot.wait_chunks(1, timeout_s=90)
                os.kill(node.pid, sig)
                wait_for(lambda: not node.alive, 60, f"the node to exit on {signal.Signals(sig).name}")
            finally:
                robot.close()
        assert node.returncode == 0
        text = "\n".join(node.lines)
        assert "inactive: published a hold-position trajectory" in text and "cleaned up" in text
    finally:
        node.kill()


# --------------------------------------------------------------------------- issue 13 item 6: no orphans

# Runs `reflex-ros run` as a child subreaper (PR_SET_CHILD_SUBREAPER), so the node, orphaned when
# the runner is killed, is reparented here and its exit status can be reported.
SUBREAPER = """
import ctypes, os, subprocess, sys
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)
runner = subprocess.Popen([sys.executable, "-m", "reflex_ros.cli", "run", *sys.argv[1:]])
print(f"runner pid {runner.pid}", flush=True)
while True:
    try:
        pid, status = os.wait()
    except ChildProcessError:
        break
    print(f"exited {pid} {os.waitstatus_to_exitcode(status)}", flush=True)
"""


def _pid_after(lines: list[str], text: str) -> int | None:
    line = next((x for x in list(lines) if text in x), None)
    return int(line.split(text, 1)[1].split(")")[0].split()[0]) if line else None


def test_a_killed_runner_never_leaves_its_node_commanding_the_robot(tiny_export: Path) -> None:
    """SIGKILL of `reflex-ros run` used to leave the node publishing (24 chunks after the runner
    died). Now the node notices (its lifeline pipe reads EOF), holds position and exits 0."""
    proc = subprocess.Popen([sys.executable, "-c", SUBREAPER, str(tiny_export), "--embodiment", "so100",
                             "--node-name", "reflex_orphan_test", "--ros-args", "-p", "execute_steps:=3"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=ros_environment())
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(line.rstrip("\n") for line in proc.stdout), daemon=True)
    reader.start()
    robot = RosHarness(node_fqn="/reflex_orphan_test")
    node_pid = None
    try:
        wait_for(lambda: _pid_after(lines, "(node pid ") or proc.poll() is not None, 120, "the node to activate")
        runner_pid, node_pid = _pid_after(lines, "runner pid "), _pid_after(lines, "(node pid ")
        assert runner_pid and node_pid, "\n".join(lines)
        robot.feed(True, rate_hz=30.0)
        robot.wait_chunks(2, timeout_s=90)
        with robot.lock:
            mark = len(robot.trajectories)
        os.kill(runner_pid, signal.SIGKILL)
        wait_for(lambda: any(line.startswith(f"exited {node_pid} ") for line in lines), 120,
                 "the orphaned node to exit")
        assert f"exited {node_pid} 0" in lines and f"exited {runner_pid} -9" in lines, "\n".join(lines[-30:])
        with robot.lock:
            after = robot.trajectories[mark:]
        # every chunk is a trajectory on this one topic (in publish order): the hold was the last word
        holds = [r for r in after if len(r.msg.points) == 1 and stamp_ns(r.msg.header.stamp) == 0]
        assert holds and after[-1] is holds[-1], [len(r.msg.points) for r in after]
    finally:
        robot.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        if node_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(node_pid, signal.SIGKILL)  # only if the node survived (the failure this test is for)
        proc.wait(timeout=30)
        reader.join(timeout=10)


def test_sighup_to_the_runner_shuts_the_node_down_in_order(tiny_export: Path) -> None:
    """A closed terminal (SIGHUP) used to kill the runner outright and orphan the node."""
    cli = _Cli(str(tiny_export), "--embodiment", "so100", "--node-name", "reflex_hup_test")
    try:
        wait_for(lambda: cli.has("active; Ctrl-C to stop") or cli.proc.poll() is not None, 120, "the node to activate")
        os.kill(cli.proc.pid, signal.SIGHUP)
        assert cli.wait() == 0, "\n".join(cli.lines)
        assert cli.has("stopping: deactivate -> cleanup -> shutdown") and cli.has("cleaned up: engine released")
    finally:
        cli.close()
