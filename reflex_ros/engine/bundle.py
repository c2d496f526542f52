"""The export directory format: what ``reflex-ros export`` writes and every runtime reads.

An export directory is self-describing. ``reflex_config.json`` (Reflex's keys where they
apply) names every file, every graph input/output and every static dimension, so a runtime
never guesses. :func:`load_bundle` checks the directory against that description *before* any
session is created, because an onnxruntime error about a missing input deep inside session
creation tells a user nothing about which file is stale or how to fix it.

This module must not import torch: the ONNX serving path loads bundles on machines that have
only onnxruntime.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reflex_ros.engine.types import NFE_CHOICES, ExportError

CONFIG_FILE = "reflex_config.json"
PREFIX_FILE = "vlm_prefix.onnx"
EXPERT_FILE = "expert_denoise.onnx"
MONOLITHIC_FILE = "model.onnx"
POLICY_WEIGHTS_FILE = "policy.safetensors"
POLICY_CONFIG_FILE = "policy_config.json"

DECOMPOSED = "decomposed"
MONOLITHIC = "monolithic"
VARIANTS: tuple[str, ...] = (DECOMPOSED, MONOLITHIC)

BATCH_AXIS = "batch"  # the dynamic axis name of the decomposed graphs (batch 2 = CFG)
MONOLITHIC_BATCH = 1  # the unrolled graph serves one observation, no CFG

# Graph tensor names. The decomposed names follow Reflex (past_k_i / past_v_i /
# prefix_pad_masks / x_t / t / v_t) so tools that know Reflex exports read ours.
IMAGES = "images"
LANG_TOKENS = "lang_tokens"
LANG_MASKS = "lang_masks"
STATE = "state"
PREFIX_MASK = "prefix_pad_masks"
X_T = "x_t"
TIME = "t"
V_T = "v_t"
NOISE = "noise"
ACTIONS = "actions"

REQUIRED_KEYS: tuple[str, ...] = (
    "model_type",
    "export_kind",
    "num_denoising_steps",
    "supported_nfe",
    "chunk_size",
    "action_dim",
    "max_state_dim",
    "num_cameras",
    "image_size",
    "max_lang_tokens",
    "opset",
    "policy",
)

# ONNX TensorProto element types we use, by the numpy dtype name the runtime feeds.
ONNX_ELEM_TYPES: dict[str, int] = {"float32": 1, "uint8": 2, "int64": 7, "bool": 9, "float16": 10}

Shape = tuple[int | str, ...]  # a str dim is symbolic (dynamic)
TensorSpec = tuple[str, str, Shape]  # (name, numpy dtype name, shape)


def kv_names(num_layers: int) -> tuple[list[str], list[str]]:
    """Per-layer KV tensor names, ``past_k_i`` / ``past_v_i`` as in Reflex exports."""
    return [f"past_k_{i}" for i in range(num_layers)], [f"past_v_{i}" for i in range(num_layers)]


def decomposed_block(
    *, num_layers: int, num_kv_heads: int, head_dim: int, prefix_len: int
) -> dict[str, Any]:
    """The ``decomposed`` block of reflex_config.json: files, tensor names, KV geometry."""
    k_names, v_names = kv_names(num_layers)
    kv = [n for pair in zip(k_names, v_names, strict=True) for n in pair]
    return {
        "prefix_file": PREFIX_FILE,
        "expert_file": EXPERT_FILE,
        "prefix_inputs": [IMAGES, LANG_TOKENS, LANG_MASKS, STATE],
        "prefix_outputs": [*kv, PREFIX_MASK],
        "expert_inputs": [X_T, TIME, *kv, PREFIX_MASK],
        "expert_outputs": [V_T],
        "kv_k_names": k_names,
        "kv_v_names": v_names,
        "num_layers": num_layers,
        "num_kv_heads": num_kv_heads,
        "head_dim": head_dim,
        "prefix_len": prefix_len,
        "batch_axis": BATCH_AXIS,
    }


def monolithic_block(num_denoising_steps: int) -> dict[str, Any]:
    """The ``monolithic`` block: the unrolled-loop graph and its fixed NFE and batch."""
    return {
        "file": MONOLITHIC_FILE,
        "inputs": [IMAGES, LANG_TOKENS, LANG_MASKS, STATE, NOISE],
        "outputs": [ACTIONS],
        "num_denoising_steps": num_denoising_steps,
        "batch_size": MONOLITHIC_BATCH,
    }


def policy_block() -> dict[str, str]:
    """The ``policy`` block: the torch weights + config the torch engine and validate load."""
    return {"weights_file": POLICY_WEIGHTS_FILE, "config_file": POLICY_CONFIG_FILE}


def remediation(export_dir: Path | str, preset: str | None = None) -> str:
    """The one-line fix we append to every ExportError."""
    model = preset or "<tiny|small|pi0>"
    return f"re-run `reflex-ros export --model {model} --output {export_dir} --force`"


def _err(export_dir: Path, what: str, preset: str | None = None) -> ExportError:
    return ExportError(f"{what}; {remediation(export_dir, preset)}")


# --------------------------------------------------------------------------- model hash

_HASH_CACHE: dict[tuple[str, int, int, str], str] = {}


def _hash_safetensors(path: Path, digest: Any, export_dir: Path, preset: str | None) -> None:
    """Feed the tensors of a safetensors file into ``digest`` in canonical form.

    Tensors are taken in name order as (name, dtype, shape, raw bytes); the JSON header's own
    order and its ``__metadata__`` are ignored, because safetensors writes its header from a
    hash map: the same weights saved twice give different file bytes.
    """
    try:
        with path.open("rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(header_len))
            base = 8 + header_len
            for name in sorted(k for k in header if k != "__metadata__"):
                entry = header[name]
                start, end = (int(o) for o in entry["data_offsets"])
                digest.update(json.dumps([name, entry["dtype"], entry["shape"]]).encode())
                fh.seek(base + start)
                remaining = end - start
                while remaining > 0:
                    block = fh.read(min(remaining, 1 << 22))
                    if not block:
                        raise ValueError(f"tensor {name} extends past the end of the file")
                    digest.update(block)
                    remaining -= len(block)
    except (struct.error, ValueError, KeyError, TypeError, UnicodeDecodeError, OSError) as exc:
        raise _err(export_dir, f"{path} is not a readable safetensors file ({exc})", preset) from None


def model_hash(export_dir: Path | str) -> str:
    """A short, stable identity of the *policy* in an export directory.

    sha256 over the policy weights (every tensor's name, dtype, shape and bytes, in name
    order) and the canonical (sorted-key, compact) policy config JSON; the first 16 hex
    digits. The ONNX protobuf bytes are deliberately left out: they change with the exporter
    version, opset and constant folding while the policy (and so every calibration measured
    against it) stays the same, and the torch engine, which never reads the ONNX, must report
    the same hash for the same export. Retrained weights or a changed config give a new hash.
    Cached per process on (path, size, mtime) because pi0-size weights take seconds to hash.
    """
    export_dir = Path(export_dir)
    config = _read_config(export_dir)
    preset = config.get("preset")
    policy = config.get("policy") if isinstance(config.get("policy"), dict) else policy_block()
    weights = export_dir / policy.get("weights_file", POLICY_WEIGHTS_FILE)
    pconfig = export_dir / policy.get("config_file", POLICY_CONFIG_FILE)
    for path in (weights, pconfig):
        if not path.is_file():
            raise _err(export_dir, f"policy file missing: {path}", preset)
    try:
        canonical = json.dumps(json.loads(pconfig.read_text()), sort_keys=True, separators=(",", ":"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _err(export_dir, f"{pconfig} is not valid JSON ({exc})", preset) from None
    stat = weights.stat()
    key = (str(weights.resolve()), stat.st_size, stat.st_mtime_ns, canonical)
    if key not in _HASH_CACHE:
        digest = hashlib.sha256(b"reflex_ros/model_hash/v1\0")
        _hash_safetensors(weights, digest, export_dir, preset)
        digest.update(b"\0")
        digest.update(canonical.encode())
        _HASH_CACHE[key] = digest.hexdigest()[:16]
    return _HASH_CACHE[key]


# --------------------------------------------------------------------------- bundle


@dataclass(frozen=True)
class Bundle:
    """A validated export directory. Only :func:`load_bundle` builds one."""

    export_dir: Path
    config: dict[str, Any]
    variants: tuple[str, ...]  # the graphs present, e.g. ("decomposed", "monolithic")
    default_variant: str  # config["export_kind"]: what serving uses when not told
    model_hash: str

    @property
    def preset(self) -> str | None:
        return self.config.get("preset")

    @property
    def chunk_size(self) -> int:
        return int(self.config["chunk_size"])

    @property
    def action_dim(self) -> int:
        return int(self.config["action_dim"])

    @property
    def max_state_dim(self) -> int:
        return int(self.config["max_state_dim"])

    @property
    def num_cameras(self) -> int:
        return int(self.config["num_cameras"])

    @property
    def image_size(self) -> int:
        return int(self.config["image_size"])

    @property
    def max_lang_tokens(self) -> int:
        return int(self.config["max_lang_tokens"])

    @property
    def policy_weights(self) -> Path:
        return self.export_dir / self.config["policy"]["weights_file"]

    @property
    def policy_config_path(self) -> Path:
        return self.export_dir / self.config["policy"]["config_file"]

    def policy_config(self) -> dict[str, Any]:
        """The policy's own config dict (A's PolicyConfig.to_dict format)."""
        return json.loads(self.policy_config_path.read_text())

    def supported_nfe(self, variant: str) -> tuple[int, ...]:
        """Decomposed serves any NFE it was exported for; monolithic only its unrolled one."""
        if variant == MONOLITHIC:
            return (int(self.config[MONOLITHIC]["num_denoising_steps"]),)
        return tuple(int(n) for n in self.config["supported_nfe"])

    def default_nfe(self, variant: str) -> int:
        if variant == MONOLITHIC:
            return int(self.config[MONOLITHIC]["num_denoising_steps"])
        return int(self.config["num_denoising_steps"])

    def graph_paths(self, variant: str) -> dict[str, Path]:
        """role -> path: ``prefix``/``expert`` for decomposed, ``model`` for monolithic."""
        if variant not in self.variants:
            raise _err(
                self.export_dir,
                f"{self.export_dir / CONFIG_FILE} has no '{variant}' graph (present: {', '.join(self.variants)})",
                self.preset,
            )
        block = self.config[variant]
        if variant == DECOMPOSED:
            return {
                "prefix": self.export_dir / block["prefix_file"],
                "expert": self.export_dir / block["expert_file"],
            }
        return {"model": self.export_dir / block["file"]}

    def expected_signature(self, variant: str, role: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """(inputs, outputs) as (name, dtype, shape) the graph of ``role`` must have."""
        return expected_signatures(self.config)[(variant, role)]


def expected_signatures(config: dict[str, Any]) -> dict[tuple[str, str], tuple[list[TensorSpec], list[TensorSpec]]]:
    """Every graph's expected inputs/outputs, derived from reflex_config.json alone.

    Used at load time (a stale or hand-edited graph is caught before a session exists) and
    by the runtime to allocate IO-binding buffers of the right static shapes.
    """
    n, size = int(config["num_cameras"]), int(config["image_size"])
    lang, state = int(config["max_lang_tokens"]), int(config["max_state_dim"])
    chunk, adim = int(config["chunk_size"]), int(config["action_dim"])
    out: dict[tuple[str, str], tuple[list[TensorSpec], list[TensorSpec]]] = {}

    def obs_inputs(b: int | str) -> list[TensorSpec]:
        return [
            (IMAGES, "uint8", (b, n, size, size, 3)),
            (LANG_TOKENS, "int64", (b, lang)),
            (LANG_MASKS, "bool", (b, lang)),
            (STATE, "float32", (b, state)),
        ]

    if DECOMPOSED in config:
        d = config[DECOMPOSED]
        b = d.get("batch_axis", BATCH_AXIS)
        kv_shape: Shape = (b, int(d["num_kv_heads"]), int(d["prefix_len"]), int(d["head_dim"]))
        kv: list[TensorSpec] = []
        for k, v in zip(d["kv_k_names"], d["kv_v_names"], strict=True):
            kv += [(k, "float32", kv_shape), (v, "float32", kv_shape)]
        mask: TensorSpec = (PREFIX_MASK, "bool", (b, int(d["prefix_len"])))
        out[(DECOMPOSED, "prefix")] = (obs_inputs(b), [*kv, mask])
        out[(DECOMPOSED, "expert")] = (
            [(X_T, "float32", (b, chunk, adim)), (TIME, "float32", (b,)), *kv, mask],
            [(V_T, "float32", (b, chunk, adim))],
        )
    if MONOLITHIC in config:
        b1 = int(config[MONOLITHIC].get("batch_size", MONOLITHIC_BATCH))
        out[(MONOLITHIC, "model")] = (
            [*obs_inputs(b1), (NOISE, "float32", (b1, chunk, adim))],
            [(ACTIONS, "float32", (b1, chunk, adim))],
        )
    return out


def _read_config(export_dir: Path) -> dict[str, Any]:
    if not export_dir.exists():
        raise _err(export_dir, f"export directory {export_dir} does not exist")
    if not export_dir.is_dir():
        raise _err(export_dir, f"export path {export_dir} is not a directory")
    path = export_dir / CONFIG_FILE
    if not path.is_file():
        raise _err(export_dir, f"{path} is missing (expected an export directory written by `reflex-ros export`)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _err(export_dir, f"{path} is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise _err(export_dir, f"{path} must hold a JSON object, got {type(config).__name__}")
    return config


def _check_keys(export_dir: Path, config: dict[str, Any]) -> tuple[str, ...]:
    path = export_dir / CONFIG_FILE
    preset = config.get("preset")
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise _err(export_dir, f"{path} lacks required key(s) {', '.join(missing)}", preset)
    for key in ("num_denoising_steps", "chunk_size", "action_dim", "max_state_dim", "num_cameras",
                "image_size", "max_lang_tokens", "opset"):
        value = config[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _err(export_dir, f"{path} key '{key}' must be a positive integer, got {value!r}", preset)
    variants = tuple(v for v in VARIANTS if v in config)
    if not variants:
        raise _err(export_dir, f"{path} has neither a 'decomposed' nor a 'monolithic' block", preset)
    if config["export_kind"] not in variants:
        raise _err(
            export_dir,
            f"{path} key 'export_kind' is {config['export_kind']!r}, expected one of {list(variants)}",
            preset,
        )
    nfe = config["supported_nfe"]
    if not isinstance(nfe, list) or not nfe or any(n not in NFE_CHOICES for n in nfe):
        raise _err(export_dir, f"{path} key 'supported_nfe' must be a non-empty subset of {list(NFE_CHOICES)}, got {nfe!r}", preset)
    block_keys = {
        DECOMPOSED: ("prefix_file", "expert_file", "kv_k_names", "kv_v_names", "num_layers", "num_kv_heads",
                     "head_dim", "prefix_len"),
        MONOLITHIC: ("file", "num_denoising_steps"),
    }
    for variant in variants:
        block = config[variant]
        if not isinstance(block, dict):
            raise _err(export_dir, f"{path} block '{variant}' must be an object", preset)
        lacking = [k for k in block_keys[variant] if k not in block]
        if lacking:
            raise _err(export_dir, f"{path} block '{variant}' lacks key(s) {', '.join(lacking)}", preset)
    if DECOMPOSED in variants:
        d = config[DECOMPOSED]
        if len(d["kv_k_names"]) != d["num_layers"] or len(d["kv_v_names"]) != d["num_layers"]:
            raise _err(export_dir, f"{path} block 'decomposed' names {len(d['kv_k_names'])} K tensors, expected num_layers={d['num_layers']}", preset)
    policy = config["policy"]
    if not isinstance(policy, dict) or "weights_file" not in policy or "config_file" not in policy:
        raise _err(export_dir, f"{path} block 'policy' must name 'weights_file' and 'config_file'", preset)
    return variants


def _dims(value_info) -> tuple[int | str | None, ...]:
    dims: list[int | str | None] = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(str(d.dim_param))
        else:
            dims.append(None)
    return tuple(dims)


def _check_external_data(export_dir: Path, path: Path, model: Any, preset: str | None) -> None:
    """Graphs above 2 GB keep their weights in ``<graph>.onnx.data``; it must be there and
    long enough for every tensor that points into it (a cut-short copy is the usual failure)."""
    import onnx

    sizes: dict[Path, int] = {}
    for init in model.graph.initializer:
        if init.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in init.external_data}
        data = path.parent / info.get("location", "")
        if data not in sizes:
            if not data.is_file():
                raise _err(export_dir, f"{path} keeps its weights in {data}, which is missing", preset)
            sizes[data] = data.stat().st_size
        end = int(info.get("offset", 0)) + int(info.get("length", 0))
        if end > sizes[data]:
            raise _err(export_dir, f"{data} is truncated: tensor {init.name} needs {end} bytes, file has {sizes[data]}", preset)


def check_graph(export_dir: Path, path: Path, inputs: list[TensorSpec], outputs: list[TensorSpec],
                preset: str | None = None) -> None:
    """Check one ONNX file against its expected signature without loading its weights.

    ``onnx.load(load_external_data=False)`` reads only the protobuf, so this costs
    milliseconds even for pi0, and a truncated or garbage file becomes an ExportError here
    instead of an onnxruntime stack trace at session creation.
    """
    import onnx  # not torch; deferred so `import bundle` stays cheap

    if not path.is_file():
        raise _err(export_dir, f"graph file missing: {path} (named in {CONFIG_FILE})", preset)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends: the file is corrupt
        raise _err(export_dir, f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc})", preset) from None
    if not model.graph.node or not model.graph.output:
        raise _err(export_dir, f"{path} is not a readable ONNX model (empty graph)", preset)
    _check_external_data(export_dir, path, model, preset)
    init_names = {i.name for i in model.graph.initializer}
    actual_in = {vi.name: vi for vi in model.graph.input if vi.name not in init_names}
    actual_out = {vi.name: vi for vi in model.graph.output}
    for kind, expected, actual in (("input", inputs, actual_in), ("output", outputs, actual_out)):
        expected_names = [name for name, _, _ in expected]
        if sorted(expected_names) != sorted(actual):
            raise _err(
                export_dir,
                f"{path} {kind}s are {sorted(actual)}, {CONFIG_FILE} expects {sorted(expected_names)}",
                preset,
            )
        for name, dtype, shape in expected:
            vi = actual[name]
            elem = vi.type.tensor_type.elem_type
            if elem != ONNX_ELEM_TYPES[dtype]:
                got = onnx.helper.tensor_dtype_to_np_dtype(elem) if elem else "unknown"
                raise _err(export_dir, f"{path} {kind} '{name}' has dtype {got}, expected {dtype}", preset)
            dims = _dims(vi)
            if len(dims) != len(shape):
                raise _err(export_dir, f"{path} {kind} '{name}' has rank {len(dims)} {dims}, expected shape {shape}", preset)
            for axis, (got_dim, want) in enumerate(zip(dims, shape, strict=True)):
                if isinstance(want, str):  # dynamic axis: any symbolic or concrete size is fine
                    continue
                if isinstance(got_dim, int) and got_dim != want:
                    raise _err(
                        export_dir,
                        f"{path} {kind} '{name}' dim {axis} is {got_dim}, {CONFIG_FILE} expects {want} (shape {shape})",
                        preset,
                    )
                if not isinstance(got_dim, int):
                    raise _err(
                        export_dir,
                        f"{path} {kind} '{name}' dim {axis} is dynamic ({got_dim}), {CONFIG_FILE} expects static {want}",
                        preset,
                    )


# Dimensions stated both in reflex_config.json (for the graphs) and in the policy's own config
# (for preprocessing and the torch engine); they must agree or the two engines would differ.
SHARED_DIMS: tuple[str, ...] = ("chunk_size", "action_dim", "max_state_dim", "num_cameras", "image_size",
                                "max_lang_tokens")


def _check_policy_config(export_dir: Path, config: dict[str, Any]) -> None:
    path = export_dir / config["policy"]["config_file"]
    preset = config.get("preset")
    try:
        policy = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _err(export_dir, f"{path} is not valid JSON ({exc})", preset) from None
    if not isinstance(policy, dict):
        raise _err(export_dir, f"{path} must hold a JSON object", preset)
    for key in SHARED_DIMS:
        if policy.get(key) != config[key]:
            raise _err(
                export_dir,
                f"{path} has {key}={policy.get(key)!r} but {CONFIG_FILE} has {key}={config[key]!r} "
                "(files from different exports?)",
                preset,
            )


def load_bundle(export_dir: Path | str, *, check_graphs: bool = True) -> Bundle:
    """Open and validate an export directory; every failure is an ExportError with a fix.

    Checks, in order: the directory exists; reflex_config.json is valid JSON with the
    required keys; every referenced file exists; the policy config agrees with it on the
    shared dimensions; each ONNX graph's input/output names, dtypes and static dims match the
    config (``check_graphs``). Then it hashes the policy (:func:`model_hash`).
    """
    export_dir = Path(export_dir)
    config = _read_config(export_dir)
    variants = _check_keys(export_dir, config)
    preset = config.get("preset")
    for name in (config["policy"]["weights_file"], config["policy"]["config_file"]):
        if not (export_dir / name).is_file():
            raise _err(export_dir, f"policy file missing: {export_dir / name} (named in {CONFIG_FILE})", preset)
    _check_policy_config(export_dir, config)
    signatures = expected_signatures(config)
    bundle = Bundle(
        export_dir=export_dir,
        config=config,
        variants=variants,
        default_variant=config["export_kind"],
        model_hash=model_hash(export_dir),
    )
    for variant in variants:
        for role, path in bundle.graph_paths(variant).items():
            if not path.is_file():
                raise _err(export_dir, f"graph file missing: {path} (named in {CONFIG_FILE})", preset)
            if check_graphs:
                ins, outs = signatures[(variant, role)]
                check_graph(export_dir, path, ins, outs, preset)
    return bundle


def write_config(export_dir: Path | str, config: dict[str, Any]) -> Path:
    """Write reflex_config.json (sorted, indented, trailing newline: diff-friendly)."""
    path = Path(export_dir) / CONFIG_FILE
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path
