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
