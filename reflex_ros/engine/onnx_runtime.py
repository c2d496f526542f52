"""ONNX Runtime engine: serve an export directory with numpy in, numpy out, and no torch.

Decomposed serving (the default) runs ``vlm_prefix.onnx`` once per chunk and then
``expert_denoise.onnx`` NFE times against the same prefix KV, stepping x with the numpy
Euler loop below (:func:`euler_denoise`, also what the export parity check runs, so the
served loop is exactly the verified one). CFG runs cond and uncond as one batch-2 call.

Every graph runs through IO binding on static per-batch buffers. On CPU that just avoids
re-allocating outputs; on CUDA it is what ``enable_cuda_graph`` requires (fixed device
addresses), and the prefix's KV output buffers are bound directly as the expert's inputs, so
the KV never leaves the device between the prefix and the NFE expert calls.

This module must not import torch (a test checks ``sys.modules``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reflex_ros.engine.bundle import (
    ACTIONS,
    DECOMPOSED,
    IMAGES,
    LANG_MASKS,
    LANG_TOKENS,
    MONOLITHIC,
    NOISE,
    STATE,
    TIME,
    V_T,
    X_T,
    Bundle,
    TensorSpec,
    load_bundle,
    remediation,
)
from reflex_ros.engine.types import (
    ChunkResult,
    EngineInfo,
    ExportError,
    Observation,
    ProviderUnavailableError,
    ReflexError,
)

TRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
PROVIDER_LADDER: tuple[str, ...] = (TRT, CUDA, CPU)  # tried in this order when provider=None
PROVIDER_ALIASES: dict[str, str] = {"tensorrt": TRT, "trt": TRT, "cuda": CUDA, "cpu": CPU}
ONNX_DTYPES: tuple[str, ...] = ("fp32", "fp16")  # fp16 only through TensorRT's builder flag

_NP_DTYPES = {"float32": np.float32, "uint8": np.uint8, "int64": np.int64, "bool": np.bool_}


# --------------------------------------------------------------------------- providers (pure)


def available_providers() -> list[str]:
    """Execution providers this onnxruntime build offers (import deferred: cheap module)."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def resolve_provider(requested: str | None, available: Sequence[str]) -> str:
    """Pick the execution provider: the ladder's first available one, or exactly ``requested``.

    A requested provider that is not available is an error naming the available ones, never
    a silent fall back to CPU: a robot expecting GPU latency must not get CPU latency quietly.
    """
    if requested is None:
        for name in PROVIDER_LADDER:
            if name in available:
                return name
        raise ProviderUnavailableError(
            f"no usable onnxruntime execution provider: need one of {', '.join(PROVIDER_LADDER)}, "
            f"available: {', '.join(available) or 'none'}"
        )
    name = PROVIDER_ALIASES.get(requested.lower(), requested)
    if name not in PROVIDER_LADDER:
        raise ProviderUnavailableError(
            f"unknown execution provider {requested!r}: expected one of "
            f"{', '.join(PROVIDER_LADDER)} (or {', '.join(PROVIDER_ALIASES)})"
        )
    if name not in available:
        hint = " (install onnxruntime-gpu with matching CUDA/TensorRT libraries)" if name != CPU else ""
        raise ProviderUnavailableError(
            f"execution provider {name} is not available in this onnxruntime; "
            f"available: {', '.join(available) or 'none'}{hint}"
        )
    return name


def provider_device(provider: str) -> str:
    """Where the provider's tensors live, as onnxruntime's OrtValue device name."""
    return "cpu" if provider == CPU else "cuda"


def check_engine_options(provider: str, dtype: str, cuda_graph: bool, available: Sequence[str]) -> None:
    """Refuse option combinations the provider cannot honour, naming what would work."""
    if dtype not in ONNX_DTYPES:
        raise ProviderUnavailableError(
            f"dtype {dtype!r} is not served by the ONNX engine: expected one of {', '.join(ONNX_DTYPES)} "
            "(bf16 runs on the torch engine: --engine torch)"
        )
    if dtype == "fp16" and provider != TRT:
        raise ProviderUnavailableError(
            f"dtype fp16 needs {TRT} (the exported graphs are fp32; TensorRT builds fp16 kernels), "
            f"provider is {provider}; available: {', '.join(available)}"
        )
    if cuda_graph and provider == CPU:
        raise ProviderUnavailableError(
            f"cuda_graph needs {CUDA} or {TRT}, provider is {CPU}; available: {', '.join(available)}"
        )


def trt_profile_shapes(inputs: Sequence[TensorSpec], batch_sizes: Sequence[int]) -> dict[str, str]:
    """TensorRT optimization-profile options covering the dynamic batch axis.

    TRT builds one engine per profile; without explicit min/opt/max shapes a dynamic batch
    axis would rebuild the engine whenever the batch changes (CFG on/off).
    Format: ``name:d0xd1x...,name2:...``.
    """

    def fmt(batch: int) -> str:
        return ",".join(
            f"{name}:" + "x".join(str(batch if isinstance(d, str) else d) for d in shape)
            for name, _, shape in inputs
        )

    lo, hi = min(batch_sizes), max(batch_sizes)
    return {"trt_profile_min_shapes": fmt(lo), "trt_profile_opt_shapes": fmt(hi), "trt_profile_max_shapes": fmt(hi)}


def provider_chain(
    provider: str,
    *,
    fp16: bool = False,
    cuda_graph: bool = False,
    trt_cache_dir: Path | str | None = None,
    device_id: int = 0,
    trt_profile: dict[str, str] | None = None,
) -> list[tuple[str, dict[str, str]]]:
    """The ``providers=`` list for ``InferenceSession``: requested provider first, options set.

    TensorRT is followed by CUDA (onnxruntime assigns the nodes TRT cannot compile to the
    next provider in the list; this is node placement, not a provider fallback). Option
    values are strings, which every onnxruntime version parses ("1"/"0" for booleans).
    """
    dev = str(device_id)
    cuda_opts: dict[str, str] = {"device_id": dev}
    if cuda_graph:
        cuda_opts["enable_cuda_graph"] = "1"
    if provider == CPU:
        return [(CPU, {})]
    if provider == CUDA:
        return [(CUDA, cuda_opts)]
    if provider == TRT:
        trt_opts: dict[str, str] = {
            "device_id": dev,
            "trt_fp16_enable": "1" if fp16 else "0",
            "trt_engine_cache_enable": "1" if trt_cache_dir is not None else "0",
        }
        if trt_cache_dir is not None:
            trt_opts["trt_engine_cache_path"] = str(trt_cache_dir)
            trt_opts["trt_timing_cache_enable"] = "1"
            trt_opts["trt_timing_cache_path"] = str(trt_cache_dir)
        if cuda_graph:
            trt_opts["trt_cuda_graph_enable"] = "1"
        trt_opts.update(trt_profile or {})
        return [(TRT, trt_opts), (CUDA, {"device_id": dev})]
    raise ProviderUnavailableError(f"unknown execution provider {provider!r}: expected one of {', '.join(PROVIDER_LADDER)}")


def default_trt_cache_dir(model_hash: str) -> Path:
    """Where TensorRT engines are cached: per user and per policy, outside the export (which
    may be read-only or shared between machines with different GPUs)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = root / "reflex_ros" / "tensorrt" / model_hash
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------- the Euler loop

VelocityFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def euler_denoise(velocity: VelocityFn, noise: np.ndarray, nfe: int, cfg_beta: float | None) -> np.ndarray:
    """Integrate x from noise (t=1) to actions (t=0): ``x += dt * v`` with ``dt = -1/nfe``.

    ``velocity(x[B, C, A], t[B]) -> v[B, C, A]``; B is 1, or 2 for CFG ([cond, uncond], both
    stepping from the same x, combined as ``v_u + beta (v_c - v_u)``). The ONNX engine and the
    export parity check both run this one function.
    """
    from reflex_ros.engine.schedule import cfg_combine, euler_schedule

    batch = 1 if cfg_beta is None else 2
    x = np.asarray(noise, dtype=np.float32).reshape(np.shape(noise)[-2:]).copy()
    for t_i, dt in euler_schedule(nfe):
        xb = np.ascontiguousarray(np.broadcast_to(x, (batch, *x.shape)))
        tb = np.full((batch,), t_i, dtype=np.float32)
        v = velocity(xb, tb)
        step = v[0] if cfg_beta is None else cfg_combine(v[0], v[1], cfg_beta)
        x = x + np.float32(dt) * step
    return x


# --------------------------------------------------------------------------- sessions


class _Binding:
    """Static buffers for one graph at one batch size, bound once and reused every call."""

    def __init__(self, session: Any, io_binding: Any, values: dict[str, Any], graph_id: int | None):
        self.session = session
        self.io_binding = io_binding
        self.values = values  # name -> OrtValue (inputs and outputs)
        self.graph_id = graph_id


class _Graph:
    """One ONNX file as an onnxruntime session, run through IO binding on static buffers."""

    def __init__(self, path: Path, inputs: list[TensorSpec], outputs: list[TensorSpec], *, provider: str,
                 chain: list[tuple[str, dict[str, str]]], device_id: int, cuda_graph: bool,
                 intra_op_threads: int | None, export_dir: Path, preset: str | None):
        import onnxruntime as ort

        self._ort = ort
        self.path = path
        self.inputs = inputs
        self.outputs = outputs
        self.device = provider_device(provider)
        self.device_id = device_id
        self.cuda_graph = cuda_graph
        self.runs = 0
        self._bindings: dict[int, _Binding] = {}
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # warnings about unused initializers etc. are noise here
        if intra_op_threads:
            opts.intra_op_num_threads = int(intra_op_threads)
        if cuda_graph:
            opts.enable_mem_pattern = False  # allocations must not move under a captured graph
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=chain)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise ExportError(
                f"onnxruntime could not load {path} with {provider} ({type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}); {remediation(export_dir, preset)}"
            ) from None
        got = self.session.get_providers()
        if not got or got[0] != provider:  # onnxruntime falls back to CPU with only a warning
            raise ProviderUnavailableError(
                f"{provider} failed to initialise for {path.name} (onnxruntime fell back to {got}); "
                f"check the CUDA/TensorRT libraries, or pass provider='{CPU}'"
            )

    def binding(self, batch: int, shared: dict[str, Any] | None = None) -> _Binding:
        """The static buffers for ``batch`` (created on first use); ``shared`` binds inputs to
        existing OrtValues (the prefix's KV outputs) instead of allocating new ones."""
        if batch in self._bindings:
            return self._bindings[batch]
        ort = self._ort
        io = self.session.io_binding()
        values: dict[str, Any] = {}
        for specs, bind in ((self.inputs, io.bind_ortvalue_input), (self.outputs, io.bind_ortvalue_output)):
            for name, dtype, shape in specs:
                if shared and name in shared and specs is self.inputs:
                    value = shared[name]
                else:
                    dims = [batch if isinstance(d, str) else int(d) for d in shape]
                    value = ort.OrtValue.ortvalue_from_shape_and_type(dims, _NP_DTYPES[dtype], self.device, self.device_id)
                values[name] = value
                bind(name, value)
        graph_id = batch if self.cuda_graph else None
        self._bindings[batch] = _Binding(self.session, io, values, graph_id)
        return self._bindings[batch]

    def run(self, binding: _Binding, feeds: dict[str, np.ndarray]) -> None:
        """Copy ``feeds`` into the bound buffers and run; outputs stay in their buffers."""
        try:
            for name, array in feeds.items():
                binding.values[name].update_inplace(np.ascontiguousarray(array))
            run_options = self._ort.RunOptions()
            if binding.graph_id is not None:  # one captured CUDA graph per batch size
                run_options.add_run_config_entry("gpu_graph_id", str(binding.graph_id))
            self.session.run_with_iobinding(binding.io_binding, run_options)
        except Exception as exc:
            raise ReflexError(
                f"onnxruntime failed running {self.path.name} on {self.device} "
                f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r})"
            ) from None
        self.runs += 1

    def fetch(self, binding: _Binding, name: str) -> np.ndarray:
        """A copy of an output buffer. On CPU ``OrtValue.numpy()`` is a view of the bound
        buffer, which the next run overwrites: a returned chunk must not change later."""
        return np.array(binding.values[name].numpy(), copy=True)


# --------------------------------------------------------------------------- engine


class OnnxEngine:
    """The Engine protocol on onnxruntime for a reflex_ros export directory.

    ``provider`` None walks the ladder TensorRT -> CUDA -> CPU; a named provider is strict.
    ``variant`` None serves the export's default (``export_kind``, decomposed when both
    exist: it serves every NFE and CFG). ``run_counts`` counts session runs per graph role,
    which is how tests (and curious users) see that the prefix runs once per chunk.
    """

    def __init__(
        self,
        export_dir: Path | str,
        provider: str | None = None,
        variant: str | None = None,
        *,
        dtype: str = "fp32",
        cuda_graph: bool = False,
        trt_cache_dir: Path | str | None = None,
        device_id: int = 0,
        intra_op_threads: int | None = None,
        seed: int | None = None,
        bundle: Bundle | None = None,
    ):
        from reflex_ros.engine.config import PolicyConfig

        self.bundle = bundle if bundle is not None else load_bundle(export_dir)
        b = self.bundle
        self.variant = variant or b.default_variant
        if self.variant not in b.variants:
            raise ExportError(
                f"variant {self.variant!r} is not in {b.export_dir} (present: {', '.join(b.variants)}); "
                f"{remediation(b.export_dir, b.preset)} --mode both"
            )
        available = available_providers()
        self.provider = resolve_provider(provider, available)
        check_engine_options(self.provider, dtype, cuda_graph, available)
        try:
            self.policy_config = PolicyConfig.from_dict(b.policy_config())
        except Exception as exc:
            raise ExportError(
                f"{b.policy_config_path} does not describe a policy ({type(exc).__name__}: {exc}); "
                f"{remediation(b.export_dir, b.preset)}"
            ) from None
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        batch_sizes = (1, 2) if self.variant == DECOMPOSED else (1,)
        self._graphs: dict[str, _Graph] = {}
        for role, path in b.graph_paths(self.variant).items():
            ins, outs = b.expected_signature(self.variant, role)
            chain = provider_chain(
                self.provider,
                fp16=dtype == "fp16",
                cuda_graph=cuda_graph,
                trt_cache_dir=(Path(trt_cache_dir) if trt_cache_dir else default_trt_cache_dir(b.model_hash))
                if self.provider == TRT else None,
                device_id=device_id,
                trt_profile=trt_profile_shapes(ins, batch_sizes) if self.provider == TRT else None,
            )
            self._graphs[role] = _Graph(
                path, ins, outs, provider=self.provider, chain=chain, device_id=device_id,
                cuda_graph=cuda_graph, intra_op_threads=intra_op_threads, export_dir=b.export_dir, preset=b.preset,
            )
        self.info = EngineInfo(
            engine="onnx",
            provider=self.provider,
            dtype=dtype,
            chunk_size=b.chunk_size,
            action_dim=b.action_dim,
            max_state_dim=b.max_state_dim,
            num_cameras=b.num_cameras,
            image_size=b.image_size,
            supported_nfe=b.supported_nfe(self.variant),
            model_hash=b.model_hash,
            cuda_graph=cuda_graph,
            extra={
                "variant": self.variant,
                "export_dir": str(b.export_dir),
                "default_nfe": str(b.default_nfe(self.variant)),
                "cfg": "yes" if self.variant == DECOMPOSED else "no",
                # the unrolled graph fuses prefix and loop: its time is reported as denoise
                "timings": "prefix+denoise" if self.variant == DECOMPOSED else "fused (prefix=0, denoise=all)",
                "preset": str(b.preset),
            },
        )
        self._closed = False

    @property
    def run_counts(self) -> dict[str, int]:
        """Session runs so far per graph role (``prefix``/``expert`` or ``model``)."""
        return {role: g.runs for role, g in self._graphs.items()}

    # -- the Engine protocol

    def infer(
        self,
        obs: Observation,
        *,
        nfe: int | None = None,
        cfg_beta: float | None = None,
        noise: np.ndarray | None = None,
    ) -> ChunkResult:
        """One action chunk. See :class:`reflex_ros.engine.types.Engine`."""
        from reflex_ros.engine.preprocess import prepare_inputs

        if self._closed:
            raise ReflexError("OnnxEngine is closed; create a new engine with load_engine(export_dir)")
        nfe = self._check_request(nfe, cfg_beta)
        with self._lock:
            noise = self._noise(noise)
            t0 = time.perf_counter()
            inputs = prepare_inputs(obs, self.policy_config, cfg_beta)
            t1 = time.perf_counter()
            if self.variant == DECOMPOSED:
                actions, t2 = self._infer_decomposed(inputs, noise, nfe, cfg_beta)
            else:
                actions, t2 = self._infer_monolithic(inputs, noise), t1
            t3 = time.perf_counter()
        ms = 1000.0
        return ChunkResult(
            actions=np.ascontiguousarray(actions, dtype=np.float32),
            timings_ms={"preprocess": (t1 - t0) * ms, "prefix": (t2 - t1) * ms, "denoise": (t3 - t2) * ms,
                        "total": (t3 - t0) * ms},
            nfe=nfe,
            stamp_ns=obs.stamp_ns,
            cfg_beta=cfg_beta,
        )

    def close(self) -> None:
        """Drop the sessions and their buffers (device memory on GPU providers)."""
        with self._lock:
            self._graphs.clear()
            self._closed = True

    # -- internals

    def _check_request(self, nfe: int | None, cfg_beta: float | None) -> int:
        """Validate nfe / cfg_beta against what this variant serves; return the nfe to run."""
        from reflex_ros.engine.schedule import check_cfg_beta, check_nfe

        b = self.bundle
        baked = b.default_nfe(self.variant)
        nfe = baked if nfe is None else nfe
        if self.variant == MONOLITHIC:
            if nfe != baked:
                alt = (f"nfe in {list(b.supported_nfe(DECOMPOSED))}" if DECOMPOSED in b.variants
                       else "other nfe (re-export with --mode both)")
                raise ReflexError(
                    f"the monolithic graph serves only its unrolled nfe={baked}, got nfe={nfe}; "
                    f"use variant='decomposed' for {alt}"
                )
            if cfg_beta is not None:
                raise ReflexError(
                    f"the monolithic graph has no CFG (cfg_beta={cfg_beta} requested); "
                    "use variant='decomposed' (export with --mode decomposed or both)"
                )
        nfe = check_nfe(nfe, self.info.supported_nfe)
        check_cfg_beta(cfg_beta)
        return nfe

    def _noise(self, noise: np.ndarray | None) -> np.ndarray:
        """(C, A) float32 noise: the caller's (validated) or a fresh standard normal draw."""
        from reflex_ros.engine.preprocess import make_noise, validate_noise

        c, a = self.info.chunk_size, self.info.action_dim
        out = make_noise(self._rng, c, a) if noise is None else validate_noise(noise, c, a)
        return out[0]

    def _infer_decomposed(self, inputs: dict[str, np.ndarray], noise: np.ndarray, nfe: int,
                          cfg_beta: float | None) -> tuple[np.ndarray, float]:
        prefix, expert = self._graphs["prefix"], self._graphs["expert"]
        batch = int(inputs["images"].shape[0])
        pb = prefix.binding(batch)
        prefix.run(pb, _obs_feeds(inputs))
        t_prefix = time.perf_counter()
        kv = {spec[0]: pb.values[spec[0]] for spec in prefix.outputs}  # KV + mask stay in place
        eb = expert.binding(batch, shared=kv)

        def velocity(x: np.ndarray, t: np.ndarray) -> np.ndarray:
            expert.run(eb, {X_T: x, TIME: t})
            return expert.fetch(eb, V_T)

        return euler_denoise(velocity, noise, nfe, cfg_beta), t_prefix

    def _infer_monolithic(self, inputs: dict[str, np.ndarray], noise: np.ndarray) -> np.ndarray:
        model = self._graphs["model"]
        mb = model.binding(1)
        model.run(mb, {**_obs_feeds(inputs), NOISE: noise[None]})
        return model.fetch(mb, ACTIONS)[0]


def _obs_feeds(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """prepare_inputs' dict -> graph input names (lang_mask -> lang_masks as in Reflex)."""
    return {
        IMAGES: inputs["images"],
        LANG_TOKENS: inputs["lang_tokens"],
        LANG_MASKS: inputs["lang_mask"],
        STATE: inputs["state"],
    }
