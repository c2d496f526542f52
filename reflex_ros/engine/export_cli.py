"""`reflex-ros export`, `validate` and `predict`: ONNX export with verified parity, and one chunk offline.

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


EXPORT_EPILOG = """\
examples:
  reflex-ros export ~/ckpts/my_pi05_finetune --output ~/exports/pick   # a LeRobot checkpoint directory
  reflex-ros export lerobot/smolvla_base --output ~/exports/smolvla     # a hub id in the local HF cache
  reflex-ros export --model tiny --output /tmp/tiny                     # the reference model (random weights)

A LeRobot checkpoint (smolvla, pi0, pi05; saved by LeRobot's save_pretrained) is read with its
pre/post-processor files; its tokenizer (google/paligemma-3b-pt-224, or the SmolVLM backbone
named by vlm_model_name) is taken from the local Hugging Face cache and copied into the export.
Nothing is downloaded: a missing checkpoint or tokenizer is an error naming the command that
fetches it. Serving an export needs neither the checkpoint nor the cache nor the network.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export``, ``validate`` and ``predict`` subcommands."""
    exp = subparsers.add_parser(
        "export",
        help="export a LeRobot checkpoint (or a reference preset) to ONNX; writes only if ONNX matches torch",
        description=(
            "Load CHECKPOINT (a LeRobot smolvla/pi0/pi05 checkpoint directory or hub id) or the "
            "reference --model PRESET, export ONNX graphs, run the full-NFE parity check against "
            "torch on seeded fixtures and write DIR only on pass. Exit 0 pass, 1 parity failure "
            "(nothing left in DIR), 2 error."
        ),
        epilog=EXPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage=("reflex-ros export CHECKPOINT --output DIR [options]\n"
               "       reflex-ros export --model {tiny,small,pi0} --output DIR [options]"),
    )
    exp.add_argument("checkpoint", nargs="?", default=None, metavar="CHECKPOINT",
                     help="LeRobot checkpoint directory (config.json + model.safetensors + processor files) "
                          "or hub id resolved in the local Hugging Face cache")
    exp.add_argument("--model", default=None, choices=PRESET_CHOICES,
                     help="instead of a checkpoint: the reference model at a preset size, random weights "
                          "(tests, demos, benchmarks)")
    exp.add_argument("--output", required=True, type=Path, metavar="DIR",
                     help="export directory to create: must not exist, or be empty (a mount point is fine); "
                          "--force replaces an earlier export there")
    exp.add_argument("--mode", default="both", choices=("both", "decomposed", "monolithic"),
                     help="decomposed = vlm_prefix.onnx + expert_denoise.onnx (any NFE, CFG; the serving "
                          "default); monolithic = model.onnx with the NFE loop unrolled; both (default)")
    exp.add_argument("--nfe", type=int, default=None, choices=(1, 2, 4, 5, 8, 10),
                     help="denoising steps unrolled into the monolithic graph and the decomposed default "
                          "(default: the checkpoint's num_inference_steps, else 10)")
    exp.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                     help="graph precision: fp32 (default; TensorRT builds fp16 from it) or fp16 (for ONNX "
                          "Runtime's CUDA provider; inputs/outputs stay float32; parity needs a GPU: "
                          "--parity-provider cuda; gate: cos >= 0.999 per chunk and max_abs <= 0.5)")
    exp.add_argument("--parity-provider", default=None,
                     help="execution provider the parity check runs the graphs on (default CPU; cuda for fp16)")
    exp.add_argument("--strict", action="store_true", help="parity threshold 1e-5 instead of 1e-4")
    exp.add_argument("--threshold", type=_positive_float, default=None,
                     help="explicit parity threshold on max |onnx - torch| (overrides --strict)")
    exp.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    exp.add_argument("--num-cameras", type=_positive_int, default=None,
                     help="--model only: number of camera images per observation (default: the preset's)")
    exp.add_argument("--fixtures", type=_positive_int, default=4, help="seeded parity fixtures (default 4)")
    exp.add_argument("--seed", type=int, default=0, help="seed of the reference init and the fixtures (default 0)")
    exp.add_argument("--force", action="store_true",
                     help="replace an earlier reflex_ros export in DIR (only after parity passes; never "
                          "a directory that holds anything else)")
    exp.set_defaults(func=_export_handler)

    val = subparsers.add_parser(
        "validate",
        help="re-check an export directory's ONNX against its stored torch weights",
        description=(
            "Run the parity check of `export` again on an existing export. Exit 0 pass, 1 any "
            "fixture above the threshold, 2 error (missing/corrupt export, unwritable --output-json)."
        ),
    )
    val.add_argument("export_dir", type=Path, metavar="DIR", help="export directory")
    val.add_argument("--threshold", type=_positive_float, default=None,
                     help="max |onnx - torch| allowed (default 1e-4, or 1e-5 with --strict)")
    val.add_argument("--strict", action="store_true", help="threshold 1e-5")
    val.add_argument("--fixtures", type=_positive_int, default=4, help="seeded parity fixtures (default 4)")
    val.add_argument("--seed", type=int, default=0, help="fixture seed (default 0)")
    val.add_argument("--provider", default=None,
                     help="execution provider for the graphs (default CPU; an fp16 export needs cuda)")
    val.add_argument("--output-json", type=Path, default=None, metavar="FILE",
                     help="write per-fixture results, max_abs_diff_across_all, threshold and passed as JSON")
    val.set_defaults(func=_validate_handler)

    pre = subparsers.add_parser(
        "predict",
        help="one observation -> one action chunk, offline (an export or a LeRobot checkpoint)",
        description=(
            "Run one observation through the engine with the family's full pre- and post-processing "
            "and write the un-normalized actions the robot would get. IN.npz keys (LeRobot's raw "
            "observation): obs.<camera feature key> uint8 (H, W, 3) at any size (an absent camera is "
            "missing for this observation), obs.observation.state float32 (D,), task (str), "
            "optionally noise float32 (1, chunk_size, max_action_dim) = x at t=1, and num_steps. "
            "OUT.npz: actions float32 (chunk_size, action_dim). Exit 0 ok, 2 error."
        ),
    )
    pre.add_argument("source", metavar="EXPORT_OR_CHECKPOINT",
                     help="an export directory, or a LeRobot checkpoint directory / hub id (torch, fp32)")
    pre.add_argument("--inputs", required=True, type=Path, metavar="IN.npz", help="the observation")
    pre.add_argument("--output", required=True, type=Path, metavar="OUT.npz", help="where to write the actions")
    pre.add_argument("--engine", choices=("onnx", "torch"), default=None,
                     help="runtime for an export (default onnx); a checkpoint always runs torch")
    pre.add_argument("--cfg-beta", type=float, default=None, help="RECAP guidance strength (>= 1; pi05 only)")
    pre.set_defaults(func=_predict_handler)


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_ERROR


def _export_handler(args: argparse.Namespace) -> int:
    if (args.checkpoint is None) == (args.model is None):
        return _error("give a CHECKPOINT (LeRobot checkpoint dir or hub id) or --model PRESET, not both "
                      "(reflex-ros export --help)")
    if args.checkpoint is not None and args.num_cameras is not None:
        return _error("--num-cameras applies to --model presets; a checkpoint's cameras come from its config.json")
    try:
        from reflex_ros.engine.export import export_model
        from reflex_ros.engine.parity import ParityCheckFailed
        from reflex_ros.engine.types import ReflexError

        perturb = float(os.environ.get(PERTURB_ENV, "0") or 0)
        export_model(
            preset=args.model, checkpoint=args.checkpoint, output_dir=args.output, mode=args.mode, nfe=args.nfe,
            num_cameras=args.num_cameras, strict=args.strict, opset=args.opset, threshold=args.threshold,
            seed=args.seed, fixtures=args.fixtures, force=args.force, perturb_onnx=perturb,
            precision=args.precision, parity_provider=args.parity_provider,
        )
    except ParityCheckFailed as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_PARITY_FAILED
    except ReflexError as exc:
        return _error(str(exc))
    except (OSError, ValueError) as exc:
        return _error(f"{type(exc).__name__}: {exc}; check --output and the flags (reflex-ros export --help)")
    return EXIT_OK


def _writable_target(path: Path) -> str | None:
    """Why ``path`` cannot be written, or None. Checked before long work so a bad path costs
    one line, not a finished parity run and a traceback."""
    probe = path.parent if str(path.parent) else Path(".")
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if path.exists() and path.is_dir():
        return f"{path} is a directory"
    if path.exists() and not os.access(path, os.W_OK):
        return f"{path} is not writable"
    if not path.exists() and not probe.is_dir():
        return f"cannot create {path}: {probe} is not a directory"
    if not path.exists() and not os.access(probe, os.W_OK | os.X_OK):
        return f"cannot create {path}: {probe} is not writable"
    return None


def _validate_handler(args: argparse.Namespace) -> int:
    if args.output_json is not None and (why := _writable_target(args.output_json)) is not None:
        return _error(f"--output-json: {why}")

    def write_json(doc: dict) -> str | None:
        """Write the result; the reason it could not be written (one line), or None."""
        if args.output_json is None:
            return None
        try:
            args.output_json.parent.mkdir(parents=True, exist_ok=True)
            args.output_json.write_text(json.dumps(doc, indent=2) + "\n")
        except OSError as exc:  # checked up front; this is a race or a full disk
            return f"--output-json: cannot write {args.output_json} ({exc.strerror or exc})"
        return None

    try:
        from reflex_ros.engine.export import validate_export
        from reflex_ros.engine.types import ReflexError

        report = validate_export(
            args.export_dir, threshold=args.threshold, strict=args.strict, fixtures=args.fixtures, seed=args.seed,
            provider=args.provider,
        )
    except ReflexError as exc:
        write_json({"export_dir": str(args.export_dir), "passed": False, "error": str(exc)})
        return _error(str(exc))
    except (OSError, ValueError) as exc:
        return _error(f"{type(exc).__name__}: {exc}")
    if (why := write_json(report.to_dict())) is not None:
        return _error(why)
    return EXIT_OK if report.passed else EXIT_PARITY_FAILED


def _predict_handler(args: argparse.Namespace) -> int:
    if (why := _writable_target(args.output)) is not None:
        return _error(f"--output: {why}")
    try:
        from reflex_ros.engine.predict import predict_file
        from reflex_ros.engine.types import ReflexError

        summary = predict_file(args.source, args.inputs, args.output, engine=args.engine, cfg_beta=args.cfg_beta)
    except ReflexError as exc:
        return _error(str(exc))
    except (OSError, ValueError) as exc:
        return _error(f"{type(exc).__name__}: {exc}")
    print(summary)
    return EXIT_OK
