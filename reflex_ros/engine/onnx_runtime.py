"""ONNX Runtime engine: serve an export directory with numpy in, numpy out, and no torch.

Decomposed serving (the default) runs ``vlm_prefix.onnx`` once per chunk and then
``expert_denoise.onnx`` NFE times against the same prefix KV, stepping x with
``schedule.euler_loop`` on numpy arrays (the same loop the torch engine runs, so the served
loop is exactly the verified one). CFG runs cond and uncond as one batch-2 call. Which
arrays go where comes from the graph signatures in reflex_config.json, so every family is
served by this one engine.

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
    NOISE,
    TIME,
    V_T,
    X_T,
    Bundle,
    TensorSpec,
    load_bundle,
)
from reflex_ros.engine.types import (
    GUIDE_INPAINT,
    ChunkGuide,
    ChunkResult,
    EngineInfo,
    ExportError,
    Observation,
    ProviderUnavailableError,
    ReflexError,
)
from reflex_ros.vocab import (
    CPU,
    CUDA,
    DECOMPOSED,
    FP16,
    MONOLITHIC,
    ONNX_PRECISIONS,
    PROVIDER_ALIASES,
    PROVIDER_LADDER,
    TRT,
    canonical_provider,
)

_NP_DTYPES = {"float32": np.float32, "uint8": np.uint8, "int64": np.int64, "bool": np.bool_}


# --------------------------------------------------------------------------- providers (pure)


#: the TensorRT runtime library TensorRT-EP loads at session creation (10.x, then older sonames)
TENSORRT_LIBRARIES: tuple[str, ...] = ("libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so")


def tensorrt_loadable() -> bool:
    """Whether TensorRT's runtime library can be loaded. onnxruntime-gpu lists
    TensorrtExecutionProvider whether or not TensorRT is installed (its libraries are not on
    PyPI), and a session then fails at creation: a provider that cannot start is not
    available."""
    import ctypes

    for name in TENSORRT_LIBRARIES:
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


_CUDA_PRELOADED: list[bool] = []


def preload_cuda_libraries() -> None:
    """Let onnxruntime-gpu find the CUDA and cuDNN libraries pip-installed beside it (the
    nvidia-* wheels torch also uses): its providers dlopen them by soname at session creation,
    and a venv's libraries are not on the loader path. Once per process; a failure is left
    for session creation to report with its own message."""
    if _CUDA_PRELOADED:
        return
    _CUDA_PRELOADED.append(True)
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls(cuda=True, cudnn=True)
        except Exception:  # noqa: BLE001 - session creation reports a missing library precisely
            pass


def available_providers() -> list[str]:
    """Execution providers this onnxruntime build offers *and can start* here (import
    deferred: cheap module): TensorRT only where its runtime library loads."""
    import onnxruntime as ort

    found = list(ort.get_available_providers())
    if TRT in found and not tensorrt_loadable():
        found.remove(TRT)
    return found


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
    name = canonical_provider(requested)
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


def check_engine_options(provider: str, dtype: str, cuda_graph: bool, available: Sequence[str],
                         export_precision: str = "fp32") -> None:
    """Refuse option combinations the provider cannot honour, naming what would work.

    ``dtype`` fp16 means fp16 kernels: TensorRT builds them from fp32 graphs; CUDA runs an
    export whose graphs are fp16 (``reflex-ros export --precision fp16``). An fp16 export
    needs a GPU provider (the CPU provider lacks fp16 kernels for most ops)."""
    if export_precision == FP16:
        if provider == CPU:
            raise ProviderUnavailableError(
                f"this export's graphs are fp16, which {CPU} cannot run; use CUDAExecutionProvider or "
                f"TensorrtExecutionProvider (available: {', '.join(available)}), or an fp32 export")
        return
    if dtype not in ONNX_PRECISIONS:
        raise ProviderUnavailableError(
            f"dtype {dtype!r} is not served by the ONNX engine: expected one of {', '.join(ONNX_PRECISIONS)} "
            "(bf16 runs on the torch engine: --engine torch)"
        )
    if dtype == FP16 and provider != TRT:
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
    # use_tf32 0: fp32 graphs run fp32 GEMMs (TF32 would trade the export's verified parity for
    # speed without anyone asking); fp16 exports are unaffected
    cuda_opts: dict[str, str] = {"device_id": dev, "use_tf32": "0"}
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


# --------------------------------------------------------------------------- sessions


class _Binding:
    """Static buffers for one graph at one batch size, bound once and reused every call."""

    def __init__(self, session: Any, io_binding: Any, values: dict[str, Any]):
        self.session = session
        self.io_binding = io_binding
        self.values = values  # name -> OrtValue (inputs and outputs)


class _Graph:
    """One ONNX file as onnxruntime session(s), run through IO binding on static buffers.

    With ``cuda_graph`` each batch size gets its own session in which the graph's dynamic
    batch axis is pinned (``add_free_dimension_override_by_name``): onnxruntime captures a
    CUDA graph only when every node runs on the CUDA provider, and with a symbolic batch the
    shape arithmetic (Shape/Gather/Concat feeding Reshape) is placed on the CPU. Pinned, the
    shapes are constants and fold away. Without ``cuda_graph`` one session serves every batch.
    """

    def __init__(self, path: Path, inputs: list[TensorSpec], outputs: list[TensorSpec], *, provider: str,
                 chain: list[tuple[str, dict[str, str]]], device_id: int, cuda_graph: bool,
                 intra_op_threads: int | None, err: Callable[[str], ExportError]):
        import onnxruntime as ort

        self._ort = ort
        self.path = path
        self.inputs = inputs
        self.outputs = outputs
        self.provider = provider
        self.chain = chain
        self.device = provider_device(provider)
        self.device_id = device_id
        self.cuda_graph = cuda_graph
        self.intra_op_threads = intra_op_threads
        self._err = err
        self.runs = 0
        self._bindings: dict[int, _Binding] = {}
        self._sessions: dict[int | None, Any] = {}
        if provider != CPU:
            preload_cuda_libraries()
        # fail at construction, not at the first chunk: the batch-1 (or shared) session now
        self.session = self._session(1)

    def _session(self, batch: int) -> Any:
        key = batch if self.cuda_graph else None
        if key in self._sessions:
            return self._sessions[key]
        ort = self._ort
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # warnings about unused initializers etc. are noise here
        if self.intra_op_threads:
            opts.intra_op_num_threads = int(self.intra_op_threads)
        if self.cuda_graph:
            opts.enable_mem_pattern = False  # allocations must not move under a captured graph
            symbols = {d for _, _, shape in (*self.inputs, *self.outputs) for d in shape if isinstance(d, str)}
            for symbol in sorted(symbols):
                opts.add_free_dimension_override_by_name(symbol, int(batch))
        try:
            session = ort.InferenceSession(str(self.path), opts, providers=self.chain)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise self._err(
                f"onnxruntime could not load {self.path} with {self.provider} ({type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r})"
            ) from None
        got = session.get_providers()
        if not got or got[0] != self.provider:  # onnxruntime falls back to CPU with only a warning
            raise ProviderUnavailableError(
                f"{self.provider} failed to initialise for {self.path.name} (onnxruntime fell back to {got}); "
                f"check the CUDA/TensorRT libraries, or pass provider='{CPU}'"
            )
        self._sessions[key] = session
        return session

    def binding(self, batch: int, shared: dict[str, Any] | None = None) -> _Binding:
        """The static buffers for ``batch`` (created on first use); ``shared`` binds inputs to
        existing OrtValues (the prefix's KV outputs) instead of allocating new ones."""
        if batch in self._bindings:
            return self._bindings[batch]
        ort = self._ort
        session = self._session(batch)
        io = session.io_binding()
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
        self._bindings[batch] = _Binding(session, io, values)
        return self._bindings[batch]

    def run(self, binding: _Binding, feeds: dict[str, np.ndarray]) -> None:
        """Copy ``feeds`` into the bound buffers and run; outputs stay in their buffers."""
        try:
            for name, array in feeds.items():
                binding.values[name].update_inplace(np.ascontiguousarray(array))
            binding.session.run_with_iobinding(binding.io_binding, self._ort.RunOptions())
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
    """The Engine protocol on onnxruntime for a reflex_ros export directory, any family.

    ``provider`` None walks the ladder TensorRT -> CUDA -> CPU; a named provider is strict.
    ``layout`` None serves the export's default (``export_kind``, decomposed when both
    exist: it serves every NFE and CFG). The family's processor (numpy) turns observations
    into the graphs' named inputs and the sampler output into robot actions; everything in
    between is driven by the graph signatures in reflex_config.json. ``run_counts`` counts
    session runs per graph role, which is how tests (and curious users) see that the prefix
    runs once per chunk.
    """

    def __init__(
        self,
        export_dir: Path | str,
        provider: str | None = None,
        layout: str | None = None,
        *,
        dtype: str = "fp32",
        cuda_graph: bool = False,
        trt_cache_dir: Path | str | None = None,
        device_id: int = 0,
        intra_op_threads: int | None = None,
        seed: int | None = None,
        bundle: Bundle | None = None,
    ):
        self.bundle = bundle if bundle is not None else load_bundle(export_dir)
        b = self.bundle
        c = b.config
        self.layout = layout or b.default_layout
        if self.layout not in b.layouts:
            raise b.error(f"layout {self.layout!r} is not in {b.export_dir} (present: {', '.join(b.layouts)}); "
                          "re-export with --mode both")
        available = available_providers()
        self.provider = resolve_provider(provider, available)
        dtype = FP16 if c.precision == FP16 else dtype
        check_engine_options(self.provider, dtype, cuda_graph, available, c.precision)
        self.processor = b.processor()
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        batch_sizes = (1, 2) if self.layout == DECOMPOSED and c.supports_cfg else (1,)
        self._graphs: dict[str, _Graph] = {}
        for role, spec in c.graphs[self.layout].items():
            ins, outs = list(spec.inputs), list(spec.outputs)
            chain = provider_chain(
                self.provider,
                fp16=dtype == FP16,
                cuda_graph=cuda_graph,
                trt_cache_dir=(Path(trt_cache_dir) if trt_cache_dir else default_trt_cache_dir(b.model_hash))
                if self.provider == TRT else None,
                device_id=device_id,
                trt_profile=trt_profile_shapes(ins, batch_sizes) if self.provider == TRT else None,
            )
            self._graphs[role] = _Graph(
                b.export_dir / spec.file, ins, outs, provider=self.provider, chain=chain, device_id=device_id,
                cuda_graph=cuda_graph, intra_op_threads=intra_op_threads, err=b.error,
            )
        self.info = EngineInfo(
            engine="onnx",
            provider=self.provider,
            dtype=dtype,
            chunk_size=c.chunk_size,
            action_dim=c.action_dim,
            max_state_dim=c.max_state_dim,
            num_cameras=c.num_cameras,
            image_size=c.image_size,
            supported_nfe=c.supported_nfe_for(self.layout),
            model_hash=b.model_hash,
            cuda_graph=cuda_graph,
            model_type=c.model_type,
            camera_names=c.camera_names,
            optional_cameras=c.optional_cameras,
            action_width=c.action_width,
            state_dim=c.state_dim,
            # real-time chunking without gradients: the decomposed loop steps x in numpy, so the
            # gradient-free inpainting runs between the expert calls; the exact guidance would need
            # a VJP graph of the expert (not exported); the monolithic graph has no loop to steer
            guide_modes=(GUIDE_INPAINT,) if self.layout == DECOMPOSED and hasattr(self.processor, "normalize_actions")
            else (),
            extra={
                "layout": self.layout,
                "export_dir": str(b.export_dir),
                "default_nfe": str(c.default_nfe_for(self.layout)),
                "cfg": "yes" if self.layout == DECOMPOSED and c.supports_cfg else "no",
                # the unrolled graph fuses prefix and loop: its time is reported as denoise
                "timings": "prefix+denoise" if self.layout == DECOMPOSED else "fused (prefix=0, denoise=all)",
                "preset": str(c.preset),
                "source": c.source,
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
        guide: ChunkGuide | None = None,
    ) -> ChunkResult:
        """One action chunk. See :class:`reflex_ros.engine.types.Engine`. ``guide`` (real-time
        chunking) must be mode ``inpaint``: the gradient-free variant, applied to every Euler
        step's velocity between the expert calls."""
        if self._closed:
            raise ReflexError("OnnxEngine is closed; create a new engine with load_engine(export_dir)")
        nfe = self._check_request(nfe, cfg_beta)
        steer = None
        if guide is not None:
            from reflex_ros.engine.schedule import check_guide, guide_arrays, inpaint_guide

            info = self.info
            check_guide(guide, info.guide_modes, info.chunk_size, info.action_dim)
            steer = inpaint_guide(*guide_arrays(guide, self.processor.normalize_actions, info.chunk_size,
                                                info.action_width, info.action_dim))
        with self._lock:
            noise = self._noise(noise)
            t0 = time.perf_counter()
            inputs = self.processor.prepare(obs, cfg_beta)
            t1 = time.perf_counter()
            if self.layout == DECOMPOSED:
                x, t2 = self._infer_decomposed(inputs, noise, nfe, cfg_beta, steer)
            else:
                x, t2 = self._infer_monolithic(inputs, noise), t1
            actions = self.processor.postprocess(np.asarray(x).reshape(self.info.chunk_size, -1))
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
        """Validate nfe / cfg_beta against what this layout serves; return the nfe to run."""
        from reflex_ros.engine.schedule import check_cfg_beta, check_nfe

        c = self.bundle.config
        baked = c.default_nfe_for(self.layout)
        nfe = baked if nfe is None else nfe
        if self.layout == MONOLITHIC:
            if nfe != baked:
                alt = ("any other nfe" if DECOMPOSED in c.layouts
                       else "other nfe (re-export with --mode both)")
                raise ReflexError(
                    f"the monolithic graph serves only its unrolled nfe={baked}, got nfe={nfe}; "
                    f"use layout='decomposed' for {alt}"
                )
            if cfg_beta is not None:
                raise ReflexError(
                    f"the monolithic graph has no CFG (cfg_beta={cfg_beta} requested); "
                    "use layout='decomposed' (export with --mode decomposed or both)"
                )
        if cfg_beta is not None and not c.supports_cfg:
            raise ReflexError(f"this {c.model_type} export does not support CFG (cfg_beta={cfg_beta} requested)")
        nfe = check_nfe(nfe, self.info.supported_nfe)
        check_cfg_beta(cfg_beta)
        return nfe

    def _noise(self, noise: np.ndarray | None) -> np.ndarray:
        """(1, C, W) float32 noise: the caller's (validated) or a fresh standard normal draw."""
        from reflex_ros.engine.schedule import make_noise, validate_noise

        c, w = self.info.chunk_size, self.info.action_width
        return make_noise(self._rng, c, w) if noise is None else validate_noise(noise, c, w)

    def _infer_decomposed(self, inputs: dict[str, np.ndarray], noise: np.ndarray, nfe: int,
                          cfg_beta: float | None, guide: Any = None) -> tuple[np.ndarray, float]:
        from reflex_ros.engine.schedule import euler_loop

        prefix, expert = self._graphs["prefix"], self._graphs["expert"]
        batch = int(next(iter(inputs.values())).shape[0])
        pb = prefix.binding(batch)
        prefix.run(pb, {name: inputs[name] for name, _, _ in prefix.inputs})
        t_prefix = time.perf_counter()
        shared = {spec[0]: pb.values[spec[0]] for spec in prefix.outputs}  # KV + mask stay in place
        eb = expert.binding(batch, shared=shared)
        # observation arrays each step needs (e.g. pi0's state): copied once per chunk
        extra = {name: inputs[name] for name, _, _ in expert.inputs if name in inputs}
        for name, array in extra.items():
            eb.values[name].update_inplace(np.ascontiguousarray(array))

        def velocity(x: np.ndarray, t_i: float) -> np.ndarray:
            xb = np.ascontiguousarray(np.broadcast_to(x, (batch, *x.shape[1:])))
            expert.run(eb, {X_T: xb, TIME: np.full((batch,), t_i, dtype=np.float32)})
            return expert.fetch(eb, V_T)

        return euler_loop(velocity, noise, nfe, cfg_beta, guide), t_prefix

    def _infer_monolithic(self, inputs: dict[str, np.ndarray], noise: np.ndarray) -> np.ndarray:
        model = self._graphs["model"]
        mb = model.binding(1)
        feeds = {name: inputs[name] for name, _, _ in model.inputs if name != NOISE}
        model.run(mb, {**feeds, NOISE: noise})
        return model.fetch(mb, ACTIONS)
