"""Shared test fixtures.

Every test session gets its own ROS_DOMAIN_ID and localhost-only discovery, so parallel runs
(and the DDS traffic of other sessions on this machine) never cross, and nothing leaves the
loopback interface. Child processes inherit the environment.
"""

from __future__ import annotations

import fcntl
import os
import random
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

def _claim_domain_id() -> int:
    """A ROS_DOMAIN_ID no other test session on this machine holds (an flock'd file per id,
    released when this process exits), so concurrent sessions never hear each other."""
    ids = list(range(1, 101))
    random.Random(os.getpid()).shuffle(ids)
    for domain_id in ids:
        handle = open(f"/tmp/reflex_ros_test_domain_{domain_id}.lock", "w")  # noqa: SIM115
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _HELD_LOCKS.append(handle)
        return domain_id
    raise RuntimeError("all ROS domain ids 1-100 are held by other test sessions")


_HELD_LOCKS: list = []
if "ROS_DOMAIN_ID" not in os.environ:
    os.environ["ROS_DOMAIN_ID"] = str(_claim_domain_id())
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("AMENT_PREFIX_PATH", sys.prefix)
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYTHONUNBUFFERED", "1")
# The Fast DDS profile the runner, the demo and the launch file apply (config/fastdds.xml), for
# the test process's own participants too: camera-sized frames cross over shared memory.
from reflex_ros.ros.dds import dds_environment  # noqa: E402 - stdlib only, after the environment

os.environ.update(dds_environment(os.environ))


def _export(tmp_path_factory: pytest.TempPathFactory, name: str, **kwargs) -> Path:
    from reflex_ros.engine.export import export_model

    out = tmp_path_factory.mktemp(name) / "export"
    export_model(preset="tiny", output_dir=out, mode="both", **kwargs)
    return out


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real tiny export (monolithic + decomposed ONNX, weights, reflex_config.json), 1 camera."""
    return _export(tmp_path_factory, "tiny1")


@pytest.fixture(scope="session")
def tiny_export_2cam(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real tiny export with 2 cameras (multi-camera sync tests)."""
    return _export(tmp_path_factory, "tiny2", num_cameras=2)


class PolicyUnderTest:
    """The policy node (its own process, ``node``: a PolicyNodeProcess) and the robot side in
    this process (``robot``: a RosHarness publishing cameras + joint states and recording
    what the node sends)."""

    def __init__(self, node, robot) -> None:
        self.node = node
        self.robot = robot


@pytest.fixture(scope="module")
def policy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """One policy node + robot pair per test module, configured by the module's ``POLICY``
    dict: ``export`` (a fixture name, default "tiny_export"; "missing" = a directory that
    does not exist), ``node`` (PolicyNodeProcess keyword arguments; embodiment so100 unless
    given; ``autostart`` False leaves it unconfigured) and ``robot`` (RosHarness keyword
    arguments). Tests that share it must not depend on each other's order: each sets what
    it relies on first (see the modules' autouse fixtures)."""
    from _ros_harness import RosHarness

    from reflex_ros.ros.runner import PolicyNodeProcess

    config = getattr(request.module, "POLICY", {})
    export_name = config.get("export", "tiny_export")
    export = (tmp_path_factory.mktemp("policy") / "no_such_export" if export_name == "missing"
              else request.getfixturevalue(export_name))
    kwargs = {"embodiment": "so100", "log": lambda line: None, **config.get("node", {})}
    proc = PolicyNodeProcess(export, **kwargs)
    try:
        if kwargs.get("autostart", True):
            proc.__enter__()
        else:
            proc.start()
        robot = RosHarness(node_fqn=proc.fqn, **config.get("robot", {}))
        try:
            yield PolicyUnderTest(proc, robot)
        finally:
            robot.close()
    finally:
        try:
            proc.stop()
        finally:
            proc.kill()


@pytest.fixture(scope="module")
def node(policy: PolicyUnderTest):
    return policy.node


@pytest.fixture(scope="module")
def robot(policy: PolicyUnderTest):
    return policy.robot


LEROBOT_DATA = Path(__file__).parent / "data" / "lerobot"


@pytest.fixture(scope="session")
def smolvla_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny LeRobot SmolVLA fixture checkpoint (2 named cameras, state/action 6),
    exported through the real exporter with its offline tokenizer cache."""
    from reflex_ros.engine.export import export_model

    out = tmp_path_factory.mktemp("smolvla") / "export"
    saved = {k: os.environ.get(k) for k in ("HF_HOME", "HF_HUB_OFFLINE")}
    os.environ.update(HF_HOME=str(LEROBOT_DATA / "hf_cache"), HF_HUB_OFFLINE="1")
    try:
        export_model(checkpoint=str(LEROBOT_DATA / "smolvla" / "checkpoint"), output_dir=out, mode="decomposed",
                     fixtures=1, log=None)
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return out


@pytest.fixture(scope="session")
def nan_export(tiny_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny export with every ONNX weight matrix NaN: a real model whose actions are all NaN
    (what a corrupted or badly quantized model produces)."""
    import shutil

    from reflex_ros.engine.bundle import load_bundle
    from reflex_ros.engine.export import perturb_onnx_weights

    out = tmp_path_factory.mktemp("nan") / "export"
    shutil.copytree(tiny_export, out)
    bundle = load_bundle(out, check_graphs=False)
    for layout in bundle.layouts:
        for path in bundle.graph_paths(layout).values():
            perturb_onnx_weights(path, float("nan"))
    return out
