"""PyTorch engine: eager, or CUDA Graph replay of the prefix plus the whole NFE loop.

Graph mode keeps static device buffers for every input (images, tokens, mask, state, noise,
beta) and output. An inference copies the numpy inputs through pinned host buffers into them
(the camera frames as uint8, resized on the GPU where the processor allows it:
``engine/device_frames.py``), replays two graphs back to back on one stream, and copies the
actions back: the only host sync is the final one.

Why two graphs (prefix, denoise) rather than one: CUDA events recorded on the stream between
the two replays give the prefix/denoise split for free (no sync, ~a few us of launch), and the
split is what the latency tracker and the bench report. Both graphs of a plan share one
memory pool and are always replayed in capture order, which is what pool sharing requires.

What the graphs run: the family's fused fast path where it has one (``Family.fast_path``;
the reference family's is ``policies/reference/fused.py``: one preallocated K/V buffer,
RoPE/attention/gated-GELU as single kernels from ``engine/kernels.py``), else the model's
own ``prefix`` + the one Euler loop (``sampler.denoise``) (``fused=False``, or a model the
fast path does not cover). :meth:`TorchEngine.build_runner` builds the static inputs and the
two stage functions without capturing, so CPU tests check exactly what the GPU captures
against the reference. Any family's model is served: the processor (numpy, shared with the
ONNX engine) prepares the inputs and post-processes the actions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from reflex_ros.engine.capture_cache import CaptureCache, GraphKey, graph_key
from reflex_ros.engine.device_frames import DeviceFrames
from reflex_ros.engine.precision import dtype_name, resolve_dtype
from reflex_ros.engine.sampler import denoise, vjp_guide
from reflex_ros.engine.schedule import (
    cfg_combine,
    check_cfg_beta,
    check_guide,
    check_nfe,
    euler_schedule,
    guide_arrays,
    inpaint_guide,
    make_noise,
    validate_noise,
)
from reflex_ros.engine.types import (
    ANY_NFE,
    FRAME_PREFIX,
    GUIDE_GUIDED,
    GUIDE_INPAINT,
    ChunkGuide,
    ChunkResult,
    EngineInfo,
    Observation,
    ProviderUnavailableError,
    ReflexError,
)

_TORCH_DTYPES = {"float32": torch.float32, "uint8": torch.uint8, "int64": torch.int64, "bool": torch.bool}
#: static buffers of a guided plan (real-time chunking): target and weights [1, C, W], beta
GUIDE_TARGET, GUIDE_WEIGHTS, GUIDE_MAX = "guide_target", "guide_weights", "guide_max"


class _GuidedEulerOps:
    """A fast path's ops with ``euler`` steered by a gradient-free guide (``inpaint``).

    The fused fast paths (reference and LeRobot) call ``ops.euler(x, v, dt, beta)`` once per
    step, in schedule order, after their velocity; this proxy stands in for their ``ops``
    while one denoise runs (in a capture: the guidance becomes part of the graph), combines
    CFG itself and applies the guide to the combined velocity. Only the inpainting guide can
    run here: the exact guidance needs a VJP through the model, which fused kernels lack."""

    def __init__(self, ops: Any, guide: Callable[..., torch.Tensor], nfe: int) -> None:
        self._ops = ops
        self._guide = guide
        self._times = [t for t, _ in euler_schedule(nfe)]
        self._step = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ops, name)

    def euler(self, x: torch.Tensor, v: torch.Tensor, dt: float, beta: torch.Tensor | None) -> None:
        t = self._times[self._step]
        self._step += 1
        vf = v.to(torch.float32).view(-1, *x.shape[1:])
        if beta is not None:
            vf = cfg_combine(vf[0:1], vf[1:2], beta)
        x.copy_(x + dt * self._guide(x, t, lambda _: vf))


def resolve_device(device: str | torch.device, cuda_graph: bool) -> torch.device:
    """Check that the requested device / mode can run here; refuse clearly otherwise."""
    dev = torch.device(device)
    if cuda_graph and (dev.type != "cuda" or not torch.cuda.is_available()):
        raise ProviderUnavailableError(
            "CUDA Graph mode needs a CUDA GPU"
            + (" and device='cuda'" if dev.type != "cuda" else "")
            + f" (torch.cuda.is_available()={torch.cuda.is_available()}); use cuda_graph=False"
        )
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ProviderUnavailableError("device 'cuda' requested but no CUDA GPU is visible to torch; use device='cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise ProviderUnavailableError(f"device {device!r} is not supported; use 'cpu' or 'cuda'")
    return dev


@dataclass
class GraphRunner:
    """One plan before capture: static input buffers and the two stage functions.

    ``run_denoise(run_prefix())`` computes the chunk from whatever is in ``inputs``; the
    engine captures each call into a graph, CPU tests call them directly. With a fast path
    and CFG, its ``shared_inputs`` (the images) have batch 1: both slots share them.
    """

    key: GraphKey
    inputs: dict[str, torch.Tensor]
    run_prefix: Callable[[], Any]
    run_denoise: Callable[[Any], torch.Tensor]
    fused: Any = None
    keep: list = field(default_factory=list)  # static state both stages use (fused K/V buffers)
    guide_mode: str | None = None  # real-time chunking: guided / inpaint plans have guide buffers

    def stage(self, name: str, arr: np.ndarray) -> np.ndarray:
        """``arr`` as its static buffer takes it (CFG shared inputs: the first slot)."""
        want = self.inputs[name].shape
        if arr.shape[0] != want[0]:
            return arr[: want[0]]
        return arr


@dataclass
class GraphPlan:
    """Everything one captured (nfe, chunk, batch, cfg) needs to replay."""

    key: GraphKey
    inputs: dict[str, torch.Tensor]  # static device buffers (images, tokens, mask, state, noise, beta)
    host: dict[str, torch.Tensor]  # pinned host staging buffers, same names
    prefix_graph: torch.cuda.CUDAGraph
    denoise_graph: torch.cuda.CUDAGraph
    actions: torch.Tensor  # static device output [1, C, A] fp32
    actions_host: torch.Tensor  # pinned
    keep: list = field(default_factory=list)  # graph-owned intermediates that must stay alive
    runner: GraphRunner | None = None


class _StageClock:
    """Per-stage timing: CUDA events on a GPU (no sync until read), perf_counter on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.marks.append(ev)
        else:
            self.marks.append(time.perf_counter())

    def spans_ms(self) -> list[float]:
        """Elapsed ms between consecutive marks (call after the final sync)."""
        if self.cuda:
            return [a.elapsed_time(b) for a, b in zip(self.marks, self.marks[1:], strict=False)]
        return [(b - a) * 1e3 for a, b in zip(self.marks, self.marks[1:], strict=False)]


class TorchEngine:
    """The :class:`~reflex_ros.engine.types.Engine` protocol on a family's torch model.

    ``model`` (a :class:`~reflex_ros.policies.base.PolicyModel`) is converted to
    ``device``/``dtype`` in place (the engine takes it over); ``processor`` is the family's
    numpy processor. ``cuda_graph=True`` needs a CUDA device; on a CPU-only machine it raises
    ProviderUnavailableError. Graphs are captured lazily on the first inference of each
    (nfe, chunk, batch, cfg) or eagerly with :meth:`warmup`. ``fast_path`` (the family's
    fused path, or None) is what the graphs run when given and ``fused`` is not False; eager
    inference always runs the model's own code.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "fp32",
        cuda_graph: bool = False,
        model_hash: str = "",
        supported_nfe: tuple[int, ...] = ANY_NFE,
        default_nfe: int | None = None,
        seed: int = 0,
        max_graphs: int = 8,
        fast_path: Callable[[Any], Any] | None = None,
        fused: bool | None = None,
        model_type: str = "",
        extra: dict[str, str] | None = None,
        device_images: bool | None = None,
    ) -> None:
        self.device = resolve_device(device, cuda_graph)
        # fp8 = bf16 weights + e4m3 GEMMs on the family's fused graph path (engine/fp8.py)
        fp8 = isinstance(dtype, str) and dtype == "fp8"
        if fp8:
            from reflex_ros.engine.fp8 import require_fp8

            require_fp8(self.device)
            if not cuda_graph or fused is False or fast_path is None:
                raise ProviderUnavailableError("fp8 runs on the fused CUDA-graph path only: use cuda_graph=True "
                                               "with a family fast path, or dtype bf16")
            dtype = "bf16"
        self.dtype = resolve_dtype(dtype)
        self.cuda_graph = bool(cuda_graph)
        self.processor = processor
        self.model: Any = model.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        self.fused: Any = None
        if fused is not False and fast_path is not None:
            if fp8:
                try:
                    self.fused = fast_path(self.model, fp8=True)
                except TypeError:  # a family whose fast path has no fp8 GEMMs
                    raise ProviderUnavailableError("this family's fused path has no fp8 GEMMs; use bf16") from None
            else:
                self.fused = fast_path(self.model)
            if self.fused is None and (fused or fp8):
                raise ValueError("fused=True but this model has no fast path (see the family's fast_path)")
        elif fused:
            raise ValueError("fused=True needs the family's fast path")
        # graph replays take the cameras' uint8 frames and resize them on the GPU when the
        # processor has a torch twin of its image step (engine/device_frames.py); False keeps
        # the host (numpy) image path
        self.use_device_images(device_images if device_images is not None else self._device_images_possible())
        self.supported_nfe = tuple(int(n) for n in supported_nfe)
        self.default_nfe = check_nfe(
            default_nfe if default_nfe is not None else (10 if 10 in self.supported_nfe else max(self.supported_nfe)),
            self.supported_nfe,
        )
        self._rng = np.random.default_rng(seed)
        self.graphs: CaptureCache[GraphPlan] = CaptureCache(self._capture, max_entries=max_graphs)
        # real-time chunking plans, one cache per guide mode (their denoise graph steers x)
        self.guided_graphs: dict[str, CaptureCache[GraphPlan]] = {
            mode: CaptureCache(lambda key, mode=mode: self._capture(key, mode), max_entries=max(1, max_graphs // 2))
            for mode in (GUIDE_GUIDED, GUIDE_INPAINT)}
        p = processor
        params = sum(t.numel() for t in self.model.parameters())
        info_extra = {"device": str(self.device), "params": str(params), **(extra or {})}
        if self.device.type == "cuda":
            info_extra["gpu"] = torch.cuda.get_device_name(self.device)
        if self.cuda_graph:
            info_extra["graph_path"] = f"fused-{self.fused.backend}" if self.fused is not None else "reference"
            info_extra["images"] = "device" if self.device_images else "host"
        self.info = EngineInfo(
            engine="torch",
            provider=self.device.type,
            dtype="fp8" if fp8 else dtype_name(self.dtype),
            chunk_size=p.chunk_size,
            action_dim=p.action_dim,
            max_state_dim=p.max_state_dim,
            num_cameras=len(p.camera_names),
            image_size=p.image_size,
            supported_nfe=self.supported_nfe,
            model_hash=model_hash,
            cuda_graph=self.cuda_graph,
            extra=info_extra,
            model_type=model_type,
            camera_names=tuple(p.camera_names),
            optional_cameras=tuple(getattr(p, "optional_cameras", ())),
            action_width=p.action_width,
            state_dim=int(p.state_dim or 0),
            guide_modes=(GUIDE_GUIDED, GUIDE_INPAINT) if hasattr(p, "normalize_actions") else (),
        )

    # -- public API ------------------------------------------------------------------------
    def infer(
        self,
        obs: Observation,
        *,
        nfe: int | None = None,
        cfg_beta: float | None = None,
        noise: np.ndarray | None = None,
        guide: ChunkGuide | None = None,
    ) -> ChunkResult:
        """One chunk (the Engine protocol). ``guide``: real-time chunking, ``guided`` (the exact
        guidance: a VJP through the model per step; on the CUDA-graph path the model's own
        code is captured, not the fused fast path) or ``inpaint`` (gradient-free; inside the
        fused graph when there is one)."""
        self._live_model()
        clock = _StageClock(self.device)
        t_start = time.perf_counter()
        nfe = check_nfe(self.default_nfe if nfe is None else nfe, self.supported_nfe)
        beta = check_cfg_beta(cfg_beta)
        if beta is not None and not self.processor.supports_cfg:
            raise ReflexError(f"this {self.info.model_type or 'model'} does not support CFG (cfg_beta={cfg_beta})")
        c, w = self.info.chunk_size, self.info.action_width
        if guide is not None:
            check_guide(guide, self.info.guide_modes, c, self.info.action_dim)
        arrays = self.processor.prepare(obs, beta, device_images=True) if self.device_images else \
            self.processor.prepare(obs, beta)
        arrays["noise"] = validate_noise(noise, c, w) if noise is not None else make_noise(self._rng, c, w)
        if guide is not None:
            arrays[GUIDE_TARGET], arrays[GUIDE_WEIGHTS] = guide_arrays(
                guide, self.processor.normalize_actions, c, w, self.info.action_dim)
        host_ms = (time.perf_counter() - t_start) * 1e3
        # autograd refuses inference-mode tensors: the exact guidance runs under no_grad (its
        # step enables grad for the VJP); everything else under inference_mode as always
        with torch.no_grad() if guide is not None else torch.inference_mode():
            if self.cuda_graph:
                x = self._run_graph(arrays, nfe, beta, clock, guide)
            else:
                x = self._run_eager(arrays, nfe, beta, clock, guide)
        t_post = time.perf_counter()
        actions = self.processor.postprocess(x.reshape(c, w))
        post_ms = (time.perf_counter() - t_post) * 1e3
        upload_ms, prefix_ms, denoise_ms = clock.spans_ms()
        total_ms = (time.perf_counter() - t_start) * 1e3
        return ChunkResult(
            actions=actions,
            timings_ms={
                "preprocess": host_ms + upload_ms + post_ms,
                "prefix": prefix_ms,
                "denoise": denoise_ms,
                "total": total_ms,
            },
            nfe=nfe,
            stamp_ns=obs.stamp_ns,
            cfg_beta=beta,
        )

    def _device_images_possible(self) -> bool:
        return self.cuda_graph and callable(getattr(self.processor, "device_image_step", None))

    def use_device_images(self, on: bool) -> None:
        """Resize camera frames on the GPU (True) or on the host (False) from the next replay
        on; the graphs read the same ``images`` buffer either way, so nothing is recaptured
        (benchmarks compare both on one engine)."""
        if on and not self._device_images_possible():
            raise ValueError("device_images=True needs cuda_graph=True and a processor with a device_image_step")
        self.device_images = bool(on)
        self._frames = DeviceFrames(self.processor.device_image_step(self.device), self.device,
                                    len(self.processor.camera_names)) if on else None

    def example_observation(self, instruction: str = "warm up") -> Observation:
        """A zero observation at the model's geometry (warm-up, capture)."""
        p = self.processor
        s = p.image_size
        images = {name: np.zeros((s, s, 3), np.uint8) for name in p.camera_names}
        dim = p.state_dim or p.max_state_dim
        return Observation(images=images, state=np.zeros(dim, np.float32), instruction=instruction)

    def warmup(self, nfe: int | None = None, cfg_beta: float | None = None) -> None:
        """Run one dummy inference so the first real one pays no capture / autotune cost."""
        self.infer(self.example_observation(), nfe=nfe, cfg_beta=cfg_beta)

    def release(self) -> None:
        """Drop graphs and buffers, keep nothing on the device; the model object stays the
        caller's (parity hands a model it goes on using)."""
        self.graphs.clear()
        for cache in self.guided_graphs.values():
            cache.clear()
        self.model = None
        self.fused = None
        if self._frames is not None:  # its per-camera frame buffers live on the device too
            self._frames.clear()

    def close(self) -> None:
        """Drop graphs, buffers and the model reference, and return cached GPU memory."""
        self.release()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()

    # -- eager -----------------------------------------------------------------------------
    def _run_eager(self, arrays: dict[str, np.ndarray], nfe: int, beta: float | None, clock: _StageClock,
                   guide: ChunkGuide | None = None) -> np.ndarray:
        model = self._live_model()
        dev = self.device
        clock.mark()
        t = {k: torch.from_numpy(np.ascontiguousarray(v)).to(dev, non_blocking=True) for k, v in arrays.items()}
        t = self._model_inputs(t)
        clock.mark()
        kv, mask = model.prefix(**{n: t[n] for n in model.prefix_input_names})
        clock.mark()
        steer = None
        if guide is not None:
            steer = (vjp_guide(t[GUIDE_TARGET], t[GUIDE_WEIGHTS], float(guide.max_weight))
                     if guide.mode == GUIDE_GUIDED else inpaint_guide(t[GUIDE_TARGET], t[GUIDE_WEIGHTS]))
        x = denoise(model, kv, mask, t["noise"], nfe, beta, {n: t[n] for n in model.expert_input_names}, steer)
        out = x[0].to("cpu")  # synchronizes
        clock.mark()
        if clock.cuda:
            clock.marks[-1].synchronize()
        return out.numpy()

    # -- CUDA graph ------------------------------------------------------------------------
    def _run_graph(self, arrays: dict[str, np.ndarray], nfe: int, beta: float | None, clock: _StageClock,
                   guide: ChunkGuide | None = None) -> np.ndarray:
        key = graph_key(nfe, self.info.chunk_size, beta)
        plan = self.graphs.get(key) if guide is None else self.guided_graphs[guide.mode].get(key)
        clock.mark()
        for name, arr in arrays.items():
            if name.startswith(FRAME_PREFIX):
                continue
            plan.host[name].numpy()[...] = plan.runner.stage(name, arr)
            plan.inputs[name].copy_(plan.host[name], non_blocking=True)
        if self._frames is not None:
            self._frames.load(arrays, plan.inputs["images"])
        if beta is not None:
            plan.inputs["beta"].fill_(beta)
        if guide is not None:
            plan.inputs[GUIDE_MAX].fill_(float(guide.max_weight))
        clock.mark()
        plan.prefix_graph.replay()
        clock.mark()
        plan.denoise_graph.replay()
        plan.actions_host.copy_(plan.actions, non_blocking=True)
        clock.mark()
        clock.marks[-1].synchronize()
        return plan.actions_host[0].numpy().copy()

    def _model_inputs(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Float inputs in the model's dtype (the noise stays fp32: x is integrated in fp32).
        Inside a captured graph this is one cast kernel per float input."""
        return {k: v.to(self.dtype) if v.is_floating_point() and k != "noise" else v for k, v in tensors.items()}

    def _static_inputs(self, key: GraphKey, shared_batch: int, shared: tuple[str, ...],
                       guided: bool = False) -> dict[str, torch.Tensor]:
        """Zeroed device buffers of every processor output in the processor's dtypes (staged
        from numpy through pinned host buffers), plus noise and beta (and a guided plan's
        target, weights and max weight); bool masks start True so a warm-up replay attends
        to something."""
        dev, B = self.device, key.batch
        out: dict[str, torch.Tensor] = {}
        for name, dtype, shape in self.processor.input_specs():
            dims = [shared_batch if name in shared else B, *[int(d) for d in shape[1:]]]
            fill = 1 if dtype == "bool" else 0
            out[name] = torch.full(dims, fill, dtype=_TORCH_DTYPES[dtype], device=dev)
        out["noise"] = torch.zeros((1, key.chunk_size, self.info.action_width), dtype=torch.float32, device=dev)
        out["beta"] = torch.ones((), dtype=torch.float32, device=dev)
        if guided:
            out[GUIDE_TARGET] = torch.zeros_like(out["noise"])
            out[GUIDE_WEIGHTS] = torch.zeros_like(out["noise"])
            out[GUIDE_MAX] = torch.ones((), dtype=torch.float32, device=dev)
        return out

    def build_runner(self, key: GraphKey, guide_mode: str | None = None) -> GraphRunner:
        """Static inputs and the prefix/denoise stage functions of one plan (no capture).

        ``guide_mode`` (real-time chunking): the denoise steers x with the guide buffers.
        ``inpaint`` runs inside the fused path when there is one (its ``euler`` steered);
        ``guided`` needs autograd through the velocity, so it runs the model's own code."""
        model = self._live_model()
        if key.chunk_size != self.info.chunk_size:
            raise ValueError(f"chunk_size {key.chunk_size} != model chunk_size {self.info.chunk_size}")
        fused = self.fused if guide_mode != GUIDE_GUIDED else None
        shared = tuple(getattr(fused, "shared_inputs", ())) if (fused is not None and key.cfg) else ()
        inp = self._static_inputs(key, 1, shared, guided=guide_mode is not None)
        beta = inp["beta"] if key.cfg else None
        steer = None
        if guide_mode == GUIDE_GUIDED:
            steer = vjp_guide(inp[GUIDE_TARGET], inp[GUIDE_WEIGHTS], inp[GUIDE_MAX])
        elif guide_mode == GUIDE_INPAINT:
            steer = inpaint_guide(inp[GUIDE_TARGET], inp[GUIDE_WEIGHTS])
        elif guide_mode is not None:
            raise ValueError(f"unknown guide mode {guide_mode!r}")
        if fused is not None:
            buf = fused.allocate(key.batch, key.nfe)
            names = tuple(n for n, _, _ in self.processor.input_specs())

            def fused_prefix() -> None:
                fused.prefix(buf, **{n: inp[n] for n in names})  # the fast path casts itself

            def fused_denoise(_: Any) -> torch.Tensor:
                if steer is None:
                    return fused.denoise(buf, inp["noise"], beta)
                ops, fused.ops = fused.ops, _GuidedEulerOps(fused.ops, steer, key.nfe)
                try:
                    return fused.denoise(buf, inp["noise"], beta)
                finally:
                    fused.ops = ops

            return GraphRunner(key, inp, fused_prefix, fused_denoise, fused, keep=[buf], guide_mode=guide_mode)

        def run_prefix() -> tuple[list[torch.Tensor], torch.Tensor]:
            t = self._model_inputs({n: inp[n] for n in model.prefix_input_names})
            return model.prefix(**t)

        def run_denoise(kv: tuple[list[torch.Tensor], torch.Tensor]) -> torch.Tensor:
            extra = self._model_inputs({n: inp[n] for n in model.expert_input_names})
            return denoise(model, kv[0], kv[1], inp["noise"], key.nfe, beta, extra, steer)

        return GraphRunner(key, inp, run_prefix, run_denoise, guide_mode=guide_mode)

    def _capture(self, key: GraphKey, guide_mode: str | None = None) -> GraphPlan:
        """Warm up on a side stream (lazy inits, cuBLAS/SDPA heuristics, Triton JIT), then
        capture the prefix and the unrolled NFE loop into two graphs sharing one memory pool.
        A guided plan's VJPs are captured too (autograd under capture; no_grad around it,
        since autograd refuses inference-mode tensors): still one replay of each graph."""
        runner = self.build_runner(key, guide_mode)
        with torch.no_grad() if guide_mode is not None else torch.inference_mode():
            side = torch.cuda.Stream(device=self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    runner.run_denoise(runner.run_prefix())
            torch.cuda.current_stream(self.device).wait_stream(side)
            torch.cuda.synchronize(self.device)
            pool = torch.cuda.graph_pool_handle()
            prefix_graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(prefix_graph, pool=pool):
                kv = runner.run_prefix()
            denoise_graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(denoise_graph, pool=pool):
                actions = runner.run_denoise(kv)
        inp = runner.inputs
        host = {k: torch.empty(v.shape, dtype=v.dtype, pin_memory=True) for k, v in inp.items()
                if k not in ("beta", GUIDE_MAX)}
        actions_host = torch.empty(actions.shape, dtype=actions.dtype, pin_memory=True)
        keep = [kv] if kv is not None else []
        return GraphPlan(key, inp, host, prefix_graph, denoise_graph, actions, actions_host, keep=keep, runner=runner)

    def _live_model(self) -> Any:
        if self.model is None:
            raise ReflexError("this TorchEngine was closed; create a new one (load_engine) to infer again")
        return self.model
