"""`reflex-ros bench`: per-stage latency percentiles of one engine, or a side-by-side table.

Single mode times one engine (an export directory through the loader, or a preset with
random weights in torch) and prints p50/p95/p99 of preprocess, prefix, denoise and total.
``--compare`` runs the issue-6 table in one process: eager fp32, eager bf16, CUDA Graph bf16
(optionally CFG and an NFE sweep) and the physical floor measured in the same run.

Only the standard library is imported at module level so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Any

STAGES = ("preprocess", "prefix", "denoise", "total")
PRESET_CHOICES = ("tiny", "small", "pi0")
FAMILY_CHOICES = ("pi0", "pi05", "smolvla")
SIZE_CHOICES = ("published", "tiny")
SWEEP_NFE = (1, 2, 4, 8, 10)
EXIT_OK, EXIT_ERROR = 0, 2


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        help="measure per-stage latency (p50/p95/p99 ms) of an engine",
        description=(
            "Time an engine on synthetic observations after warm-up. Give an export DIR (loaded "
            "with the chosen engine) or --model PRESET (torch, random weights). GPU stages are "
            "timed with CUDA events. --compare prints eager fp32 / eager bf16 / CUDA Graph bf16 "
            "and the physical floor side by side (torch, CUDA)."
        ),
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("dir", nargs="?", default=None, metavar="DIR", help="export directory (reflex-ros export)")
    src.add_argument("--model", choices=PRESET_CHOICES, default=None, help="policy preset with random weights (torch)")
    src.add_argument("--family", choices=FAMILY_CHOICES, default=None,
                     help="a LeRobot family's own model with random weights at --size (torch; synthetic tokens)")
    p.add_argument("--size", choices=SIZE_CHOICES, default="published",
                   help="--family: published dimensions (default) or tiny (CPU smoke test)")
    p.add_argument("--tokens", type=int, default=48, help="--family: language slots, all valid (default 48)")
    p.add_argument("--engine", choices=("onnx", "torch"), default=None,
                   help="runtime for DIR (default onnx); --model always uses torch")
    p.add_argument("--cuda-graph", action="store_true",
                   help="torch: capture prefix + NFE loop in CUDA graphs; onnx: CUDA-EP's enable_cuda_graph")
    p.add_argument("--provider", default=None,
                   help="onnx: execution provider (CUDAExecutionProvider, TensorrtExecutionProvider, "
                        "CPUExecutionProvider, or cuda/trt/cpu); default: the ladder TensorRT > CUDA > CPU")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16", "fp8"), default="fp32",
                   help="torch compute dtype (fp8: bf16 + e4m3 MLP GEMMs, CUDA graph, sm_89+)")
    p.add_argument("--nfe", type=int, default=10, choices=(1, 2, 4, 8, 10), help="denoising steps per chunk")
    p.add_argument("--iters", type=int, default=50, help="timed iterations (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed warm-up iterations (default 5)")
    p.add_argument("--cfg-beta", type=float, default=None,
                   help="RECAP guidance strength (>= 1; batch-2 cond/uncond); default: no CFG")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="torch device / ONNX provider family (default: cuda if available)")
    p.add_argument("--num-cameras", type=int, default=None, help="override the preset's camera count (--model)")
    p.add_argument("--compare", action="store_true",
                   help="side-by-side table (CUDA): --model PRESET: eager fp32 / eager bf16 / CUDA Graph bf16 / "
                        "floor; --family or DIR (export or LeRobot checkpoint): eager fp32 / eager bf16 / graph "
                        "bf16, fp16, fp8 / CFG (pi0.5) / NFE sweep / floor, each with cos vs eager fp32")
    p.add_argument("--no-fp16", action="store_true", help="--compare (family/DIR): skip the fp16 graph row")
    p.add_argument("--no-sweep", action="store_true", help="--compare (family/DIR): skip the NFE sweep")
    p.add_argument("--nfe-sweep", action="store_true", help="with --compare: CUDA Graph bf16 at NFE 1,2,4,8,10")
    p.add_argument("--graph-reference", action="store_true",
                   help="with --compare: also a CUDA Graph bf16 row of the reference (unfused) model code")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from reflex_ros.engine.types import ReflexError

    if args.dir is None and args.model is None and args.family is None:
        print("error: give an export DIR, --model PRESET or --family NAME (e.g. reflex-ros bench --model tiny)",
              file=sys.stderr)
        return EXIT_ERROR
    if args.iters < 1 or args.warmup < 0:
        print("error: --iters must be >= 1 and --warmup >= 0", file=sys.stderr)
        return EXIT_ERROR
    try:
        if args.compare:
            return _compare_cli(args) if args.model is not None else _family_compare_cli(args)
        engine = _open_engine(args)
        try:
            stats = run_bench(engine, iters=args.iters, warmup=args.warmup, nfe=args.nfe, cfg_beta=args.cfg_beta)
        finally:
            engine.close()
    except (ReflexError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    info = engine.info
    print(f"engine={info.engine} provider={info.provider} dtype={info.dtype} cuda_graph={info.cuda_graph} "
          f"nfe={args.nfe} cfg_beta={args.cfg_beta} device={info.extra.get('gpu', info.extra.get('device', info.provider))}")
    print(f"iterations: {args.iters} timed after {args.warmup} warm-up")
    print(format_stage_table(stats))
    return EXIT_OK


def _open_engine(args: argparse.Namespace):
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.family is not None:
        from reflex_ros.policies.lerobot.published import published_engine

        return published_engine(args.family, args.size, device=device, dtype=args.dtype, cuda_graph=args.cuda_graph,
                                tokens=args.tokens, **({"num_cameras": args.num_cameras} if args.num_cameras else {}))
    if args.dir is not None:
        from reflex_ros.engine.loader import load_engine

        engine = args.engine or "onnx"
        provider = device if engine == "torch" else (args.provider or ("CPUExecutionProvider" if args.device == "cpu"
                                                                        else None))
        return load_engine(args.dir, engine=engine, provider=provider, dtype=args.dtype, cuda_graph=args.cuda_graph)
    if args.engine == "onnx":
        raise ValueError("--model builds a torch policy; to bench ONNX, export first and pass the DIR")
    from reflex_ros.policies.reference import torch_engine
    from reflex_ros.policies.reference.weights import build_policy

    model = build_policy(args.model, device=device, num_cameras=args.num_cameras)
    return torch_engine(model, device=device, dtype=args.dtype, cuda_graph=args.cuda_graph)


# ---------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------


def synthetic_observation(info: Any, seed: int = 0, instruction: str = "pick up the red cube and place it in the bin"):
    """A random observation at the engine's input geometry (bench and GPU proofs)."""
    import numpy as np

    from reflex_ros.engine.types import Observation

    rng = np.random.default_rng(seed)
    s = info.image_size
    return Observation(
        images={name: rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for name in info.camera_names},
        state=rng.standard_normal(info.state_dim or info.max_state_dim).astype(np.float32),
        instruction=instruction,
    )


def run_bench(engine: Any, *, iters: int, warmup: int, nfe: int, cfg_beta: float | None = None,
              seed: int = 0) -> dict[str, list[float]]:
    """Per-stage ms over ``iters`` timed inferences after ``warmup`` untimed ones."""
    obs = synthetic_observation(engine.info, seed)
    for _ in range(warmup):
        engine.infer(obs, nfe=nfe, cfg_beta=cfg_beta)
    out: dict[str, list[float]] = {s: [] for s in STAGES}
    for _ in range(iters):
        res = engine.infer(obs, nfe=nfe, cfg_beta=cfg_beta)
        for s in STAGES:
            out[s].append(float(res.timings_ms[s]))
    return out


def percentiles(values: list[float]) -> tuple[float, float, float]:
    import numpy as np

    a = np.asarray(values, dtype=np.float64)
    return tuple(float(x) for x in np.percentile(a, [50, 95, 99]))  # type: ignore[return-value]


def format_stage_table(stats: dict[str, list[float]]) -> str:
    lines = [f"{'stage':<12}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}"]
    for s in STAGES:
        p50, p95, p99 = percentiles(stats[s])
        lines.append(f"{s:<12}{p50:>10.3f}{p95:>10.3f}{p99:>10.3f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# --compare: the issue-6 table
# ---------------------------------------------------------------------------------------


@dataclass
class CompareRow:
    name: str
    total: tuple[float, float, float]
    prefix_p50: float
    denoise_p50: float
    peak_gib: float
    cos_vs_fp32: float | None = None
    max_abs_vs_fp32: float | None = None
    extra: dict[str, float] = field(default_factory=dict)


def fixture_cosine(engine: Any, reference: list, fixtures: list, nfe: int, cfg_beta: float | None) -> tuple[float, float]:
    """Worst cosine and max |diff| of the whole chunk against reference actions, per fixture."""
    import numpy as np

    worst_cos, worst_abs = 1.0, 0.0
    for (obs, noise), ref in zip(fixtures, reference, strict=True):
        a = engine.infer(obs, nfe=nfe, cfg_beta=cfg_beta, noise=noise).actions.astype(np.float64).ravel()
        r = ref.astype(np.float64).ravel()
        worst_cos = min(worst_cos, float(a @ r / (np.linalg.norm(a) * np.linalg.norm(r) + 1e-30)))
        worst_abs = max(worst_abs, float(np.abs(a - r).max()))
    return worst_cos, worst_abs


def make_fixtures(info: Any, n: int = 3) -> list:
    from reflex_ros.engine.schedule import make_noise

    return [(synthetic_observation(info, seed=100 + i, instruction=f"task number {i}"),
             make_noise(100 + i, info.chunk_size, info.action_width)[0]) for i in range(n)]


def _measure_row(name: str, engine: Any, *, iters: int, warmup: int, nfe: int, cfg_beta: float | None,
                 reference: list | None, fixtures: list) -> CompareRow:
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    stats = run_bench(engine, iters=iters, warmup=warmup, nfe=nfe, cfg_beta=cfg_beta)
    peak = torch.cuda.max_memory_allocated() / (1 << 30)
    cos = mabs = None
    if reference is not None:
        cos, mabs = fixture_cosine(engine, reference, fixtures, nfe, cfg_beta)
    return CompareRow(name, percentiles(stats["total"]), percentiles(stats["prefix"])[0],
                      percentiles(stats["denoise"])[0], peak, cos, mabs)


def run_compare(preset: str, *, iters: int, warmup: int, nfe: int = 10, cfg_beta: float | None = None,
                nfe_sweep: bool = False, num_cameras: int | None = None, device: str = "cuda",
                graph_reference: bool = False, log=print) -> tuple[list[CompareRow], Any]:
    """Eager fp32 -> reference fixtures; then eager bf16 and CUDA Graph bf16 (and CFG / sweep)
    on a bf16 copy; then the floor. The fp32 model is freed before the bf16 rows so their
    peak memory is their own. ``graph_reference`` adds a CUDA Graph row of the unfused
    reference model code (what the graphs ran before the fused path)."""
    import gc

    import torch

    from reflex_ros.engine.floor import measure_floor
    from reflex_ros.policies.reference import torch_engine as TorchEngine
    from reflex_ros.policies.reference.weights import build_policy, clone_policy

    rows: list[CompareRow] = []
    model = build_policy(preset, device=device, num_cameras=num_cameras)
    cfg = model.cfg
    fp32 = TorchEngine(model, device=device, dtype="fp32")
    fixtures = make_fixtures(fp32.info)
    reference = [fp32.infer(o, nfe=nfe, noise=n).actions for o, n in fixtures]
    cfg_reference = [fp32.infer(o, nfe=nfe, cfg_beta=cfg_beta, noise=n).actions for o, n in fixtures] if cfg_beta else None
    log(f"[compare] eager fp32 ({model.num_parameters() / 1e6:.0f} M params)")
    rows.append(_measure_row("eager fp32", fp32, iters=iters, warmup=warmup, nfe=nfe, cfg_beta=None,
                             reference=reference, fixtures=fixtures))
    bf16_model = clone_policy(model, "bf16")
    fp32.close()
    del model, fp32
    gc.collect()
    torch.cuda.empty_cache()
    eager = TorchEngine(bf16_model, device=device, dtype="bf16")
    log("[compare] eager bf16")
    rows.append(_measure_row("eager bf16", eager, iters=iters, warmup=warmup, nfe=nfe, cfg_beta=None,
                             reference=reference, fixtures=fixtures))
    eager.close()
    if graph_reference:
        plain = TorchEngine(bf16_model, device=device, dtype="bf16", cuda_graph=True, fused=False)
        log("[compare] CUDA graph bf16, reference model code")
        rows.append(_measure_row("cuda graph bf16 (unfused)", plain, iters=iters, warmup=warmup, nfe=nfe,
                                 cfg_beta=None, reference=reference, fixtures=fixtures))
        plain.close()
        gc.collect()
        torch.cuda.empty_cache()
    graph = TorchEngine(bf16_model, device=device, dtype="bf16", cuda_graph=True)
    log(f"[compare] CUDA graph bf16 (graph path: {graph.info.extra.get('graph_path')})")
    rows.append(_measure_row("cuda graph bf16", graph, iters=iters, warmup=warmup, nfe=nfe, cfg_beta=None,
                             reference=reference, fixtures=fixtures))
    if cfg_beta is not None:
        log(f"[compare] CUDA graph bf16 CFG beta={cfg_beta}")
        rows.append(_measure_row(f"cuda graph bf16 cfg b={cfg_beta}", graph, iters=iters, warmup=warmup, nfe=nfe,
                                 cfg_beta=cfg_beta, reference=cfg_reference, fixtures=fixtures))
    if nfe_sweep:
        for n in (1, 2, 4, 8, 10):
            log(f"[compare] CUDA graph bf16 nfe={n}")
            rows.append(_measure_row(f"cuda graph bf16 nfe={n}", graph, iters=iters, warmup=warmup, nfe=n,
                                     cfg_beta=None, reference=None, fixtures=fixtures))
    graph.close()
    floor = measure_floor(cfg, nfe, device=device)
    return rows, floor


def format_compare(rows: list[CompareRow], floor: Any) -> str:
    base = rows[0].total[0]
    head = (f"{'path':<30}{'p50':>9}{'p95':>9}{'p99':>9}{'prefix':>9}{'denoise':>9}{'peak GiB':>10}"
            f"{'x eager32':>10}{'x floor':>9}{'cos fp32':>10}{'maxabs':>10}")
    lines = [head]
    for r in rows:
        cos = f"{r.cos_vs_fp32:>10.6f}" if r.cos_vs_fp32 is not None else f"{'-':>10}"
        mab = f"{r.max_abs_vs_fp32:>10.2e}" if r.max_abs_vs_fp32 is not None else f"{'-':>10}"
        lines.append(f"{r.name:<30}{r.total[0]:>9.2f}{r.total[1]:>9.2f}{r.total[2]:>9.2f}{r.prefix_p50:>9.2f}"
                     f"{r.denoise_p50:>9.2f}{r.peak_gib:>10.2f}{base / r.total[0]:>10.2f}"
                     f"{r.total[0] / floor.total_ms:>9.2f}{cos}{mab}")
    lines.append(f"{'floor (bytes/BW + FLOPs/peak)':<30}{floor.total_ms:>9.2f}"
                 f"   = {floor.weight_bytes / 1e9:.2f} GB / {floor.hbm_gbps:.0f} GB/s ({floor.memory_ms:.2f} ms)"
                 f" + {floor.prefix_tflop:.2f} TFLOP / {floor.matmul_tflops:.0f} TFLOP/s ({floor.compute_ms:.2f} ms)")
    return "\n".join(lines)


def _compare_cli(args: argparse.Namespace) -> int:
    import torch

    if args.model is None:
        print("error: --compare builds the preset itself; use --model PRESET", file=sys.stderr)
        return EXIT_ERROR
    if not torch.cuda.is_available() or args.device == "cpu":
        print("error: --compare times CUDA graphs and needs a CUDA GPU; on CPU use plain "
              "`reflex-ros bench --model PRESET`", file=sys.stderr)
        return EXIT_ERROR
    rows, floor = run_compare(args.model, iters=args.iters, warmup=args.warmup, nfe=args.nfe,
                              cfg_beta=args.cfg_beta, nfe_sweep=args.nfe_sweep, num_cameras=args.num_cameras,
                              graph_reference=args.graph_reference)
    print(f"model={args.model} nfe={args.nfe} batch=1 device={torch.cuda.get_device_name()} "
          f"torch={torch.__version__}")
    print(f"iterations: {args.iters} timed after {args.warmup} warm-up per row; ms per chunk; "
          "GPU timed with CUDA events; cos/maxabs = worst over 3 seeded fixtures vs eager fp32")
    print(format_compare(rows, floor))
    return EXIT_OK


# ---------------------------------------------------------------------------------------
# --compare for a family at published size, an export or a LeRobot checkpoint (issue 10)
# ---------------------------------------------------------------------------------------


@dataclass
class ModelSource:
    """One model to compare: ``build(dtype)`` gives a fresh copy on the device in that dtype
    (each row's peak memory is then its own), plus its processor and family fast path."""

    label: str
    model_type: str
    processor: Any
    build: Any
    fast_path: Any
    notes: list[str] = field(default_factory=list)


def family_source(family: str, size: str = "published", *, tokens: int = 48, num_cameras: int | None = None,
                  device: str = "cuda", seed: int = 0) -> ModelSource:
    """A LeRobot family's own model at ``size`` with seeded random weights (``published.py``)."""
    from reflex_ros.policies import get_family
    from reflex_ros.policies.lerobot.published import build_published, published_spec, synthetic_processor

    opts: dict[str, Any] = {"tokens": tokens, **({"num_cameras": num_cameras} if num_cameras else {})}
    spec = published_spec(family, size, **opts)

    def build(dtype: str) -> Any:
        return build_published(family, size, device=device, dtype=dtype, seed=seed, **opts)

    side = spec.image_hw[0]
    return ModelSource(
        f"{family} {size} size", family, synthetic_processor(spec), build, get_family(family).fast_path,
        [f"random weights (seed {seed}), synthetic tokens ({tokens} valid); {spec.num_cameras} cameras at "
         f"{side}x{side}, chunk {spec.chunk_size}, action width {spec.max_action_dim}, batch 1"])


def dir_source(path: str, device: str = "cuda") -> ModelSource:
    """An export directory (its policy weights) or a LeRobot checkpoint (read in fp32 on the
    CPU once, copied to the device per row)."""
    import copy
    from pathlib import Path

    from reflex_ros.engine.bundle import CONFIG_FILE

    p = Path(path).expanduser()
    if (p / CONFIG_FILE).is_file():
        from reflex_ros.engine.bundle import load_bundle
        from reflex_ros.engine.loader import load_bundle_model

        bundle = load_bundle(p)
        return ModelSource(f"export {p}", bundle.config.model_type, bundle.processor(),
                           lambda dtype: load_bundle_model(bundle, device=device, dtype=dtype),
                           bundle.family().fast_path, [f"export {p}"])
    from reflex_ros.engine.precision import resolve_dtype
    from reflex_ros.policies import get_family
    from reflex_ros.policies.checkpoints import resolve_checkpoint

    model_type, ckpt = resolve_checkpoint(str(p))
    fam = get_family(model_type)
    src = fam.export_source(str(ckpt))

    def build(dtype: str) -> Any:
        return copy.deepcopy(src.model).to(device=device, dtype=resolve_dtype(dtype)).eval()

    return ModelSource(src.label, model_type, src.processor, build, fam.fast_path, [src.label])


def _free(*engines: Any) -> None:
    import gc

    import torch

    for e in engines:
        if e is not None:
            e.close()
    gc.collect()
    torch.cuda.empty_cache()


def run_family_compare(src: ModelSource, *, iters: int, warmup: int, nfe: int = 10, cfg_beta: float | None = None,
                       nfe_sweep: bool = True, fp16: bool = True, fp8: bool = True, device: str = "cuda",
                       log=print) -> tuple[list[CompareRow], Any, Any, list[str]]:
    """Rows: eager fp32 (the reference: actions on 3 seeded fixtures at every NFE used),
    eager bf16, CUDA graph bf16, CFG (families with RECAP), the NFE sweep, graph fp8 (sm_89+,
    rejected below cos 0.999), graph fp16; then the floor (bf16, and fp8 MLP weights) from
    the model's own parameters and rates measured in the same run. One model copy lives at a
    time. Returns (rows, floor, fp8 floor, notes)."""
    import torch

    from reflex_ros.engine.floor import measure_floor_model, measure_hbm_gbps, measure_matmul_tflops
    from reflex_ros.engine.fp8 import FP8_MIN_COSINE, fp8_capable
    from reflex_ros.engine.torch_runtime import TorchEngine
    from reflex_ros.engine.types import ReflexError

    notes = list(src.notes)
    proc = src.processor
    if cfg_beta is None and proc.supports_cfg:
        cfg_beta = 1.5
    if cfg_beta is not None and not proc.supports_cfg:
        notes.append(f"no CFG row: {src.model_type} has no RECAP conditioning")
        cfg_beta = None

    def engine(model: Any, dtype: str, graph: bool) -> Any:
        return TorchEngine(model, proc, device=device, dtype=dtype, cuda_graph=graph, fast_path=src.fast_path,
                           model_type=src.model_type)

    rows: list[CompareRow] = []
    model = src.build("fp32")
    e32 = engine(model, "fp32", False)
    params = sum(p.numel() for p in model.parameters())
    fixtures = make_fixtures(e32.info)
    nfes = sorted({nfe, *(SWEEP_NFE if nfe_sweep else ())})
    refs = {n: [e32.infer(o, nfe=n, noise=z).actions for o, z in fixtures] for n in nfes}
    cfg_ref = [e32.infer(o, nfe=nfe, cfg_beta=cfg_beta, noise=z).actions for o, z in fixtures] if cfg_beta else None
    log(f"[compare] {src.label}: eager fp32 ({params / 1e6:.0f} M params)")
    rows.append(_measure_row("eager fp32", e32, iters=iters, warmup=warmup, nfe=nfe, cfg_beta=None,
                             reference=refs[nfe], fixtures=fixtures))
    from reflex_ros.engine.floor import model_work

    work = model_work(model)
    _free(e32)
    model = None
    _free()

    def attempt(what: str, fn: Any) -> Any:
        """One row (or group of rows); a failure becomes a note and the table goes on."""
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - report any failure in the table, keep measuring
            import traceback

            notes.append(f"{what} FAILED: {type(exc).__name__}: {exc}")
            log(traceback.format_exc())
            _free()
            return None

    model = src.build("bf16")
    e16 = engine(model, "bf16", False)
    log("[compare] eager bf16")
    rows.append(_measure_row("eager bf16", e16, iters=iters, warmup=warmup, nfe=nfe, cfg_beta=None,
                             reference=refs[nfe], fixtures=fixtures))
    _free(e16)

    def graph_rows() -> None:
        graph = engine(model, "bf16", True)
        path = graph.info.extra.get("graph_path")
        notes.append(f"graph path: {path}")
        log(f"[compare] CUDA graph bf16 ({path})")
        rows.append(_measure_row("cuda graph bf16", graph, iters=iters, warmup=warmup, nfe=nfe, cfg_beta=None,
                                 reference=refs[nfe], fixtures=fixtures))
        if cfg_beta is not None:
            log(f"[compare] CUDA graph bf16 CFG beta={cfg_beta}")
            attempt("CFG row", lambda: rows.append(_measure_row(
                f"cuda graph bf16 cfg b={cfg_beta}", graph, iters=iters, warmup=warmup, nfe=nfe, cfg_beta=cfg_beta,
                reference=cfg_ref, fixtures=fixtures)))
        if nfe_sweep:
            for n in SWEEP_NFE:
                log(f"[compare] CUDA graph bf16 nfe={n}")
                attempt(f"nfe={n} row", lambda n=n: rows.append(_measure_row(
                    f"cuda graph bf16 nfe={n}", graph, iters=iters, warmup=warmup, nfe=n, cfg_beta=None,
                    reference=refs[n], fixtures=fixtures)))
        _free(graph)

    attempt("CUDA graph bf16 rows", graph_rows)

    def fp8_row() -> None:
        ok, why = fp8_capable(device)
        if not ok:
            notes.append(f"no fp8 row: {why}")
            return
        try:
            g8 = engine(model, "fp8", True)
        except (ReflexError, ValueError) as exc:
            notes.append(f"no fp8 row: {exc}")
            return
        log("[compare] CUDA graph fp8 (e4m3 MLP GEMMs)")
        row = _measure_row("cuda graph fp8", g8, iters=iters, warmup=warmup, nfe=nfe, cfg_beta=None,
                           reference=refs[nfe], fixtures=fixtures)
        if row.cos_vs_fp32 is not None and row.cos_vs_fp32 < FP8_MIN_COSINE:
            row.name += " REJECTED"
            notes.append(f"fp8 rejected: cos {row.cos_vs_fp32:.6f} < {FP8_MIN_COSINE} vs eager fp32")
        else:
            notes.append(f"fp8 accepted: cos {row.cos_vs_fp32:.6f} >= {FP8_MIN_COSINE} vs eager fp32")
        modes = sorted({p.fp8.mode for ly in g8.fused.vlm_layers + g8.fused.expert_layers
                        for p in (ly.gate_up, ly.down) if p is not None and p.fp8 is not None} - {None})
        notes.append(f"fp8 GEMM scaling: {', '.join(modes) or '?'}")
        rows.append(row)
        _free(g8)

    if fp8:
        attempt("fp8 row", fp8_row)
    hbm, tflops = measure_hbm_gbps(device), measure_matmul_tflops(device)
    floor = measure_floor_model(model, nfe, device, rates=(hbm, tflops))
    floor8 = measure_floor_model(model, nfe, device, fp8=True, rates=(hbm, tflops))
    notes.append("weights counted: " + ", ".join(f"{k} {v / 1e6:.0f} M" for k, v in work.groups.items() if v))
    model = None
    _free()

    def fp16_row() -> None:
        m16 = src.build("fp16")
        gh = engine(m16, "fp16", True)
        log("[compare] CUDA graph fp16")
        rows.append(_measure_row("cuda graph fp16", gh, iters=iters, warmup=warmup, nfe=nfe, cfg_beta=None,
                                 reference=refs[nfe], fixtures=fixtures))
        _free(gh)

    if fp16:
        attempt("fp16 row", fp16_row)
        _free()
    torch.cuda.synchronize()
    return rows, floor, floor8, notes


def format_family_compare(rows: list[CompareRow], floor: Any, floor8: Any = None) -> str:
    text = format_compare(rows, floor)
    if floor8 is not None:
        text += (f"\n{'floor, fp8 MLP weights':<30}{floor8.total_ms:>9.2f}"
                 f"   = {floor8.weight_bytes / 1e9:.2f} GB / {floor8.hbm_gbps:.0f} GB/s ({floor8.memory_ms:.2f} ms)"
                 f" + {floor8.prefix_tflop:.2f} TFLOP-equivalent / {floor8.matmul_tflops:.0f} TFLOP/s "
                 f"({floor8.compute_ms:.2f} ms; MLP FLOPs at 2x the bf16 rate)")
    return text


def _family_compare_cli(args: argparse.Namespace) -> int:
    import torch

    if not torch.cuda.is_available() or args.device == "cpu":
        print("error: --compare times CUDA graphs and needs a CUDA GPU; on CPU use plain "
              "`reflex-ros bench --family NAME --size tiny`", file=sys.stderr)
        return EXIT_ERROR
    if args.family is not None:
        src = family_source(args.family, args.size, tokens=args.tokens, num_cameras=args.num_cameras)
    else:
        src = dir_source(args.dir)
    rows, floor, floor8, notes = run_family_compare(
        src, iters=args.iters, warmup=args.warmup, nfe=args.nfe, cfg_beta=args.cfg_beta,
        nfe_sweep=not args.no_sweep, fp16=not args.no_fp16)
    print(f"{src.label} ({src.model_type}) nfe={args.nfe} batch=1 device={torch.cuda.get_device_name()} "
          f"torch={torch.__version__}")
    print(f"iterations: {args.iters} timed after {args.warmup} warm-up per row; ms per chunk, host arrays in -> "
          "host actions out; GPU stages timed with CUDA events; cos/maxabs = worst over 3 seeded fixtures vs "
          "eager fp32 (same NFE)")
    for note in notes:
        print(f"note: {note}")
    print(format_family_compare(rows, floor, floor8))
    return EXIT_OK
