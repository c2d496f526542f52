"""`reflex-ros`: one entry point, one subcommand per job.

Each subcommand lives in its own module and exposes ``register(subparsers)``, which adds an
argparse parser whose ``func`` runs the command and returns an exit code. The modules import
their heavy dependencies (torch, rclpy, onnxruntime, mujoco) inside the handler, so
``reflex-ros --help`` and every ``--help`` stay instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module that registers it (order = order shown in --help)
SUBCOMMANDS: dict[str, str] = {
    "export": "reflex_ros.engine.export_cli",
    "validate": "reflex_ros.engine.export_cli",
    "predict": "reflex_ros.engine.export_cli",
    "bench": "reflex_ros.engine.bench",
    "run": "reflex_ros.ros.runner",
    "sim": "reflex_ros.sim.cli",
    "demo": "reflex_ros.apps.demo",
    "calibrate": "reflex_ros.apps.calibrate",
    "doctor": "reflex_ros.calibration.doctor",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reflex-ros",
        description="Serve flow-matching VLA policies (pi0 / pi0.5 / SmolVLA style) on ROS 2 robots.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    registered: set[str] = set()
    for module_name in dict.fromkeys(SUBCOMMANDS.values()):
        importlib.import_module(module_name).register(sub)
    registered.update(sub.choices)
    parser.set_defaults(_registered=registered)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
