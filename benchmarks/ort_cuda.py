"""ONNX Runtime's CUDA provider on an export, beside the torch CUDA-graph path, in one process.

For each export given: the torch engine in fp32 eager is the reference (3 seeded observations
with fixed noise); then ORT CUDA-EP without and with ``enable_cuda_graph`` (IO binding on
static buffers, the prefix's KV bound straight into the expert), and the torch engine's CUDA
graph, each timed host arrays in -> host actions out (per-stage p50/p99) and compared with the
reference (worst cos and max_abs over the fixtures). An fp16 export's rows are its fp16
graphs on CUDA-EP. Then the auto-calibrator's provider choice on this machine, resolved and
written to a throwaway cache.

    python benchmarks/ort_cuda.py EXPORT [EXPORT ...] [--iters 50 --warmup 5 --nfe 10]

Needs onnxruntime-gpu (its CUDA 13 build finds cuBLAS/cuDNN through torch's nvidia wheels:
``preload_cuda_libraries`` below) and a GPU; prints why and exits 2 otherwise.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import traceback
from pathlib import Path


def preload_cuda_libraries() -> str:
    """Make the CUDA 13 / cuDNN 9 libraries torch ships visible to onnxruntime-gpu's CUDA
    provider (it dlopens them by soname at session creation)."""
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls(cuda=True, cudnn=True)
            return "onnxruntime.preload_dlls"
        except Exception as exc:  # noqa: BLE001 - fall back to loading them ourselves
            reason = f"preload_dlls failed ({exc}); "
    else:
        reason = ""
    import ctypes
    import glob
    import os

    import torch

    root = os.path.join(os.path.dirname(torch.__file__), "..", "nvidia")
    loaded = []
    for pattern in ("cuda_runtime/lib/libcudart.so*", "cublas/lib/libcublasLt.so*", "cublas/lib/libcublas.so*",
                    "curand/lib/libcurand.so*", "cufft/lib/libcufft.so*", "cudnn/lib/libcudnn.so*",
                    "cu13/lib/*.so*"):
        for path in sorted(glob.glob(os.path.join(root, pattern))):
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                loaded.append(os.path.basename(path))
            except OSError:
                pass
    return reason + f"loaded {len(loaded)} libraries from torch's nvidia wheels"


def rows_for(export: str, *, iters: int, warmup: int, nfe: int) -> list[tuple[str, object]]:
    """[(label, CompareRow-like)] for one export."""
    import torch

    from reflex_ros.engine.bench import fixture_cosine, make_fixtures, percentiles, run_bench
    from reflex_ros.engine.bundle import load_bundle
    from reflex_ros.engine.loader import load_engine

    bundle = load_bundle(export)
    precision = bundle.config.precision
    out = []
    ref_engine = load_engine(export, engine="torch", provider="cuda", dtype="fp32")
    fixtures = make_fixtures(ref_engine.info)
    reference = [ref_engine.infer(o, nfe=nfe, noise=n).actions for o, n in fixtures]
    ref_engine.close()
    del ref_engine
    gc.collect()
    torch.cuda.empty_cache()

    def measure(label: str, factory) -> None:
        try:
            engine = factory()
        except Exception as exc:  # noqa: BLE001 - report and go on with the next row
            out.append((label, f"FAILED to load: {type(exc).__name__}: {str(exc).splitlines()[0]}"))
            return
        try:
            stats = run_bench(engine, iters=iters, warmup=warmup, nfe=nfe)
            cos, mabs = fixture_cosine(engine, reference, fixtures, nfe, None)
            p50, _, p99 = percentiles(stats["total"])
            pre = percentiles(stats["prefix"])[0]
            den = percentiles(stats["denoise"])[0]
            prep = percentiles(stats["preprocess"])[0]
            out.append((label, (p50, p99, prep, pre, den, cos, mabs, engine.info.provider, engine.info.cuda_graph)))
        except Exception as exc:  # noqa: BLE001
            out.append((label, f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0]}"))
            traceback.print_exc()
        finally:
            engine.close()
            gc.collect()
            torch.cuda.empty_cache()

    tag = f"ort cuda-ep {precision}"
    measure(f"{tag}", lambda: load_engine(export, engine="onnx", provider="CUDAExecutionProvider"))
    measure(f"{tag} + cuda graph", lambda: load_engine(export, engine="onnx", provider="CUDAExecutionProvider",
                                                       cuda_graph=True))
    if precision == "fp32":
        measure("torch cuda graph fp32", lambda: load_engine(export, engine="torch", provider="cuda", dtype="fp32",
                                                             cuda_graph=True))
    measure("torch cuda graph bf16", lambda: load_engine(export, engine="torch", provider="cuda", dtype="bf16",
                                                         cuda_graph=True))
    return out


def calibrator_choice(export: str) -> str:
    """What the auto-calibrator selects for an ONNX engine here, resolved and written."""
    import json

    from reflex_ros.calibration.session import CalibrationSession
    from reflex_ros.control.embodiment import load_embodiment
    from reflex_ros.engine.loader import load_engine

    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "calibration.json"
        session = CalibrationSession(cache, load_embodiment("so100"), None, {}, False, lines.append,
                                     warmup_iters=3, measurement_iters=20)
        precision, provider = session.select_runtime(export, "onnx")
        engine = load_engine(export, engine="onnx", provider=provider,
                             dtype=precision if precision in ("fp32", "fp16") else "fp32")
        try:
            res = session.resolve(engine, control_frequency_hz=30.0, execute_steps=10)
            session.flush()
        finally:
            engine.close()
        entry = json.loads(cache.read_text())["entries"]
        lines.append(f"selected precision={precision} provider={provider}; engine ran {engine.info.provider}; "
                     f"resolution provider={res.provider} variant={res.variant} nfe={res.nfe}")
        lines.append("cache entry: " + json.dumps(entry, sort_keys=True))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("exports", nargs="+", help="export directories")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--nfe", type=int, default=10)
    parser.add_argument("--calibrate", action="store_true", help="also run the calibrator on the first export")
    args = parser.parse_args(argv)
    try:
        import onnxruntime as ort
        import torch
    except ImportError as exc:
        print(f"ort_cuda: {exc}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("ort_cuda: no CUDA GPU", file=sys.stderr)
        return 2
    print(f"onnxruntime {ort.__version__} providers {ort.get_available_providers()}; {preload_cuda_libraries()}")
    from reflex_ros.engine.onnx_runtime import available_providers

    print(f"usable here: {available_providers()}; torch {torch.__version__} on {torch.cuda.get_device_name()}")
    for export in args.exports:
        if not Path(export, "reflex_config.json").is_file():
            print(f"\n== {export}: no export there (its export step failed above); skipped")
            continue
        print(f"\n== {export} (nfe {args.nfe}, {args.iters} timed after {args.warmup}; ms per chunk, host arrays "
              "in -> host actions out; cos/maxabs: worst of 3 seeded fixtures vs torch fp32 eager)")
        print(f"{'path':<30}{'p50':>9}{'p99':>9}{'prep':>8}{'prefix':>9}{'denoise':>9}{'cos fp32':>11}{'maxabs':>10}")
        for label, row in rows_for(export, iters=args.iters, warmup=args.warmup, nfe=args.nfe):
            if isinstance(row, str):
                print(f"{label:<30}{row}")
                continue
            p50, p99, prep, pre, den, cos, mabs, _, _ = row
            print(f"{label:<30}{p50:>9.2f}{p99:>9.2f}{prep:>8.2f}{pre:>9.2f}{den:>9.2f}{cos:>11.6f}{mabs:>10.2e}")
    if args.calibrate:
        print("\n== auto-calibrator on this machine (ONNX engine)")
        print(calibrator_choice(args.exports[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
