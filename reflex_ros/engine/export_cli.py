"""`reflex-ros export` and `reflex-ros validate`: ONNX export with verified parity.

Exit codes (seeds 002/003): 0 parity passed; 1 parity failed (export: nothing written);
2 usage or input error, printed as one line with a remediation hint, never a traceback.
Only the standard library is imported here; torch/onnxruntime load inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EXIT_OK, EXIT_PARITY_FAILED, EXIT_ERROR = 0, 1, 2
PRESET_CHOICES = ("tiny", "small", "pi0")
# Fault injection for tests: scale the exported ONNX weights by (1 + value) before the parity
# check, so the refusal path can be exercised through the real CLI.
PERTURB_ENV = "REFLEX_ROS_TEST_PERTURB_ONNX"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` and ``validate`` subcommands."""
    exp = subparsers.add_parser(
        "export",
        help="export a policy to ONNX; writes only if ONNX matches torch (parity check)",
        description=(
            "Build the policy preset, export ONNX graphs, run the full-NFE parity check against "
            "torch on seeded fixtures and write DIR only on pass. Exit 0 pass, 1 parity failure "
            "(nothing left in DIR), 2 error."
        ),
    )
    exp.add_argument("--model", required=True, choices=PRESET_CHOICES, help="policy size preset")
    exp.add_argument("--output", required=True, type=Path, metavar="DIR",
                     help="export directory to create (must not exist or be empty, unless --force)")
    exp.add_argument("--mode", default="both", choices=("both", "decomposed", "monolithic"),
                     help="decomposed = vlm_prefix.onnx + expert_denoise.onnx (any NFE, CFG; the serving "
                          "default); monolithic = model.onnx with the NFE loop unrolled; both (default)")
    exp.add_argument("--nfe", type=int, default=10, choices=(1, 2, 4, 8, 10),
                     help="denoising steps (function evaluations) unrolled into the monolithic graph and "
                          "the decomposed default (default 10)")
    exp.add_argument("--strict", action="store_true", help="parity threshold 1e-5 instead of 1e-4")
    exp.add_argument("--threshold", type=_positive_float, default=None,
                     help="explicit parity threshold on max |onnx - torch| (overrides --strict)")
    exp.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    exp.add_argument("--num-cameras", type=_positive_int, default=None,
                     help="number of camera images per observation (default: the preset's)")
    exp.add_argument("--fixtures", type=_positive_int, default=4, help="seeded parity fixtures (default 4)")
    exp.add_argument("--seed", type=int, default=0, help="seed of the policy init and the fixtures (default 0)")
    exp.add_argument("--force", action="store_true", help="overwrite a non-empty DIR (only after parity passes)")
    exp.set_defaults(func=_export_handler)

    val = subparsers.add_parser(
        "validate",
        help="re-check an export directory's ONNX against its stored torch weights",
        description=(
            "Run the parity check of `export` again on an existing export. Exit 0 pass, 1 any "
            "fixture above the threshold, 2 error (missing/corrupt export)."
        ),
    )
    val.add_argument("export_dir", type=Path, metavar="DIR", help="export directory")
    val.add_argument("--threshold", type=_positive_float, default=None,
                     help="max |onnx - torch| allowed (default 1e-4, or 1e-5 with --strict)")
    val.add_argument("--strict", action="store_true", help="threshold 1e-5")
    val.add_argument("--fixtures", type=_positive_int, default=4, help="seeded parity fixtures (default 4)")
    val.add_argument("--seed", type=int, default=0, help="fixture seed (default 0)")
    val.add_argument("--output-json", type=Path, default=None, metavar="FILE",
                     help="write per-fixture results, max_abs_diff_across_all, threshold and passed as JSON")
    val.set_defaults(func=_validate_handler)


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_ERROR


def _export_handler(args: argparse.Namespace) -> int:
    try:
        from reflex_ros.engine.export import export_model
        from reflex_ros.engine.parity import ParityCheckFailed
        from reflex_ros.engine.types import ReflexError

        perturb = float(os.environ.get(PERTURB_ENV, "0") or 0)
        export_model(
            preset=args.model, output_dir=args.output, mode=args.mode, nfe=args.nfe,
            num_cameras=args.num_cameras, strict=args.strict, opset=args.opset, threshold=args.threshold,
            seed=args.seed, fixtures=args.fixtures, force=args.force, perturb_onnx=perturb,
        )
    except ParityCheckFailed as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_PARITY_FAILED
    except ReflexError as exc:
        return _error(str(exc))
    except (OSError, ValueError) as exc:
        return _error(f"{type(exc).__name__}: {exc}; check --output and the flags (reflex-ros export --help)")
    return EXIT_OK


def _validate_handler(args: argparse.Namespace) -> int:
    def write_json(doc: dict) -> None:
        if args.output_json is not None:
            args.output_json.parent.mkdir(parents=True, exist_ok=True)
            args.output_json.write_text(json.dumps(doc, indent=2) + "\n")

    try:
        from reflex_ros.engine.export import validate_export
        from reflex_ros.engine.types import ReflexError

        report = validate_export(
            args.export_dir, threshold=args.threshold, strict=args.strict, fixtures=args.fixtures, seed=args.seed
        )
    except ReflexError as exc:
        write_json({"export_dir": str(args.export_dir), "passed": False, "error": str(exc)})
        return _error(str(exc))
    except (OSError, ValueError) as exc:
        write_json({"export_dir": str(args.export_dir), "passed": False, "error": str(exc)})
        return _error(f"{type(exc).__name__}: {exc}")
    write_json(report.to_dict())
    return EXIT_OK if report.passed else EXIT_PARITY_FAILED
