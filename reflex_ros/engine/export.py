"""Export a policy to ONNX, verify parity, and only then write the export directory.

Order of events (seed 002): build the policy -> write weights, graphs and reflex_config.json
into a temporary sibling of the output -> run the full-NFE parity check on that temporary
directory with the real ONNX engine -> on pass, move it into place in one rename; on
failure, delete it and raise :class:`~reflex_ros.engine.parity.ParityCheckFailed`. A
diverging export therefore never exists at the output path, not even half-written.

Exporter: the legacy TorchScript exporter (``dynamo=False``). Measured here (torch 2.13,
onnxruntime 1.31 CPU, tiny monolithic graph with 10 unrolled steps, 4 fixtures): legacy
max_abs 9.5e-7 in 1.8 s; dynamo (opset 18) max_abs 2.1e-5 in 15 s, which fails the 1e-5
strict threshold. environment.md found the same ordering for lerobot pi0/SmolVLA.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reflex_ros.engine.bundle import (
    BATCH_AXIS,
    DECOMPOSED,
    MONOLITHIC,
    VARIANTS,
    decomposed_block,
    expected_signatures,
    load_bundle,
    monolithic_block,
    policy_block,
    write_config,
)
from reflex_ros.engine.parity import (
    DEFAULT_FIXTURES,
    ParityCheckFailed,
    ParityReport,
    resolve_threshold,
    run_parity,
)
from reflex_ros.engine.types import NFE_CHOICES, ExportError, ReflexError

DEFAULT_OPSET = 17
OPSET_RANGE = (14, 20)  # legacy exporter: sdpa needs >= 14; its maximum is 20 (torch 2.13)
MODES: tuple[str, ...] = ("both", DECOMPOSED, MONOLITHIC)
MODEL_TYPE = "reflex_ros_flow_vla"  # a pi0-style flow-matching VLA (see engine/model.py)


def _reflex_ros_version() -> str:
    import reflex_ros

    return str(getattr(reflex_ros, "__version__", "0"))


# --------------------------------------------------------------------------- graph wrappers


def _graph_modules():
    """The nn.Modules whose forward() is exactly one ONNX graph (built lazily: torch import)."""
    import torch

    class PrefixGraph(torch.nn.Module):
        """Observation -> per-layer KV (``past_k_i``/``past_v_i``) + prefix mask."""

        def __init__(self, policy: torch.nn.Module):
            super().__init__()
            self.policy = policy

        def forward(self, images, lang_tokens, lang_masks, state):
            k, v, mask = self.policy.prefix(images, lang_tokens, lang_masks, state)
            out = []
            for i in range(k.shape[0]):
                out += [k[i], v[i]]
            return (*out, mask)

    class ExpertGraph(torch.nn.Module):
        """One velocity evaluation against the cached prefix KV."""

        def __init__(self, policy: torch.nn.Module):
            super().__init__()
            self.policy = policy

        def forward(self, x_t, t, *kv_and_mask):
            kv, mask = kv_and_mask[:-1], kv_and_mask[-1]
            k = torch.stack(kv[0::2])
            v = torch.stack(kv[1::2])
            return self.policy.velocity(x_t, t, k, v, mask)

    return PrefixGraph, ExpertGraph


def _example_inputs(config: dict[str, Any], variant: str, role: str, batch: int):
    """Zero tensors of the graph's signature (batch substituted for the dynamic axis)."""
    import torch

    dtypes = {"float32": torch.float32, "uint8": torch.uint8, "int64": torch.int64, "bool": torch.bool}
    inputs, _ = expected_signatures(config)[(variant, role)]
    out = []
    for name, dtype, shape in inputs:
        dims = [batch if isinstance(d, str) else int(d) for d in shape]
        if dtype == "bool":
            out.append(torch.ones(dims, dtype=torch.bool))
        elif name == "t":
            out.append(torch.full(dims, 0.5))
        else:
            out.append(torch.zeros(dims, dtype=dtypes[dtype]))
    return tuple(out)


def _onnx_export(module, args, path: Path, config: dict[str, Any], variant: str, role: str, opset: int) -> None:
    """Trace ``module`` into ``path`` with the config's tensor names, then finalize it.

    The trace goes into a private work directory: above 2 GB (pi0) the legacy exporter
    writes one external-data file per initializer next to the graph, with names such as
    ``onnx::MatMul_123`` that two graphs could both use for different tensors. Finalizing
    consolidates them into one ``<graph>.onnx.data`` file per graph.
    """
    import torch

    inputs, outputs = expected_signatures(config)[(variant, role)]
    dynamic = None
    if variant == DECOMPOSED:
        dynamic = {name: {0: BATCH_AXIS} for name, _, _ in (*inputs, *outputs)}
    work = path.parent / f".work-{path.stem}"
    work.mkdir()
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            # TracerWarnings about shapes we fix on purpose, and the legacy-exporter notice
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module.eval(),
                args,
                str(work / path.name),
                dynamo=False,
                input_names=[n for n, _, _ in inputs],
                output_names=[n for n, _, _ in outputs],
                dynamic_axes=dynamic,
                opset_version=opset,
                do_constant_folding=True,
            )
        _finalize_graph(work / path.name, path, outputs)
    except Exception as exc:
        raise ExportError(
            f"torch.onnx.export of {path.name} ({variant}/{role}) failed at opset {opset}: "
            f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}; "
            f"try another --opset (default {DEFAULT_OPSET})"
        ) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


# Graphs whose weights exceed this are saved with one external-data file (protobuf's 2 GB cap).
EXTERNAL_DATA_THRESHOLD_BYTES = 1 << 30


def _finalize_graph(traced: Path, path: Path, outputs) -> None:
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
    specs = {name: shape for name, _, shape in outputs}
    for out in model.graph.output:
        for dim, want in zip(out.type.tensor_type.shape.dim, specs[out.name], strict=True):
            if isinstance(want, str):
                dim.dim_param = want
            else:
                dim.dim_value = int(want)
    weight_bytes = sum(len(init.raw_data) for init in model.graph.initializer)
    if weight_bytes > EXTERNAL_DATA_THRESHOLD_BYTES:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{path.name}.data", size_threshold=1024)
    else:
        onnx.save_model(model, str(path))


def build_config(policy_config: Any, *, preset: str, variants: tuple[str, ...], nfe: int, opset: int) -> dict[str, Any]:
    """reflex_config.json for a policy config (A's PolicyConfig) and the graphs exported."""
    import torch

    c = policy_config
    config: dict[str, Any] = {
        "model_type": MODEL_TYPE,
        "preset": preset,
        # decomposed is the serving default: it serves every NFE and CFG
        "export_kind": DECOMPOSED if DECOMPOSED in variants else MONOLITHIC,
        "export_kinds": list(variants),
        "num_denoising_steps": nfe,
        "supported_nfe": list(NFE_CHOICES) if DECOMPOSED in variants else [nfe],
        "chunk_size": c.chunk_size,
        "action_dim": c.action_dim,
        "max_state_dim": c.max_state_dim,
        "num_cameras": c.num_cameras,
        "image_size": c.image_size,
        "max_lang_tokens": c.max_lang_tokens,
        "opset": opset,
        "exporter": "torch.onnx.export(dynamo=False)",
        "torch_version": str(torch.__version__).split("+")[0],
        "reflex_ros_version": _reflex_ros_version(),
        "image_format": "uint8 RGB (H, W, 3) per camera; normalised to [-1, 1] inside the graph",
        "flow": "x(t=1)=noise, dt=-1/N, t_i=1+i*dt, x+=dt*v; CFG v=v_u+beta*(v_c-v_u)",
        "policy": policy_block(),
        "parity": None,
    }
    if DECOMPOSED in variants:
        config[DECOMPOSED] = decomposed_block(
            num_layers=c.depth, num_kv_heads=c.num_kv_heads, head_dim=c.head_dim, prefix_len=c.prefix_len
        )
    if MONOLITHIC in variants:
        config[MONOLITHIC] = monolithic_block(nfe)
    return config


def export_graphs(model: Any, export_dir: Path, config: dict[str, Any], opset: int) -> None:
    """Write the ONNX graphs named in ``config`` into ``export_dir``."""
    from reflex_ros.engine.sampler import MonolithicPolicy

    PrefixGraph, ExpertGraph = _graph_modules()
    if DECOMPOSED in config:
        d = config[DECOMPOSED]
        # batch 2 at trace time so no shape is specialised to 1 (the CFG batch is 2)
        _onnx_export(PrefixGraph(model), _example_inputs(config, DECOMPOSED, "prefix", 2),
                     export_dir / d["prefix_file"], config, DECOMPOSED, "prefix", opset)
        _onnx_export(ExpertGraph(model), _example_inputs(config, DECOMPOSED, "expert", 2),
                     export_dir / d["expert_file"], config, DECOMPOSED, "expert", opset)
    if MONOLITHIC in config:
        m = config[MONOLITHIC]
        mono = MonolithicPolicy(model, int(m["num_denoising_steps"]))
        _onnx_export(mono, _example_inputs(config, MONOLITHIC, "model", int(m["batch_size"])),
                     export_dir / m["file"], config, MONOLITHIC, "model", opset)


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


def _check_output_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"output {out} exists and is not a directory; choose another --output")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"output directory {out} is not empty; choose a new --output or pass --force to overwrite it")


def _normal_permissions(directory: Path) -> None:
    """mkdtemp makes a 0700 directory (and safetensors a 0600 file); an export is meant to be
    shared (the ROS node may run as another user), so apply the usual umask-based modes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for path in directory.iterdir():
        if path.is_file():
            os.chmod(path, 0o666 & ~umask)


def _move_into_place(tmp: Path, out: Path) -> None:
    """Replace ``out`` by ``tmp`` with renames on the same filesystem (no half state at ``out``)."""
    _normal_permissions(tmp)
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


def export_model(
    preset: str = "tiny",
    output_dir: Path | str = "export",
    mode: str = "both",
    nfe: int = 10,
    num_cameras: int | None = None,
    strict: bool = False,
    opset: int | None = None,
    threshold: float | None = None,
    seed: int = 0,
    fixtures: int = DEFAULT_FIXTURES,
    force: bool = False,
    perturb_onnx: float = 0.0,
    log: Callable[[str], None] | None = print,
) -> ParityReport:
    """Export ``preset`` to ``output_dir`` if and only if ONNX matches torch.

    ``mode``: ``both`` (default; serving defaults to decomposed), ``decomposed`` or
    ``monolithic``. ``nfe``: the monolithic graph's unrolled steps and the decomposed
    default. Threshold: ``threshold``, else 1e-5 with ``strict``, else 1e-4. ``seed`` seeds
    the policy init and the parity fixtures. ``perturb_onnx`` (tests only) scales the ONNX
    weights before the check to prove the refusal. Raises ParityCheckFailed (nothing
    written), ExportError / ReflexError (usage or environment problem, with a fix).
    """
    from reflex_ros.engine.config import get_preset
    from reflex_ros.engine.schedule import check_nfe
    from reflex_ros.engine.weights import build_policy, save_policy

    say = log or (lambda _msg: None)
    if mode not in MODES:
        raise ReflexError(f"export mode {mode!r} is not one of {list(MODES)}")
    try:
        nfe = check_nfe(nfe)
        limit = resolve_threshold(threshold, strict)
        policy_config = get_preset(preset, num_cameras=num_cameras, seed=seed)
    except ValueError as exc:
        raise ReflexError(str(exc)) from None
    if fixtures < 1:
        raise ReflexError(f"parity needs at least 1 fixture, got fixtures={fixtures}")
    opset = int(opset or DEFAULT_OPSET)
    if not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        raise ReflexError(
            f"opset {opset} is not supported by the exporter: choose {OPSET_RANGE[0]}..{OPSET_RANGE[1]} "
            f"(default {DEFAULT_OPSET})"
        )
    variants = VARIANTS if mode == "both" else (mode,)
    out = Path(output_dir).expanduser().absolute()
    _check_output_dir(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)

    model = build_policy(policy_config).eval()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        save_policy(model, tmp)
        config = build_config(policy_config, preset=preset, variants=variants, nfe=nfe, opset=opset)
        write_config(tmp, config)
        say(f"exporting {preset} ({', '.join(variants)}, nfe={nfe}, opset={opset}) ...")
        export_graphs(model, tmp, config, opset)
        if perturb_onnx:
            bundle = load_bundle(tmp, check_graphs=False)
            for variant in bundle.variants:
                for path in bundle.graph_paths(variant).values():
                    perturb_onnx_weights(path, perturb_onnx)
        load_bundle(tmp)  # the graphs we just wrote must match the config we just wrote
        report = run_parity(tmp, model, threshold=limit, fixtures=fixtures, seed=seed)
        report.export_dir = str(out)
        say(report.format_table())
        if not report.passed:
            raise ParityCheckFailed(
                f"parity FAILED: max_abs_diff {report.max_abs_diff_across_all:.2e} > threshold {limit:.0e}; "
                f"nothing was written to {out}. This is an exporter bug: ONNX and torch disagree.",
                report,
            )
        config["parity"] = {
            "max_abs_diff_across_all": report.max_abs_diff_across_all,
            "max_abs_diff_by_variant": report.by_variant(),
            "threshold": limit,
            "passed": True,
            "num_fixtures": fixtures,
            "seed": seed,
        }
        write_config(tmp, config)
        _check_output_dir(out, force)  # someone may have written there while we exported
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"export written to {out}")
    return report


def validate_export(
    export_dir: Path | str,
    *,
    threshold: float | None = None,
    strict: bool = False,
    fixtures: int = DEFAULT_FIXTURES,
    seed: int = 0,
    log: Callable[[str], None] | None = print,
) -> ParityReport:
    """Re-check an existing export: its ONNX graphs against the torch weights stored in it.

    Returns the report (``passed`` may be False: the caller decides the exit code); raises
    ExportError when the directory cannot be checked at all (missing, corrupt).
    """
    from reflex_ros.engine.loader import load_bundle_policy

    say = log or (lambda _msg: None)
    try:
        limit = resolve_threshold(threshold, strict)
    except ValueError as exc:
        raise ReflexError(str(exc)) from None
    bundle = load_bundle(export_dir)
    model = load_bundle_policy(bundle, device="cpu", dtype="fp32").eval()
    report = run_parity(bundle.export_dir, model, threshold=limit, fixtures=fixtures, seed=seed)
    say(report.format_table())
    return report
