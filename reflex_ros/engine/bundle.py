"""The export directory format: what ``reflex-ros export`` writes and every runtime reads.

An export directory is self-describing. ``reflex_config.json`` (Reflex's keys where they
apply: ``model_type``, ``export_kind``, ``decomposed``/``monolithic`` blocks, ``past_k_i`` /
``past_v_i`` / ``prefix_pad_masks`` / ``x_t`` / ``t`` / ``v_t``) names every file and every
graph input and output with its dtype and static shape, so a runtime never guesses and never
needs the family's code to know what to feed. It is read into a typed :class:`ExportConfig`.
:func:`load_bundle` checks the directory against that description *before* any session is
created, because an onnxruntime error about a missing input deep inside session creation
tells a user nothing about which file is stale or how to fix it.

This module must not import torch: the ONNX serving path loads bundles on machines that have
only onnxruntime.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reflex_ros.engine.types import MAX_NFE, ExportError
from reflex_ros.vocab import DECOMPOSED, LAYOUTS, MONOLITHIC

CONFIG_FILE = "reflex_config.json"
PREFIX_FILE = "vlm_prefix.onnx"
EXPERT_FILE = "expert_denoise.onnx"
MONOLITHIC_FILE = "model.onnx"
POLICY_WEIGHTS_FILE = "policy.safetensors"
POLICY_CONFIG_FILE = "policy_config.json"
#: bump when the layout changes in a way older readers would misread
FORMAT_VERSION = 2

BATCH_AXIS = "batch"  # the dynamic axis name of the decomposed graphs (batch 2 = CFG)
MONOLITHIC_BATCH = 1  # the unrolled graph serves one observation, no CFG

# Graph tensor names shared by every family (Reflex's names).
PREFIX_MASK = "prefix_pad_masks"
X_T = "x_t"
TIME = "t"
V_T = "v_t"
NOISE = "noise"
ACTIONS = "actions"

# ONNX TensorProto element types we use, by the numpy dtype name the runtime feeds.
ONNX_ELEM_TYPES: dict[str, int] = {"float32": 1, "uint8": 2, "int64": 7, "bool": 9, "float16": 10}

Shape = tuple[int | str, ...]  # a str dim is symbolic (dynamic)
TensorSpec = tuple[str, str, Shape]  # (name, numpy dtype name, shape)


def kv_names(num_layers: int) -> tuple[list[str], list[str]]:
    """Per-layer KV tensor names, ``past_k_i`` / ``past_v_i`` as in Reflex exports."""
    return [f"past_k_{i}" for i in range(num_layers)], [f"past_v_{i}" for i in range(num_layers)]


# --------------------------------------------------------------------------- typed config


def _spec_list(specs: list[TensorSpec] | tuple[TensorSpec, ...]) -> list[list[Any]]:
    return [[name, dtype, list(shape)] for name, dtype, shape in specs]


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX file and its exact signature."""

    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def input_names(self) -> list[str]:
        return [name for name, _, _ in self.inputs]

    def output_names(self) -> list[str]:
        return [name for name, _, _ in self.outputs]


@dataclass(frozen=True)
class ExportConfig:
    """``reflex_config.json``, typed. Built by the exporter, parsed by :func:`parse_config`.

    ``graphs[layout][role]``: ``decomposed`` has roles ``prefix`` and ``expert``, ``monolithic``
    has ``model``. The expert graph's inputs are x_t, t, the prefix's KV outputs and mask, and
    ``expert_inputs`` (observation arrays each step needs, e.g. pi0's state).
    """

    model_type: str
    default_layout: str
    layouts: tuple[str, ...]
    num_denoising_steps: int
    supported_nfe: tuple[int, ...]
    chunk_size: int
    action_dim: int
    action_width: int
    max_state_dim: int
    state_dim: int
    camera_names: tuple[str, ...]
    optional_cameras: tuple[str, ...]
    image_size: int
    max_lang_tokens: int
    supports_cfg: bool
    graphs: dict[str, dict[str, GraphSpec]]
    expert_inputs: tuple[str, ...]
    opset: int
    weights_file: str = POLICY_WEIGHTS_FILE
    policy_config_file: str = POLICY_CONFIG_FILE
    assets: tuple[str, ...] = ()
    preset: str | None = None
    source: str = ""
    export_command: str = ""
    monolithic_nfe: int | None = None
    #: the graphs' compute precision: fp32, or fp16 (weights and math; inputs/outputs stay fp32)
    precision: str = "fp32"
    metadata: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] | None = None

    @property
    def num_cameras(self) -> int:
        return len(self.camera_names)

    @property
    def num_layers(self) -> int:
        return len([n for n, _, _ in self.graphs[DECOMPOSED]["prefix"].outputs if n.startswith("past_k_")]) \
            if DECOMPOSED in self.graphs else 0

    def supported_nfe_for(self, layout: str) -> tuple[int, ...]:
        """Decomposed serves any NFE it was exported for; monolithic only its unrolled one."""
        if layout == MONOLITHIC:
            return (int(self.monolithic_nfe or self.num_denoising_steps),)
        return self.supported_nfe

    def default_nfe_for(self, layout: str) -> int:
        if layout == MONOLITHIC:
            return int(self.monolithic_nfe or self.num_denoising_steps)
        return self.num_denoising_steps

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (Reflex's keys, plus every tensor's dtype and shape)."""
        doc: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "model_type": self.model_type,
            "preset": self.preset,
            "source": self.source,
            "export_command": self.export_command,
            "export_kind": self.default_layout,
            "export_kinds": list(self.layouts),
            "num_denoising_steps": self.num_denoising_steps,
            "supported_nfe": list(self.supported_nfe),
            "chunk_size": self.chunk_size,
            "action_dim": self.action_dim,
            "action_width": self.action_width,
            "max_state_dim": self.max_state_dim,
            "state_dim": self.state_dim,
            "camera_names": list(self.camera_names),
            "optional_cameras": list(self.optional_cameras),
            "num_cameras": self.num_cameras,
            "image_size": self.image_size,
            "max_lang_tokens": self.max_lang_tokens,
            "supports_cfg": self.supports_cfg,
            "precision": self.precision,
            "expert_inputs": list(self.expert_inputs),
            "opset": self.opset,
            "policy": {"weights_file": self.weights_file, "config_file": self.policy_config_file,
                       "assets": list(self.assets)},
            "parity": self.parity,
            **self.metadata,
        }
        if DECOMPOSED in self.graphs:
            prefix, expert = self.graphs[DECOMPOSED]["prefix"], self.graphs[DECOMPOSED]["expert"]
            k_names = [n for n in prefix.output_names() if n.startswith("past_k_")]
            v_names = [n for n in prefix.output_names() if n.startswith("past_v_")]
            doc[DECOMPOSED] = {
                "prefix_file": prefix.file, "expert_file": expert.file,
                "prefix_inputs": _spec_list(prefix.inputs), "prefix_outputs": _spec_list(prefix.outputs),
                "expert_inputs": _spec_list(expert.inputs), "expert_outputs": _spec_list(expert.outputs),
                "kv_k_names": k_names, "kv_v_names": v_names, "num_layers": len(k_names),
                "batch_axis": BATCH_AXIS,
            }
        if MONOLITHIC in self.graphs:
            model = self.graphs[MONOLITHIC]["model"]
            doc[MONOLITHIC] = {
                "file": model.file, "inputs": _spec_list(model.inputs), "outputs": _spec_list(model.outputs),
                "num_denoising_steps": self.default_nfe_for(MONOLITHIC), "batch_size": MONOLITHIC_BATCH,
            }
        return doc

    def replace(self, **changes: Any) -> ExportConfig:
        from dataclasses import replace

        return replace(self, **changes)


#: metadata keys kept verbatim (informative, never interpreted)
METADATA_KEYS: tuple[str, ...] = ("exporter", "torch_version", "reflex_ros_version", "flow", "image_format")


class _Reader:
    """Typed access to the JSON document; every failure names the key and the file."""

    def __init__(self, doc: dict[str, Any], path: Path, err) -> None:
        self.doc, self.path, self.err = doc, path, err

    def get(self, key: str, block: dict[str, Any] | None = None, where: str = "") -> Any:
        src = self.doc if block is None else block
        if key not in src:
            raise self.err(f"{self.path} {where}lacks required key '{key}'")
        return src[key]

    def pos_int(self, key: str, block: dict[str, Any] | None = None, where: str = "") -> int:
        value = self.get(key, block, where)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise self.err(f"{self.path} {where}key '{key}' must be a positive integer, got {value!r}")
        return value

    def str_list(self, key: str, block: dict[str, Any] | None = None, where: str = "") -> tuple[str, ...]:
        value = self.get(key, block, where)
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.err(f"{self.path} {where}key '{key}' must be a list of names, got {value!r}")
        return tuple(value)

    def specs(self, key: str, block: dict[str, Any], where: str) -> tuple[TensorSpec, ...]:
        value = self.get(key, block, where)
        out: list[TensorSpec] = []
        if not isinstance(value, list):
            raise self.err(f"{self.path} {where}key '{key}' must be a list of [name, dtype, shape]")
        for item in value:
            ok = (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
                  and item[1] in ONNX_ELEM_TYPES and isinstance(item[2], list)
                  and all((isinstance(d, int) and not isinstance(d, bool) and d >= 0) or isinstance(d, str)
                          for d in item[2]))
            if not ok:
                raise self.err(f"{self.path} {where}key '{key}' has a malformed tensor entry {item!r} "
                               f"(expected [name, dtype in {sorted(ONNX_ELEM_TYPES)}, shape])")
            out.append((item[0], item[1], tuple(item[2])))
        return tuple(out)


def parse_config(doc: Any, path: Path, err=None) -> ExportConfig:
    """Validate the JSON document and build the :class:`ExportConfig`; an ExportError names
    the offending key otherwise."""
    err = err or (lambda msg: ExportError(msg))
    if not isinstance(doc, dict):
        raise err(f"{path} must hold a JSON object, got {type(doc).__name__}")
    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        raise err(f"{path} has format_version {version!r}; this reflex_ros reads version {FORMAT_VERSION} "
                  "(the export was written by another reflex_ros version)")
    r = _Reader(doc, path, err)
    layouts = tuple(v for v in LAYOUTS if v in doc)
    if not layouts:
        raise err(f"{path} has neither a '{DECOMPOSED}' nor a '{MONOLITHIC}' block")
    default = r.get("export_kind")
    if default not in layouts:
        raise err(f"{path} key 'export_kind' is {default!r}, expected one of {list(layouts)}")
    nfe = r.get("supported_nfe")
    if not isinstance(nfe, list) or not nfe or any(
            not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_NFE for n in nfe):
        raise err(f"{path} key 'supported_nfe' must be a non-empty list of integers 1..{MAX_NFE}, got {nfe!r}")
    graphs: dict[str, dict[str, GraphSpec]] = {}
    mono_nfe = None
    for layout in layouts:
        block = doc[layout]
        where = f"block '{layout}' "
        if not isinstance(block, dict):
            raise err(f"{path} block '{layout}' must be an object")
        if layout == DECOMPOSED:
            graphs[layout] = {
                "prefix": GraphSpec(r.get("prefix_file", block, where), r.specs("prefix_inputs", block, where),
                                    r.specs("prefix_outputs", block, where)),
                "expert": GraphSpec(r.get("expert_file", block, where), r.specs("expert_inputs", block, where),
                                    r.specs("expert_outputs", block, where)),
            }
        else:
            graphs[layout] = {"model": GraphSpec(r.get("file", block, where), r.specs("inputs", block, where),
                                                 r.specs("outputs", block, where))}
            mono_nfe = r.pos_int("num_denoising_steps", block, where)
    policy = r.get("policy")
    if not isinstance(policy, dict) or "weights_file" not in policy or "config_file" not in policy:
        raise err(f"{path} block 'policy' must name 'weights_file' and 'config_file'")
    assets = policy.get("assets", [])
    if not isinstance(assets, list) or not all(isinstance(a, str) for a in assets):
        raise err(f"{path} block 'policy' key 'assets' must be a list of file names")
    camera_names = r.str_list("camera_names")
    if len(set(camera_names)) != len(camera_names):
        raise err(f"{path} key 'camera_names' has duplicates: {list(camera_names)}")
    return ExportConfig(
        model_type=str(r.get("model_type")),
        default_layout=default,
        layouts=layouts,
        num_denoising_steps=r.pos_int("num_denoising_steps"),
        supported_nfe=tuple(int(n) for n in nfe),
        chunk_size=r.pos_int("chunk_size"),
        action_dim=r.pos_int("action_dim"),
        action_width=r.pos_int("action_width"),
        max_state_dim=r.pos_int("max_state_dim"),
        state_dim=int(doc.get("state_dim") or 0),
        camera_names=camera_names,
        optional_cameras=tuple(doc.get("optional_cameras", ())),
        image_size=r.pos_int("image_size"),
        max_lang_tokens=r.pos_int("max_lang_tokens"),
        supports_cfg=bool(r.get("supports_cfg")),
        graphs=graphs,
        expert_inputs=tuple(r.get("expert_inputs")),
        opset=r.pos_int("opset"),
        weights_file=str(policy["weights_file"]),
        policy_config_file=str(policy["config_file"]),
        assets=tuple(assets),
        preset=doc.get("preset"),
        source=str(doc.get("source", "")),
        export_command=str(doc.get("export_command", "")),
        monolithic_nfe=mono_nfe,
        precision=str(doc.get("precision", "fp32")),
        metadata={k: doc[k] for k in METADATA_KEYS if k in doc},
        parity=doc.get("parity"),
    )


# --------------------------------------------------------------------------- remediation


def looks_like_lerobot_checkpoint(path: Path) -> bool:
    """A directory holding LeRobot's ``config.json`` + ``model.safetensors`` (not an export)."""
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file() \
        and not (path / CONFIG_FILE).is_file()


def remediation(export_dir: Path | str, export_command: str | None = None) -> str:
    """The one-line fix appended to every ExportError about ``export_dir``.

    Re-exporting *onto* the directory (``--force``) is suggested only when the directory is an
    export written by reflex_ros; a directory holding something else (a LeRobot checkpoint,
    anything) is never a target for ``--force``."""
    path = Path(export_dir)
    if looks_like_lerobot_checkpoint(path):
        return (f"{path} is a LeRobot checkpoint, not an export: run `reflex-ros export {path} "
                f"--output <new export dir>` and point at that directory")
    if (path / CONFIG_FILE).is_file():
        cmd = export_command or "reflex-ros export <checkpoint or --model PRESET>"
        return f"re-create it: `{cmd} --output {path} --force`"
    return "point at a directory written by `reflex-ros export` (it holds reflex_config.json)"


# --------------------------------------------------------------------------- model hash

_HASH_CACHE: dict[tuple[str, int, int, str], str] = {}


def _hash_safetensors(path: Path, digest: Any, err) -> None:
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
        raise err(f"{path} is not a readable safetensors file ({exc})") from None


def hash_policy(weights: Path, policy_config: Path, err=None) -> str:
    """sha256 over the policy weights (every tensor's name, dtype, shape and bytes, in name
    order) and the canonical (sorted-key, compact) policy config JSON; 16 hex digits.

    Cached per process on (path, size, mtime, config) because pi0-size weights take seconds."""
    err = err or (lambda msg: ExportError(msg))
    for path in (weights, policy_config):
        if not path.is_file():
            raise err(f"policy file missing: {path}")
    try:
        canonical = json.dumps(json.loads(policy_config.read_text()), sort_keys=True, separators=(",", ":"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise err(f"{policy_config} is not valid JSON ({exc})") from None
    stat = weights.stat()
    key = (str(weights.resolve()), stat.st_size, stat.st_mtime_ns, canonical)
    if key not in _HASH_CACHE:
        digest = hashlib.sha256(b"reflex_ros/model_hash/v1\0")
        _hash_safetensors(weights, digest, err)
        digest.update(b"\0")
        digest.update(canonical.encode())
        _HASH_CACHE[key] = digest.hexdigest()[:16]
    return _HASH_CACHE[key]


def model_hash(export_dir: Path | str) -> str:
    """A short, stable identity of the *policy* in an export directory.

    The weights and the policy config (which holds the normalization statistics and the
    tokenizer's identity), never the ONNX protobuf bytes: those change with the exporter
    version, opset and constant folding while the policy (and so every calibration measured
    against it) stays the same, and the torch engine, which never reads the ONNX, must report
    the same hash for the same export. Retrained weights or a changed config give a new hash.
    """
    export_dir = Path(export_dir)
    doc = _read_json(export_dir)
    policy = doc.get("policy") if isinstance(doc.get("policy"), dict) else {}
    return hash_policy(export_dir / policy.get("weights_file", POLICY_WEIGHTS_FILE),
                       export_dir / policy.get("config_file", POLICY_CONFIG_FILE),
                       lambda msg: _err(export_dir, msg, doc.get("export_command")))


# --------------------------------------------------------------------------- bundle


def _err(export_dir: Path, what: str, export_command: str | None = None) -> ExportError:
    return ExportError(f"{what}; {remediation(export_dir, export_command)}")


@dataclass(frozen=True)
class Bundle:
    """A validated export directory. Only :func:`load_bundle` builds one."""

    export_dir: Path
    config: ExportConfig
    model_hash: str

    @property
    def layouts(self) -> tuple[str, ...]:
        return self.config.layouts

    @property
    def default_layout(self) -> str:
        return self.config.default_layout

    @property
    def model_type(self) -> str:
        return self.config.model_type

    @property
    def policy_weights(self) -> Path:
        return self.export_dir / self.config.weights_file

    @property
    def policy_config_path(self) -> Path:
        return self.export_dir / self.config.policy_config_file

    def policy_config(self) -> dict[str, Any]:
        """The family's own config (``policy_config.json``)."""
        return json.loads(self.policy_config_path.read_text())

    def error(self, what: str) -> ExportError:
        """An ExportError about this export, with the remediation hint."""
        return _err(self.export_dir, what, self.config.export_command)

    def family(self):
        """The family that serves this export (registry lookup on model_type)."""
        from reflex_ros.policies import get_family

        try:
            return get_family(self.config.model_type)
        except ExportError as exc:
            raise self.error(str(exc)) from None

    def processor(self):
        """The family's numpy processor for this export (torch-free).

        Its dimensions must agree with reflex_config.json's: the graphs were traced from the
        one and the processor feeds them from the other (files from different exports would
        otherwise fail deep inside onnxruntime, or worse, not at all)."""
        try:
            proc = self.family().processor(self.export_dir, self.policy_config())
        except ExportError:
            raise
        except Exception as exc:
            raise self.error(f"{self.policy_config_path} does not describe a {self.config.model_type} policy "
                             f"({type(exc).__name__}: {exc})") from None
        c = self.config
        for key, want in (("chunk_size", c.chunk_size), ("action_dim", c.action_dim), ("state_dim", c.state_dim),
                          ("action_width", c.action_width), ("max_state_dim", c.max_state_dim),
                          ("camera_names", c.camera_names), ("image_size", c.image_size),
                          ("max_lang_tokens", c.max_lang_tokens)):
            got = getattr(proc, key)
            got = got or 0 if key == "state_dim" else got
            if (tuple(got) if isinstance(got, (list, tuple)) else got) != want:
                raise self.error(f"{self.policy_config_path} gives {key}={got!r} but {CONFIG_FILE} has "
                                 f"{key}={want!r} (files from different exports?)")
        return proc

    def graph_paths(self, layout: str) -> dict[str, Path]:
        """role -> path: ``prefix``/``expert`` for decomposed, ``model`` for monolithic."""
        if layout not in self.config.layouts:
            raise self.error(f"{self.export_dir / CONFIG_FILE} has no '{layout}' graph "
                             f"(present: {', '.join(self.config.layouts)})")
        return {role: self.export_dir / g.file for role, g in self.config.graphs[layout].items()}

    def signature(self, layout: str, role: str) -> GraphSpec:
        return self.config.graphs[layout][role]


def _read_json(export_dir: Path) -> dict[str, Any]:
    if not export_dir.exists():
        raise _err(export_dir, f"export directory {export_dir} does not exist")
    if not export_dir.is_dir():
        raise _err(export_dir, f"export path {export_dir} is not a directory")
    path = export_dir / CONFIG_FILE
    if not path.is_file():
        raise _err(export_dir, f"{path} is missing (expected an export directory written by `reflex-ros export`)")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _err(export_dir, f"{path} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise _err(export_dir, f"{path} must hold a JSON object, got {type(doc).__name__}")
    return doc


def read_config(export_dir: Path | str) -> ExportConfig:
    """The typed config of an export directory (no file checks beyond the JSON)."""
    export_dir = Path(export_dir)
    doc = _read_json(export_dir)
    return parse_config(doc, export_dir / CONFIG_FILE, lambda m: _err(export_dir, m, doc.get("export_command")))


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


def _check_external_data(path: Path, model: Any, err) -> None:
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
                raise err(f"{path} keeps its weights in {data}, which is missing")
            sizes[data] = data.stat().st_size
        end = int(info.get("offset", 0)) + int(info.get("length", 0))
        if end > sizes[data]:
            raise err(f"{data} is truncated: tensor {init.name} needs {end} bytes, file has {sizes[data]}")


def check_graph(path: Path, spec: GraphSpec, err) -> None:
    """Check one ONNX file against its expected signature without loading its weights.

    ``onnx.load(load_external_data=False)`` reads only the protobuf, so this costs
    milliseconds even for pi0, and a truncated or garbage file becomes an ExportError here
    instead of an onnxruntime stack trace at session creation.
    """
    import onnx  # not torch; deferred so `import bundle` stays cheap

    if not path.is_file():
        raise err(f"graph file missing: {path} (named in {CONFIG_FILE})")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends: the file is corrupt
        raise err(f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    if not model.graph.node or not model.graph.output:
        raise err(f"{path} is not a readable ONNX model (empty graph)")
    _check_external_data(path, model, err)
    init_names = {i.name for i in model.graph.initializer}
    actual_in = {vi.name: vi for vi in model.graph.input if vi.name not in init_names}
    actual_out = {vi.name: vi for vi in model.graph.output}
    for kind, expected, actual in (("input", spec.inputs, actual_in), ("output", spec.outputs, actual_out)):
        expected_names = [name for name, _, _ in expected]
        if sorted(expected_names) != sorted(actual):
            raise err(f"{path} {kind}s are {sorted(actual)}, {CONFIG_FILE} expects {sorted(expected_names)}")
        for name, dtype, shape in expected:
            vi = actual[name]
            elem = vi.type.tensor_type.elem_type
            if elem != ONNX_ELEM_TYPES[dtype]:
                got = onnx.helper.tensor_dtype_to_np_dtype(elem) if elem else "unknown"
                raise err(f"{path} {kind} '{name}' has dtype {got}, expected {dtype}")
            dims = _dims(vi)
            if len(dims) != len(shape):
                raise err(f"{path} {kind} '{name}' has rank {len(dims)} {dims}, expected shape {shape}")
            for axis, (got_dim, want) in enumerate(zip(dims, shape, strict=True)):
                if isinstance(want, str):  # dynamic axis: any symbolic or concrete size is fine
                    continue
                if isinstance(got_dim, int) and got_dim != want:
                    raise err(f"{path} {kind} '{name}' dim {axis} is {got_dim}, {CONFIG_FILE} expects {want} "
                              f"(shape {shape})")
                if not isinstance(got_dim, int):
                    raise err(f"{path} {kind} '{name}' dim {axis} is dynamic ({got_dim}), {CONFIG_FILE} "
                              f"expects static {want}")


def load_bundle(export_dir: Path | str, *, check_graphs: bool = True) -> Bundle:
    """Open and validate an export directory; every failure is an ExportError with a fix.

    Checks, in order: the directory exists; reflex_config.json parses into an
    :class:`ExportConfig`; every referenced file exists; each ONNX graph's input/output names,
    dtypes and static dims match the config (``check_graphs``). Then it hashes the policy.
    """
    export_dir = Path(export_dir)
    config = read_config(export_dir)

    def err(what: str) -> ExportError:
        return _err(export_dir, what, config.export_command)

    for name in (config.weights_file, config.policy_config_file, *config.assets):
        if not (export_dir / name).exists():
            raise err(f"policy file missing: {export_dir / name} (named in {CONFIG_FILE})")
    bundle = Bundle(export_dir=export_dir, config=config,
                    model_hash=hash_policy(export_dir / config.weights_file,
                                           export_dir / config.policy_config_file, err))
    for layout in config.layouts:
        for spec in config.graphs[layout].values():
            path = export_dir / spec.file
            if not path.is_file():
                raise err(f"graph file missing: {path} (named in {CONFIG_FILE})")
            if check_graphs:
                check_graph(path, spec, err)
    return bundle


def write_config(export_dir: Path | str, config: ExportConfig) -> Path:
    """Write reflex_config.json (sorted, indented, trailing newline: diff-friendly)."""
    path = Path(export_dir) / CONFIG_FILE
    path.write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
    return path
