"""The lifecycle, driven through its services from another process.

A node started with a bad export_dir fails configure with one clear line and stays
unconfigured; fixing the parameter makes configure succeed. Reconfigure-only parameters are
refused while configured and accepted again after cleanup. deactivate publishes a
hold-position trajectory and stops the chunks; shutdown ends the process cleanly.

The node is shared by the module (conftest's ``policy``, started unconfigured on an export
directory that does not exist); each test first drives it to the state it starts from, so
the order of the tests does not matter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _ros_harness import SO100_JOINTS, RosHarness, stamp_ns, unconfigured, wait_for

from reflex_ros.ros.runner import NodeProcessError, PolicyNodeProcess
from reflex_ros.vocab import DEFAULT_CAMERA_TOPIC

POLICY = {"export": "missing", "node": {"parameters": {"execute_steps": 3}, "autostart": False}}


def inactive(node: PolicyNodeProcess, robot: RosHarness, export: Path) -> None:
    unconfigured(node)
    assert robot.set_params(export_dir=str(export), camera_topics=[DEFAULT_CAMERA_TOPIC]) == [(True, "")] * 2
    node.configure()


def test_configure_fails_on_bad_export_dir_then_succeeds_after_fixing(node, robot, tiny_export: Path,
                                                                      tmp_path: Path) -> None:
    unconfigured(node)
    assert robot.set_params(export_dir=str(tmp_path / "no_such_export")) == [(True, "")]
    mark = len(node.lines)
    with pytest.raises(NodeProcessError, match=r"configure failed: .*no_such_export"):
        node.configure()
    assert node.state() == "unconfigured"
    assert sum("configure failed" in line for line in list(node.lines)[mark:]) == 1  # one clear line
    failed_diag = wait_for(lambda: (d := robot.latest_diagnostics(after_ns=robot.now_ns())) and
                           d["_message"].startswith("configure failed") and d, 30, "an error diagnostic")
    assert failed_diag["_level"] == 2

    # wrong number of camera topics for the export: refused with the counts
    assert robot.set_params(camera_topics=["/cam/a", "/cam/b"], export_dir=str(tiny_export)) == [(True, "")] * 2
    with pytest.raises(NodeProcessError, match=r"expects 1 camera\(s\) but camera_topics lists 2"):
        node.configure()
    assert node.state() == "unconfigured"

    assert robot.set_params(camera_topics=["/camera/front/image_raw"]) == [(True, "")]
    node.configure()
    assert node.state() == "inactive"
    ok, reason = robot.set_params(export_dir="/somewhere/else")[0]
    assert not ok and "read-only" in reason
    assert robot.get_params("export_dir") == [str(tiny_export)]


def test_activate_publishes_and_deactivate_holds_position(node, robot, tiny_export: Path) -> None:
    inactive(node, robot, tiny_export)
    held = [0.1, -0.2, 0.3, -0.4, 0.5, 0.6]
    robot.feed(True, rate_hz=30.0, state=lambda: (SO100_JOINTS, held))
    node.activate()
    assert node.state() == "active"
    robot.wait_chunks(3, timeout_s=90)

    n_traj = len(robot.trajectories)
    node.deactivate()
    assert node.state() == "inactive"

    def hold():
        with robot.lock:
            for r in robot.trajectories[n_traj:]:
                if len(r.msg.points) == 1 and stamp_ns(r.msg.header.stamp) == 0:
                    return r.msg
        return None
    msg = wait_for(hold, 30, "the hold-position trajectory")
    assert list(msg.joint_names) == SO100_JOINTS
    np.testing.assert_allclose(msg.points[0].positions, held, atol=1e-6)
    assert list(msg.points[0].velocities) == [0.0] * 6
    assert stamp_ns(msg.points[0].time_from_start) == 33_333_333
    # the hold is the last trajectory and no chunk follows: two diagnostics a second apart agree
    first = robot.latest_diagnostics(after_ns=robot.now_ns())
    second = robot.latest_diagnostics(after_ns=robot.now_ns())
    assert first["lifecycle_state"] == second["lifecycle_state"] == "inactive"
    assert first["chunks_published"] == second["chunks_published"]
    with robot.lock:
        assert robot.trajectories[-1].msg is msg
        assert len(robot.chunks) == int(second["chunks_published"])
    robot.feed(False)


def test_cleanup_unlocks_reconfigure_only_parameters(node, robot, tiny_export) -> None:
    inactive(node, robot, tiny_export)
    assert robot.describe("export_dir")[0].read_only is True
    node.cleanup()
    assert node.state() == "unconfigured"
    assert robot.describe("export_dir")[0].read_only is False
    assert robot.set_params(export_dir=str(tiny_export)) == [(True, "")]
    node.configure()  # a second configure after cleanup works (engine reloaded)
    assert node.state() == "inactive"


def test_shutdown_from_unconfigured_exits_cleanly(tiny_export: Path) -> None:
    """Its own node: after shutdown there is no node left to share."""
    with PolicyNodeProcess(tiny_export, embodiment="so100", autostart=False, node_name="reflex_policy_shutdown",
                           log=lambda line: None) as node:
        node.shutdown_node()
        wait_for(lambda: not node.alive, 60, "the node process to exit after shutdown")
        assert node.returncode == 0
