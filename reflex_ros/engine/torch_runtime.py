"""PyTorch engine: eager, or CUDA Graph replay of the prefix plus the whole NFE loop.

Graph mode keeps static device buffers for every input (uint8 images, tokens, mask, state,
noise, beta) and output. An inference copies the numpy inputs through pinned host buffers
into them, replays two graphs back to back on one stream, and copies the actions back: the
only host sync is the final one.

Why two graphs (prefix, denoise) rather than one: CUDA events recorded on the stream between
the two replays give the prefix/denoise split for free (no sync, ~a few us of launch), and the
split is what the latency tracker and the bench report. Both graphs of a plan share one
memory pool and are always replayed in capture order, which is what pool sharing requires.

What the graphs run: by default the fused fast path (:mod:`reflex_ros.engine.fused`: one
preallocated K/V buffer, RoPE/attention/gated-GELU as single kernels, residual adds fused
into the GEMM epilogue or the following norm), else the reference ``FlowPolicy.prefix`` + ``sampler.denoise`` (``fused=False``,
or a config the fused path does not cover). :meth:`TorchEngine.build_runner` builds the
static inputs and the two stage functions without capturing, so CPU tests check exactly
what the GPU captures against the reference.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from reflex_ros.engine.capture_cache import CaptureCache, GraphKey, graph_key
from reflex_ros.engine.fused import FusedPolicy
from reflex_ros.engine.fused import supports as fused_supports
from reflex_ros.engine.model import FlowPolicy
from reflex_ros.engine.preprocess import make_noise, prepare_inputs, validate_noise
from reflex_ros.engine.sampler import denoise
from reflex_ros.engine.schedule import check_cfg_beta, check_nfe
from reflex_ros.engine.types import (
    NFE_CHOICES,
    ChunkResult,
    EngineInfo,
    Observation,
    ProviderUnavailableError,
    ReflexError,
)
from reflex_ros.engine.weights import dtype_name, resolve_dtype

INPUT_NAMES = ("images", "lang_tokens", "lang_mask", "state")


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
    engine captures each call into a graph, CPU tests call them directly. With the fused path
    and CFG, ``inputs["images"]`` has batch 1 (both slots share the images).
    """

    key: GraphKey
    inputs: dict[str, torch.Tensor]
    run_prefix: Callable[[], Any]
    run_denoise: Callable[[Any], torch.Tensor]
    fused: FusedPolicy | None = None
    keep: list = field(default_factory=list)  # static state both stages use (fused K/V buffers)

    def stage(self, name: str, arr: np.ndarray) -> np.ndarray:
        """``arr`` as its static buffer takes it (CFG images: the shared first slot)."""
        want = self.inputs[name].shape
        if name == "images" and arr.shape[0] != want[0]:
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
    """The :class:`~reflex_ros.engine.types.Engine` protocol on a torch :class:`FlowPolicy`.

    ``model`` is converted to ``device``/``dtype`` in place (the engine takes it over).
    ``cuda_graph=True`` needs a CUDA device; on a CPU-only machine it raises
    ProviderUnavailableError. Graphs are captured lazily on the first inference of each
    (nfe, chunk, batch, cfg) or eagerly with :meth:`warmup`. ``fused`` (default: wherever
    the config allows) makes the graphs run the fused fast path; eager inference always runs
    the reference model.
    """

    def __init__(
        self,
        model: FlowPolicy,
        *,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "fp32",
        cuda_graph: bool = False,
        model_hash: str = "",
        supported_nfe: tuple[int, ...] = NFE_CHOICES,
        default_nfe: int | None = None,
        seed: int = 0,
        max_graphs: int = 8,
        fused: bool | None = None,
    ) -> None:
        self.device = resolve_device(device, cuda_graph)
        self.dtype = resolve_dtype(dtype)
        self.cuda_graph = bool(cuda_graph)
        self.model: FlowPolicy | None = model.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        self.cfg = model.cfg
        if fused and not fused_supports(self.cfg):
            raise ValueError(f"fused=True needs num_kv_heads == 1 and a power-of-two head_dim "
                             f"(got {self.cfg.num_kv_heads}, {self.cfg.head_dim}); use fused=False")
        self.fused: FusedPolicy | None = (
            FusedPolicy(self.model) if (fused is None and fused_supports(self.cfg)) or fused else None
        )
        self.supported_nfe = tuple(int(n) for n in supported_nfe)
        self.default_nfe = check_nfe(
            default_nfe if default_nfe is not None else (10 if 10 in self.supported_nfe else max(self.supported_nfe)),
            self.supported_nfe,
        )
        self._rng = np.random.default_rng(seed)
        self.graphs: CaptureCache[GraphPlan] = CaptureCache(self._capture, max_entries=max_graphs)
        cfg = self.cfg
        extra = {"preset": cfg.preset, "device": str(self.device), "params": str(model.num_parameters())}
        if self.device.type == "cuda":
            extra["gpu"] = torch.cuda.get_device_name(self.device)
        if self.cuda_graph:
            extra["graph_path"] = f"fused-{self.fused.backend}" if self.fused is not None else "reference"
        self.info = EngineInfo(
            engine="torch",
            provider=self.device.type,
            dtype=dtype_name(self.dtype),
            chunk_size=cfg.chunk_size,
            action_dim=cfg.action_dim,
            max_state_dim=cfg.max_state_dim,
            num_cameras=cfg.num_cameras,
            image_size=cfg.image_size,
            supported_nfe=self.supported_nfe,
            model_hash=model_hash,
            cuda_graph=self.cuda_graph,
            extra=extra,
        )

    # -- public API ------------------------------------------------------------------------
    def infer(
        self,
        obs: Observation,
        *,
        nfe: int | None = None,
        cfg_beta: float | None = None,
        noise: np.ndarray | None = None,
    ) -> ChunkResult:
        model = self._live_model()
        clock = _StageClock(self.device)
        t_start = time.perf_counter()
        nfe = check_nfe(self.default_nfe if nfe is None else nfe, self.supported_nfe)
        beta = check_cfg_beta(cfg_beta)
        cfg = self.cfg
        arrays = prepare_inputs(obs, cfg, beta)
        arrays["noise"] = (
            validate_noise(noise, cfg.chunk_size, cfg.action_dim)
            if noise is not None
            else make_noise(self._rng, cfg.chunk_size, cfg.action_dim)
        )
        host_ms = (time.perf_counter() - t_start) * 1e3
        with torch.inference_mode():
            if self.cuda_graph:
                actions = self._run_graph(arrays, nfe, beta, clock)
            else:
                actions = self._run_eager(model, arrays, nfe, beta, clock)
        upload_ms, prefix_ms, denoise_ms = clock.spans_ms()
        total_ms = (time.perf_counter() - t_start) * 1e3
        return ChunkResult(
            actions=actions,
            timings_ms={
                "preprocess": host_ms + upload_ms,
                "prefix": prefix_ms,
                "denoise": denoise_ms,
                "total": total_ms,
            },
            nfe=nfe,
            stamp_ns=obs.stamp_ns,
            cfg_beta=beta,
        )

    def warmup(self, nfe: int | None = None, cfg_beta: float | None = None) -> None:
        """Run one dummy inference so the first real one pays no capture / autotune cost."""
        cfg = self.cfg
        obs = Observation(
            images=[np.zeros((cfg.image_size, cfg.image_size, 3), np.uint8)] * cfg.num_cameras,
            state=np.zeros(cfg.max_state_dim, np.float32),
            instruction="warm up",
        )
        self.infer(obs, nfe=nfe, cfg_beta=cfg_beta)

    def close(self) -> None:
        """Drop graphs, buffers and the model reference, and return cached GPU memory."""
        self.graphs.clear()
        self.model = None
        self.fused = None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()

    # -- eager -----------------------------------------------------------------------------
    def _run_eager(
        self, model: FlowPolicy, arrays: dict[str, np.ndarray], nfe: int, beta: float | None, clock: _StageClock
    ) -> np.ndarray:
        dev = self.device
        clock.mark()
        t = {k: torch.from_numpy(v).to(dev, non_blocking=True) for k, v in arrays.items()}
        clock.mark()
        prefix_k, prefix_v, prefix_mask = model.prefix(t["images"], t["lang_tokens"], t["lang_mask"], t["state"])
        clock.mark()
        actions = denoise(model, prefix_k, prefix_v, prefix_mask, t["noise"], nfe, beta)
        out = actions[0].to("cpu")  # synchronizes
        clock.mark()
        if clock.cuda:
            clock.marks[-1].synchronize()
        return out.numpy()

    # -- CUDA graph ------------------------------------------------------------------------
    def _run_graph(self, arrays: dict[str, np.ndarray], nfe: int, beta: float | None, clock: _StageClock) -> np.ndarray:
        plan = self.graphs.get(graph_key(nfe, self.cfg.chunk_size, beta))
        clock.mark()
        for name, arr in arrays.items():
            plan.host[name].numpy()[...] = plan.runner.stage(name, arr)
            plan.inputs[name].copy_(plan.host[name], non_blocking=True)
        if beta is not None:
            plan.inputs["beta"].fill_(beta)
        clock.mark()
        plan.prefix_graph.replay()
        clock.mark()
        plan.denoise_graph.replay()
        plan.actions_host.copy_(plan.actions, non_blocking=True)
        clock.mark()
        clock.marks[-1].synchronize()
        return plan.actions_host[0].numpy().copy()

    def _static_inputs(self, key: GraphKey, image_batch: int) -> dict[str, torch.Tensor]:
        cfg, dev, B = self.cfg, self.device, key.batch
        s = cfg.image_size
        return {
            "images": torch.zeros((image_batch, cfg.num_cameras, s, s, 3), dtype=torch.uint8, device=dev),
            "lang_tokens": torch.ones((B, cfg.max_lang_tokens), dtype=torch.int64, device=dev),
            "lang_mask": torch.ones((B, cfg.max_lang_tokens), dtype=torch.bool, device=dev),
            "state": torch.zeros((B, cfg.max_state_dim), dtype=torch.float32, device=dev),
            "noise": torch.zeros((1, key.chunk_size, cfg.action_dim), dtype=torch.float32, device=dev),
            "beta": torch.ones((), dtype=torch.float32, device=dev),
        }

    def build_runner(self, key: GraphKey) -> GraphRunner:
        """Static inputs and the prefix/denoise stage functions of one plan (no capture)."""
        model = self._live_model()
        if key.chunk_size != self.cfg.chunk_size:
            raise ValueError(f"chunk_size {key.chunk_size} != model chunk_size {self.cfg.chunk_size}")
        fused = self.fused
        inp = self._static_inputs(key, image_batch=1 if (fused is not None and key.cfg) else key.batch)
        beta = inp["beta"] if key.cfg else None
        if fused is not None:
            buf = fused.allocate(key.batch, key.nfe)

            def fused_prefix() -> None:
                fused.prefix(buf, inp["images"], inp["lang_tokens"], inp["lang_mask"], inp["state"])

            def fused_denoise(_: Any) -> torch.Tensor:
                return fused.denoise(buf, inp["noise"], beta)

            return GraphRunner(key, inp, fused_prefix, fused_denoise, fused, keep=[buf])

        def run_prefix() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            return model.prefix(inp["images"], inp["lang_tokens"], inp["lang_mask"], inp["state"])

        def run_denoise(kv: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
            return denoise(model, *kv, inp["noise"], key.nfe, beta)

        return GraphRunner(key, inp, run_prefix, run_denoise)

    def _capture(self, key: GraphKey) -> GraphPlan:
        """Warm up on a side stream (lazy inits, cuBLAS/SDPA heuristics, Triton JIT), then
        capture the prefix and the unrolled NFE loop into two graphs sharing one memory pool."""
        runner = self.build_runner(key)
        with torch.inference_mode():
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
        host = {k: torch.empty(v.shape, dtype=v.dtype, pin_memory=True) for k, v in inp.items() if k != "beta"}
        actions_host = torch.empty(actions.shape, dtype=actions.dtype, pin_memory=True)
        keep = list(kv) if isinstance(kv, tuple) else []
        return GraphPlan(key, inp, host, prefix_graph, denoise_graph, actions, actions_host, keep=keep, runner=runner)

    def _live_model(self) -> FlowPolicy:
        if self.model is None:
            raise ReflexError("this TorchEngine was closed; create a new one (load_engine) to infer again")
        return self.model
