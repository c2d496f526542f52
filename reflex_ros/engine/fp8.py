"""fp8 (e4m3) GEMMs for the fused fast paths: weights per output channel, activations per row.

Why: at batch 1 the action expert is weight-read bound (its 50 rows reuse each weight only
50 times, NFE times per chunk) and the prefix MLPs are compute bound; e4m3 halves the
bytes of the one and doubles the tensor-core rate of the other (Hopper / Ada).

Design (the numbers the bench reports come from exactly this):

- **weights**: ``W [N, K]`` -> ``Wq = round_e4m3(W / s_w)`` with one fp32 scale per output
  channel, ``s_w[n] = max_k |W[n, k]| / 448`` (quantized once, when the fast path is built);
- **activations**: per row (token), on the fly, ``s_x[m] = max_k |x[m, k]| / 448``; the
  kernel that produces the GEMM's input writes it already quantized (the fused RMSNorm and
  the gated activation have an fp8 output mode), so no extra pass over x;
- **GEMM**: ``y = (Xq Wq^T) * s_x[:, None] * s_w[None, :]`` in fp32 accumulation, bf16 out:
  ``torch._scaled_mm(Xq [M, K] row-major, Wq.t() [K, N] column-major, scale_a [M, 1],
  scale_b [1, N], out_dtype=bf16)`` (row-wise scaling, CUTLASS on sm_90). It needs K and N
  multiples of 16 (every GEMM of the published pi0 / pi0.5 / SmolVLA sizes is); a GEMM that
  is not stays bf16. If this torch build refuses row-wise scaling on the GPU (older builds on
  sm_89), the first call falls back to a tensor-wise-scaled GEMM (unit scales) followed by
  the two scale vectors as one elementwise multiply; the choice is made once during warm-up,
  never inside a graph capture.

Accepted only on compute capability >= 8.9 (:func:`require_fp8`) and only where a chunk's
cosine against the fp32 eager reference on seeded inputs is >= :data:`FP8_MIN_COSINE`
(:func:`check_chunk_cosine`; ``reflex-ros bench --compare`` reports it per family).

The ``torch`` backend spells the same math as a float matmul of the dequantized operands
(exact products, fp32 accumulation), so the CPU tests run the whole fp8 fast path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from reflex_ros.engine.kernels import FP8_DTYPE, FP8_MAX
from reflex_ros.engine.types import ProviderUnavailableError, ReflexError

#: compute capability from which the GPU has e4m3 tensor cores (Ada sm_89, Hopper sm_90, ...)
FP8_MIN_COMPUTE_CAPABILITY = (8, 9)
#: a fp8 chunk must keep this cosine against fp32 eager (issue 10)
FP8_MIN_COSINE = 0.999
#: _scaled_mm's alignment rule for K and N
FP8_ALIGN = 16


class PrecisionRejectedError(ReflexError):
    """A precision whose chunk drifted too far from the fp32 reference (cosine below the bar)."""


def fp8_capable(device: torch.device | str) -> tuple[bool, str]:
    """(whether ``device`` runs e4m3 GEMMs, why not)."""
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return False, f"fp8 needs a CUDA GPU of compute capability >= 8.9 (device is {dev})"
    cc = torch.cuda.get_device_capability(dev)
    if tuple(cc) < FP8_MIN_COMPUTE_CAPABILITY:
        return False, (f"fp8 needs compute capability >= 8.9 (Ada, Hopper or newer); "
                       f"{torch.cuda.get_device_name(dev)} is sm_{cc[0]}{cc[1]}")
    if not hasattr(torch, "_scaled_mm"):
        return False, f"this torch build ({torch.__version__}) has no torch._scaled_mm"
    return True, ""


def require_fp8(device: torch.device | str) -> None:
    """Raise ProviderUnavailableError (with the reason) unless ``device`` runs fp8."""
    ok, why = fp8_capable(device)
    if not ok:
        raise ProviderUnavailableError(f"{why}; use dtype bf16 or fp16")


def fp8_shape_ok(n: int, k: int) -> bool:
    """Whether a ``[N, K]`` weight meets _scaled_mm's alignment (K, N multiples of 16)."""
    return n % FP8_ALIGN == 0 and k % FP8_ALIGN == 0


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``W [N, K]`` -> ``(Wq e4m3 [N, K], scale fp32 [N])`` with ``W ~= Wq * scale[:, None]``."""
    wf = w.detach().to(torch.float32)
    scale = (wf.abs().amax(dim=1) / FP8_MAX).clamp(min=1e-12)
    q = (wf / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q.contiguous(), scale.contiguous()


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Per-row scales back to fp32 (``q * scale[:, None]``)."""
    return q.to(torch.float32) * scale.to(torch.float32)[:, None]


@dataclass
class Fp8Weight:
    """One linear layer's e4m3 weight, its per-output-channel scales and its bias."""

    q: torch.Tensor  # [N, K] e4m3, row-major (so q.t() is the column-major mat2 _scaled_mm wants)
    scale: torch.Tensor  # [N] fp32
    bias: torch.Tensor | None = None
    #: "rowwise" (scales inside _scaled_mm), "tensorwise" (scales applied after), or None: not probed yet
    mode: str | None = None

    @classmethod
    def from_weight(cls, w: torch.Tensor, bias: torch.Tensor | None = None) -> Fp8Weight:
        q, s = quantize_weight(w)
        return cls(q, s, bias)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.q.shape)  # type: ignore[return-value]

    @property
    def nbytes(self) -> int:
        return self.q.numel() + 4 * self.scale.numel()


def fp8_linear(xq: torch.Tensor, xs: torch.Tensor, w: Fp8Weight, out_dtype: torch.dtype,
               backend: str = "torch") -> torch.Tensor:
    """``(Xq * s_x) @ (Wq * s_w)^T (+ bias)`` -> ``[M, N]`` in ``out_dtype``.

    ``xq`` e4m3 ``[M, K]`` contiguous, ``xs`` fp32 ``[M]`` (per-row scales). ``backend``
    ``"torch"`` dequantizes and multiplies in fp32 (CPU tests); anything else runs
    ``torch._scaled_mm`` on the GPU."""
    if backend == "torch" or not xq.is_cuda:
        y = dequantize(xq, xs) @ dequantize(w.q, w.scale).t()
        if w.bias is not None:
            y = y + w.bias.to(torch.float32)
        return y.to(out_dtype)
    M, N = xq.shape[0], w.q.shape[0]
    if w.mode is None:  # first call: warm-up, outside any capture
        w.mode = _probe_mode(xq, xs, w, out_dtype)
    if w.mode == "rowwise":
        return torch._scaled_mm(xq, w.q.t(), scale_a=xs.view(M, 1), scale_b=w.scale.view(1, N),
                                bias=w.bias, out_dtype=out_dtype)
    one = _unit_scale(xq.device)
    y = torch._scaled_mm(xq, w.q.t(), scale_a=one, scale_b=one, out_dtype=torch.float32)
    y = y * xs.view(M, 1) * w.scale.view(1, N)
    if w.bias is not None:
        y = y + w.bias
    return y.to(out_dtype)


_UNIT: dict[Any, torch.Tensor] = {}


def _unit_scale(device: torch.device) -> torch.Tensor:
    key = (device.type, device.index)
    if key not in _UNIT:
        _UNIT[key] = torch.ones((), dtype=torch.float32, device=device)
    return _UNIT[key]


def _probe_mode(xq: torch.Tensor, xs: torch.Tensor, w: Fp8Weight, out_dtype: torch.dtype) -> str:
    """Row-wise scaling where this torch build supports it on this GPU, else tensor-wise."""
    M, N = xq.shape[0], w.q.shape[0]
    try:
        torch._scaled_mm(xq, w.q.t(), scale_a=xs.view(M, 1), scale_b=w.scale.view(1, N), bias=w.bias,
                         out_dtype=out_dtype)
        return "rowwise"
    except (RuntimeError, ValueError):
        torch._scaled_mm(xq, w.q.t(), scale_a=_unit_scale(xq.device), scale_b=_unit_scale(xq.device),
                         out_dtype=torch.float32)
        return "tensorwise"


def chunk_cosine(a: Any, b: Any) -> float:
    """Cosine of two whole action chunks (flattened, float64)."""
    import numpy as np

    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-30))


def check_chunk_cosine(engine: Any, reference: list, fixtures: list, nfe: int, cfg_beta: float | None = None,
                       min_cos: float = FP8_MIN_COSINE) -> float:
    """The worst chunk cosine of ``engine`` against ``reference`` actions (fp32 eager on the
    same ``fixtures``: (observation, noise) pairs); PrecisionRejectedError below ``min_cos``."""
    worst = 1.0
    for (obs, noise), ref in zip(fixtures, reference, strict=True):
        out = engine.infer(obs, nfe=nfe, cfg_beta=cfg_beta, noise=noise).actions
        worst = min(worst, chunk_cosine(out, ref))
    if worst < min_cos:
        raise PrecisionRejectedError(
            f"{engine.info.dtype} chunk cosine {worst:.6f} < {min_cos} against fp32 eager on seeded inputs; "
            "serve this model in bf16")
    return worst
