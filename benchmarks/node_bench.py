"""What the node benchmarks (soak.py, node_overhead.py, node_cpu.py) share: the joints and
camera topic they feed the node (the so100 embodiment's and the node's default), and the tiny
export they run it on when no ``--export`` is given. Imported from the scripts' own folder
(``python benchmarks/<script>.py`` puts it on sys.path)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from reflex_ros.control.embodiment import load_embodiment
from reflex_ros.vocab import DEFAULT_CAMERA_TOPIC

JOINTS = list(load_embodiment("so100").joint_names)
CAMERA = DEFAULT_CAMERA_TOPIC


def tiny_export(directory: str | None, prefix: str, name: str = "tiny", **options: Any) -> Path:
    """``directory`` when given, else a fresh tiny export (both layouts) in a temporary folder;
    ``options`` go to ``export_model`` (``num_cameras``, ``log``)."""
    if directory:
        return Path(directory)
    from reflex_ros.engine.export import export_model

    out = Path(tempfile.mkdtemp(prefix=prefix)) / name
    export_model(preset="tiny", output_dir=out, mode="both", **options)
    return out
