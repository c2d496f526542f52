"""Export a policy of any family to ONNX, verify parity, and only then write the export directory.

Order of events (seed 002): the family builds the model (a preset with random weights, or a
user's checkpoint) -> weights, assets, graphs and reflex_config.json go into a temporary
sibling of the output -> the full-NFE parity check runs on that temporary directory with the
real ONNX engine against the torch model -> on pass it moves into place in one rename; on
failure it is deleted and :class:`~reflex_ros.engine.parity.ParityCheckFailed` is raised. A
diverging export therefore never exists at the output path, not even half-written.

The graphs are the family model's two entry points (``prefix``, ``velocity``) traced as they
are, plus the whole sampler unrolled (monolithic); their signatures come from the family's
processor (what it feeds) and the model (its KV shapes), so this module has no family code.

Exporter: the legacy TorchScript exporter (``dynamo=False``). Measured here (torch 2.13,
onnxruntime 1.31 CPU, tiny monolithic graph with 10 unrolled steps, 4 fixtures): legacy
max_abs 9.5e-7 in 1.8 s; dynamo (opset 18) max_abs 2.1e-5, which fails the 1e-5 strict
threshold.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reflex_ros.engine.bundle import (
    ACTIONS,
    BATCH_AXIS,
    CONFIG_FILE,
    EXPERT_FILE,
    MONOLITHIC_BATCH,
    MONOLITHIC_FILE,
    NOISE,
    POLICY_CONFIG_FILE,
    POLICY_WEIGHTS_FILE,
    PREFIX_FILE,
    PREFIX_MASK,
    TIME,
    V_T,
    X_T,
    ExportConfig,
    GraphSpec,
    TensorSpec,
    kv_names,
    load_bundle,
    write_config,
)
from reflex_ros.engine.parity import (
    DEFAULT_FIXTURES,
    ParityCheckFailed,
    ParityReport,
    resolve_threshold,
    run_parity,
)
from reflex_ros.engine.types import ANY_NFE, ExportError, ReflexError
from reflex_ros.vocab import DECOMPOSED, LAYOUTS, MONOLITHIC

DEFAULT_OPSET = 17
OPSET_RANGE = (14, 20)  # legacy exporter: sdpa needs >= 14; its maximum is 20 (torch 2.13)
MODES: tuple[str, ...] = ("both", *LAYOUTS)


def _reflex_ros_version() -> str:
    import reflex_ros

    return str(getattr(reflex_ros, "__version__", "0"))


# --------------------------------------------------------------------------- signatures


def _with_batch(shape: tuple[int | str, ...], batch: int | str) -> tuple[int | str, ...]:
    return (batch, *shape[1:])


def build_config(source: Any, *, layouts: tuple[str, ...], nfe: int, opset: int) -> ExportConfig:
    """The typed reflex_config.json for an :class:`~reflex_ros.policies.base.ExportSource`."""
    import torch

    proc, model = source.processor, source.model
    specs = {name: (name, dtype, shape) for name, dtype, shape in proc.input_specs()}
    prefix_in = [specs[n] for n in model.prefix_input_names]
    expert_extra = [specs[n] for n in model.expert_input_names]
    kv_shapes = model.kv_shapes(BATCH_AXIS)
    k_names, v_names = kv_names(len(kv_shapes) // 2)
    kv: list[TensorSpec] = []
    for i, (k, v) in enumerate(zip(k_names, v_names, strict=True)):
        kv += [(k, "float32", tuple(kv_shapes[2 * i])), (v, "float32", tuple(kv_shapes[2 * i + 1]))]
    prefix_len = int(kv_shapes[0][2]) if len(kv_shapes[0]) > 2 else 0
    mask_spec = model.prefix_mask_spec(BATCH_AXIS) if hasattr(model, "prefix_mask_spec") \
        else (PREFIX_MASK, "bool", (BATCH_AXIS, prefix_len))
    C, W = proc.chunk_size, proc.action_width
    graphs: dict[str, dict[str, GraphSpec]] = {}
    if DECOMPOSED in layouts:
        graphs[DECOMPOSED] = {
            "prefix": GraphSpec(PREFIX_FILE, tuple(prefix_in), (*kv, mask_spec)),
            "expert": GraphSpec(
                EXPERT_FILE,
                ((X_T, "float32", (BATCH_AXIS, C, W)), (TIME, "float32", (BATCH_AXIS,)), *expert_extra, *kv, mask_spec),
                ((V_T, "float32", (BATCH_AXIS, C, W)),),
            ),
        }
    if MONOLITHIC in layouts:
        mono_in = [(n, d, _with_batch(s, MONOLITHIC_BATCH)) for n, d, s in (*prefix_in, *expert_extra)]
        graphs[MONOLITHIC] = {"model": GraphSpec(
            MONOLITHIC_FILE,
            (*mono_in, (NOISE, "float32", (MONOLITHIC_BATCH, C, W))),
            ((ACTIONS, "float32", (MONOLITHIC_BATCH, C, W)),),
        )}
    return ExportConfig(
        model_type=source.model_type,
        # decomposed is the serving default: it serves every NFE and CFG
        default_layout=DECOMPOSED if DECOMPOSED in layouts else MONOLITHIC,
        layouts=tuple(layouts),
        num_denoising_steps=nfe,
        supported_nfe=ANY_NFE if DECOMPOSED in layouts else (nfe,),
        chunk_size=C,
        action_dim=proc.action_dim,
        action_width=W,
        max_state_dim=proc.max_state_dim,
        state_dim=int(proc.state_dim or 0),
        camera_names=tuple(proc.camera_names),
        optional_cameras=tuple(getattr(proc, "optional_cameras", ())),
        image_size=proc.image_size,
        max_lang_tokens=proc.max_lang_tokens,
        supports_cfg=bool(proc.supports_cfg),
        graphs=graphs,
        expert_inputs=tuple(model.expert_input_names),
        opset=opset,
        weights_file=POLICY_WEIGHTS_FILE,
        policy_config_file=POLICY_CONFIG_FILE,
        assets=tuple(source.extra_config.get("assets", ())),
        preset=source.preset,
        source=source.label,
        export_command=source.export_command,
        monolithic_nfe=nfe if MONOLITHIC in layouts else None,
        metadata={
            "exporter": "torch.onnx.export(dynamo=False)",
            "torch_version": str(torch.__version__).split("+")[0],
            "reflex_ros_version": _reflex_ros_version(),
            "flow": "x(t=1)=noise, dt=-1/N, t_i=1+i*dt, x+=dt*v; CFG v=v_u+beta*(v_c-v_u)",
        },
    )


# --------------------------------------------------------------------------- graph wrappers


def _graph_modules():
    """The nn.Modules whose forward() is exactly one ONNX graph (built lazily: torch import)."""
    import torch

    class PrefixGraph(torch.nn.Module):
        """Observation arrays -> per-layer KV (``past_k_i``/``past_v_i``) + prefix mask."""

        def __init__(self, policy: torch.nn.Module):
            super().__init__()
            self.policy = policy

        def forward(self, *inputs):
            kv, mask = self.policy.prefix(**dict(zip(self.policy.prefix_input_names, inputs, strict=True)))
            return (*kv, mask)

    class ExpertGraph(torch.nn.Module):
        """One velocity evaluation against the cached prefix KV."""

        def __init__(self, policy: torch.nn.Module):
            super().__init__()
            self.policy = policy

        def forward(self, x_t, t, *rest):
            n_extra = len(self.policy.expert_input_names)
            extra = dict(zip(self.policy.expert_input_names, rest[:n_extra], strict=True))
            kv, mask = list(rest[n_extra:-1]), rest[-1]
            return self.policy.velocity(x_t, t, kv, mask, **extra).to(torch.float32)

    return PrefixGraph, ExpertGraph


def _example_inputs(source: Any) -> dict[str, Any]:
    """Real model inputs at batch 2 (one processed observation, duplicated): tracing with real
    values is what the graphs will see, and batch 2 keeps the batch axis from being
    specialised to 1 (the CFG batch is 2)."""
    import numpy as np
    import torch

    from reflex_ros.engine.parity import fixture_observations

    obs = fixture_observations(source.processor, 1, seed=0)[0]
    arrays = source.processor.prepare(obs)
    return {k: torch.from_numpy(np.ascontiguousarray(np.repeat(v, 2, axis=0))) for k, v in arrays.items()}


def _onnx_export(module, args, path: Path, spec: GraphSpec, opset: int, dynamic: bool) -> None:
    """Trace ``module`` into ``path`` with the spec's tensor names, then finalize it.

    The trace goes into a private work directory: above 2 GB (pi0) the legacy exporter
    writes one external-data file per initializer next to the graph, with names such as
    ``onnx::MatMul_123`` that two graphs could both use for different tensors. Finalizing
    consolidates them into one ``<graph>.onnx.data`` file per graph.
    """
    import torch

    axes = None
    if dynamic:
        axes = {name: {0: BATCH_AXIS} for name, _, _ in (*spec.inputs, *spec.outputs)}
    work = path.parent / f".work-{path.stem}"
    work.mkdir()
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            # TracerWarnings about shapes we fix on purpose, and the legacy-exporter notice
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module.eval(),
                tuple(args),
                str(work / path.name),
                dynamo=False,
                input_names=spec.input_names(),
                output_names=spec.output_names(),
                dynamic_axes=axes,
                opset_version=opset,
                do_constant_folding=True,
            )
        _finalize_graph(work / path.name, path, spec)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ExportError(
            f"torch.onnx.export of {path.name} failed at opset {opset}: {type(exc).__name__}: {first}; "
            f"try another --opset (default {DEFAULT_OPSET})"
        ) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


# Graphs whose weights exceed this are saved with one external-data file (protobuf's 2 GB cap).
EXTERNAL_DATA_THRESHOLD_BYTES = 1 << 30


def _finalize_graph(traced: Path, path: Path, spec: GraphSpec) -> None:
    """Declare the static output shapes and write the graph to ``path`` (weights inline, or in
    ``<name>.data`` when they exceed :data:`EXTERNAL_DATA_THRESHOLD_BYTES`).

    Declaring shapes: the legacy exporter's shape inference loses static dims downstream of
    a dynamic batch axis (the KV outputs come out as ``Gatherpast_k_0_dim_2``). We know them
    from the config; declaring them lets load_bundle check outputs as strictly as inputs and
    gives TensorRT static shapes. The parity check then runs on these declared shapes (its IO
    binding allocates exactly them), so a wrong declaration cannot pass.
    """
    import onnx

    model = onnx.load(str(traced))  # pulls in per-tensor external files, if any
    shapes = {name: shape for name, _, shape in spec.outputs}
    for out in model.graph.output:
        dims = out.type.tensor_type.shape.dim
        want = shapes[out.name]
        while len(dims) < len(want):
            dims.add()
        for dim, w in zip(dims, want, strict=True):
            if isinstance(w, str):
                dim.dim_param = w
            else:
                dim.dim_value = int(w)
    weight_bytes = sum(len(init.raw_data) for init in model.graph.initializer)
    if weight_bytes > EXTERNAL_DATA_THRESHOLD_BYTES:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{path.name}.data", size_threshold=1024)
    else:
        onnx.save_model(model, str(path))


#: an fp16 export's parity gate (its graphs round to fp16; the reference is torch fp32, so max_abs
#: measures rounding more than bugs): every chunk within cos 0.999 of the reference (the bar
#: fp8 is held to), and no action off by more than 0.5 (a broken graph is off by O(1))
FP16_THRESHOLD = 0.5
FP16_MIN_COS = 0.999


def convert_graphs_to_fp16(export_dir: Path, config: ExportConfig) -> None:
    """Rewrite every graph of an export in fp16 (weights and math), keeping its float32 inputs
    and outputs (casts at the edges), so the runtime, the config signatures and the KV
    hand-off are unchanged. onnxruntime's own converter (``onnxruntime.transformers.float16``)
    does the rewrite; ORT's CUDA provider then runs fp16 kernels (TensorRT needs no fp16
    graph: it builds fp16 from fp32)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    for graphs in config.graphs.values():
        for spec in graphs.values():
            path = export_dir / spec.file
            model = onnx.load(str(path))
            half = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)
            if sum(len(i.raw_data) for i in half.graph.initializer) > EXTERNAL_DATA_THRESHOLD_BYTES:
                onnx.save_model(half, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                                location=f"{path.name}.data", size_threshold=1024)
            else:
                onnx.save_model(half, str(path))


def export_graphs(source: Any, export_dir: Path, config: ExportConfig, opset: int,
                  log: Callable[[str], None] | None = None) -> None:
    """Write the ONNX graphs named in ``config`` into ``export_dir``."""
    import torch

    from reflex_ros.engine.sampler import MonolithicPolicy

    say = log or (lambda _msg: None)
    model = source.model
    PrefixGraph, ExpertGraph = _graph_modules()
    example = _example_inputs(source)
    if DECOMPOSED in config.graphs:
        g = config.graphs[DECOMPOSED]
        prefix_args = [example[n] for n in model.prefix_input_names]
        started = time.perf_counter()
        _onnx_export(PrefixGraph(model), prefix_args, export_dir / g["prefix"].file, g["prefix"], opset, True)
        say(f"  {g['prefix'].file} written in {time.perf_counter() - started:.1f} s")
        with torch.no_grad():
            kv, mask = model.prefix(**{n: example[n] for n in model.prefix_input_names})
        C, W = config.chunk_size, config.action_width
        expert_args = [torch.zeros((2, C, W)), torch.full((2,), 0.5),
                       *[example[n] for n in model.expert_input_names], *kv, mask]
        started = time.perf_counter()
        _onnx_export(ExpertGraph(model), expert_args, export_dir / g["expert"].file, g["expert"], opset, True)
        say(f"  {g['expert'].file} written in {time.perf_counter() - started:.1f} s")
    if MONOLITHIC in config.graphs:
        spec = config.graphs[MONOLITHIC]["model"]
        names = tuple(n for n, _, _ in spec.inputs if n != NOISE)
        mono = MonolithicPolicy(model, config.default_nfe_for(MONOLITHIC), names)
        args = [example[n][:MONOLITHIC_BATCH] for n in names]
        args.append(torch.zeros((MONOLITHIC_BATCH, config.chunk_size, config.action_width)))
        started = time.perf_counter()
        _onnx_export(mono, args, export_dir / spec.file, spec, opset, False)
        say(f"  {spec.file} written in {time.perf_counter() - started:.1f} s")


def perturb_onnx_weights(path: Path, scale: float) -> int:
    """Multiply every float weight matrix of an ONNX file by ``1 + scale``, in place.

    Fault injection for tests: it makes a graph deliberately disagree with torch so the
    refusal path (exit 1, nothing written) is exercised for real. Returns the count changed.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    changed = 0
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT and len(init.dims) >= 2:
            arr = numpy_helper.to_array(init).astype(np.float32) * np.float32(1.0 + scale)
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
            changed += 1
    onnx.save(model, str(path))
    return changed


# --------------------------------------------------------------------------- the output directory


def _fill_in_place(out: Path) -> bool:
    """Whether the export is assembled inside ``out`` and moved up into it: ``out`` is an
    existing empty directory (a mount point, one the user made, perhaps in a directory the
    user cannot write). A sibling would be on another filesystem (a mount point: EXDEV on the
    final rename) or in a directory we cannot write (EACCES)."""
    return out.is_dir() and not any(out.iterdir())


def check_output_dir(out: Path, force: bool, ignore: Path | None = None) -> None:
    """Refuse up front what cannot end well: a file, a non-empty directory without ``--force``,
    ``--force`` onto a directory that is not an export (it would destroy a checkpoint or
    anything else), and a place we cannot write: the export is assembled in a temporary
    directory inside an existing empty ``out``, else in a sibling, and moved into place.
    ``ignore``: our own temporary directory (when checking again just before the move)."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"output {out} exists and is not a directory; choose another --output")
    contents = [p for p in out.iterdir() if p != ignore] if out.is_dir() else []
    if contents:
        if not force:
            raise ExportError(f"output directory {out} is not empty; choose a new --output "
                              "(or pass --force to replace an earlier export there)")
        if not (out / CONFIG_FILE).is_file():
            raise ExportError(f"output directory {out} is not empty and holds no {CONFIG_FILE}: --force only "
                              "replaces an earlier reflex_ros export; choose a new --output")
    elif out.is_dir():  # empty: filled in place, so only the directory itself must be writable
        if not os.access(out, os.W_OK | os.X_OK):
            raise ExportError(f"cannot write into {out}: the directory is not writable; choose an --output you "
                              "can write")
        return
    probe = out.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ExportError(f"cannot create {out}: {probe} is not a directory; choose another --output")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write next to {out}: {probe} is not writable (the export is assembled in a "
                          "temporary sibling and moved into place); choose an --output in a writable directory, "
                          "or create the directory and make it writable (an existing empty directory is filled "
                          "in place)")


def _normal_permissions(directory: Path) -> None:
    """mkdtemp makes a 0700 directory (and safetensors a 0600 file); an export is meant to be
    shared (the ROS node may run as another user), so apply the usual umask-based modes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for path in directory.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _move_into_place(tmp: Path, out: Path) -> None:
    """Replace ``out`` by ``tmp`` with renames on the same filesystem (no half state at ``out``).

    An existing empty directory (a mount point, one made by the user) is filled instead of
    replaced: renaming onto a mount point fails with EBUSY, and the user may not own the
    parent. ``tmp`` then lives inside ``out`` (:func:`_fill_in_place`), so each rename stays
    on one filesystem."""
    _normal_permissions(tmp)
    if tmp.parent == out or (out.is_dir() and not any(out.iterdir())):
        for item in tmp.iterdir():
            os.rename(item, out / item.name)
        tmp.rmdir()
        return
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        if old is not None:
            os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- export


def export_model(
    preset: str | None = "tiny",
    output_dir: Path | str = "export",
    mode: str = "both",
    nfe: int | None = None,
    num_cameras: int | None = None,
    strict: bool = False,
    opset: int | None = None,
    threshold: float | None = None,
    seed: int = 0,
    fixtures: int = DEFAULT_FIXTURES,
    force: bool = False,
    perturb_onnx: float = 0.0,
    log: Callable[[str], None] | None = print,
    checkpoint: str | None = None,
    precision: str = "fp32",
    parity_provider: str | None = None,
) -> ParityReport:
    """Export ``checkpoint`` (a LeRobot checkpoint dir or hub id) or ``preset`` (the reference
    model, random weights) to ``output_dir`` if and only if ONNX matches torch.

    ``mode``: ``both`` (default; serving defaults to decomposed), ``decomposed`` or
    ``monolithic``. ``nfe``: the monolithic graph's unrolled steps and the decomposed
    default (None: the checkpoint's ``num_inference_steps``, else 10). Threshold:
    ``threshold``, else 1e-5 with ``strict``, else 1e-4 (fp16 graphs: 0.5 and cos >= 0.999).
    ``precision``:
    fp32 graphs, or fp16 (converted after tracing; parity then needs a GPU provider,
    ``parity_provider``, default CPU). ``seed`` seeds the reference init
    and the parity fixtures. ``perturb_onnx`` (tests only) scales the ONNX weights before the
    check to prove the refusal. Raises ParityCheckFailed (nothing written), ExportError /
    ReflexError (usage or environment problem, with a fix).
    """
    from reflex_ros.engine.schedule import check_nfe
    from reflex_ros.policies import REFERENCE, get_family

    say = log or (lambda _msg: None)
    if mode not in MODES:
        raise ReflexError(f"export mode {mode!r} is not one of {list(MODES)}")
    if precision not in ("fp32", "fp16"):
        raise ReflexError(f"export precision {precision!r} is not one of ['fp32', 'fp16']")
    try:
        limit = resolve_threshold(threshold if threshold is not None or precision == "fp32" else FP16_THRESHOLD,
                                  strict)
    except ValueError as exc:
        raise ReflexError(str(exc)) from None
    if precision == "fp16" and (parity_provider or "cpu").lower() in ("cpu", "cpuexecutionprovider"):
        raise ReflexError("an fp16 export's parity check runs its graphs, which the CPU provider cannot (no fp16 "
                          "kernels for most ops): pass --parity-provider cuda on a GPU machine, or export fp32 "
                          "(TensorRT builds fp16 from fp32 graphs)")
    if fixtures < 1:
        raise ReflexError(f"parity needs at least 1 fixture, got fixtures={fixtures}")
    opset = int(opset or DEFAULT_OPSET)
    if not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        raise ReflexError(
            f"opset {opset} is not supported by the exporter: choose {OPSET_RANGE[0]}..{OPSET_RANGE[1]} "
            f"(default {DEFAULT_OPSET})"
        )
    layouts = LAYOUTS if mode == "both" else (mode,)
    out = Path(output_dir).expanduser().absolute()
    check_output_dir(out, force)

    started = time.perf_counter()
    if checkpoint is not None:
        from reflex_ros.policies.checkpoints import resolve_checkpoint

        model_type, path = resolve_checkpoint(checkpoint)
        say(f"loading {model_type} checkpoint {path} ...")
        source = get_family(model_type).export_source(str(path), seed=seed, num_cameras=num_cameras)
    else:
        source = get_family(REFERENCE).export_source(preset or "tiny", num_cameras=num_cameras, seed=seed)
    say(f"loaded {source.label} in {time.perf_counter() - started:.1f} s")
    default_nfe = int(source.extra_config.get("num_inference_steps", 10))
    try:
        nfe = check_nfe(default_nfe if nfe is None else nfe, ANY_NFE)
    except ValueError as exc:
        raise ReflexError(str(exc)) from None

    if _fill_in_place(out):
        tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=out))
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        source.write(tmp)
        config = build_config(source, layouts=layouts, nfe=nfe, opset=opset).replace(precision=precision)
        write_config(tmp, config)
        say(f"exporting {source.label} ({', '.join(layouts)}, nfe={nfe}, opset={opset}) ...")
        export_graphs(source, tmp, config, opset, log=say)
        if precision == "fp16":
            say("  converting the graphs to fp16 (float32 inputs and outputs kept) ...")
            convert_graphs_to_fp16(tmp, config)
        if perturb_onnx:
            bundle = load_bundle(tmp, check_graphs=False)
            for layout in bundle.layouts:
                for path in bundle.graph_paths(layout).values():
                    perturb_onnx_weights(path, perturb_onnx)
        load_bundle(tmp)  # the graphs we just wrote must match the config we just wrote
        say(f"parity: {fixtures} fixture(s) per graph, full NFE loop, ONNX vs torch ...")
        report = run_parity(tmp, source.model, threshold=limit, fixtures=fixtures, seed=seed, provider=parity_provider,
                            min_cos=FP16_MIN_COS if precision == "fp16" else None)
        report.export_dir = str(out)
        say(report.format_table())
        if not report.passed:
            raise ParityCheckFailed(
                f"parity FAILED: max_abs_diff {report.max_abs_diff_across_all:.2e} > threshold {limit:.0e}; "
                f"nothing was written to {out}. This is an exporter bug: ONNX and torch disagree.",
                report,
            )
        config = config.replace(parity={
            "max_abs_diff_across_all": report.max_abs_diff_across_all,
            "max_abs_diff_by_layout": report.by_layout(),
            "min_cos": min(r.cos for r in report.results),
            "threshold": limit,
            "passed": True,
            "num_fixtures": fixtures,
            "seed": seed,
        })
        write_config(tmp, config)
        check_output_dir(out, force, ignore=tmp)  # someone may have written there while we exported
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"export written to {out} in {time.perf_counter() - started:.1f} s")
    return report


def validate_export(
    export_dir: Path | str,
    *,
    threshold: float | None = None,
    strict: bool = False,
    fixtures: int = DEFAULT_FIXTURES,
    seed: int = 0,
    log: Callable[[str], None] | None = print,
    provider: str | None = None,
) -> ParityReport:
    """Re-check an existing export: its ONNX graphs against the torch weights stored in it.

    Returns the report (``passed`` may be False: the caller decides the exit code); raises
    ExportError when the directory cannot be checked at all (missing, corrupt).
    """
    from reflex_ros.engine.loader import load_bundle_model

    say = log or (lambda _msg: None)
    try:
        limit = resolve_threshold(threshold, strict)
    except ValueError as exc:
        raise ReflexError(str(exc)) from None
    bundle = load_bundle(export_dir)
    model = load_bundle_model(bundle, device="cpu", dtype="fp32")
    report = run_parity(bundle.export_dir, model, threshold=limit, fixtures=fixtures, seed=seed, provider=provider)
    say(report.format_table())
    return report
