"""Which attention implementation is fastest at pi0's two attention shapes (bf16, H100/H200)?

expert: 50 action tokens x 8 query heads, 1 KV head, 561 prefix + 50 own keys, head_dim 256
prefix: 561 tokens x 8 query heads, 1 KV head, 561 keys, head_dim 256, padded keys masked

Each variant is captured 50x in a CUDA graph and replayed, so the number is kernel time plus
the in-graph launch gap that the real engine pays (not Python overhead).
Run: PYTHONPATH=. python3 benchmarks/gpu_attention.py
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from reflex_ros.engine.gpu_timing import graph_us
from reflex_ros.policies.reference.model import (
    additive_mask,
    fold_queries,
    small_query_attention,
    unfold_output,
)


def case(name: str, lq: int, s_keys: int, n_pad: int) -> None:
    torch.manual_seed(0)
    H, d, dt = 8, 256, torch.bfloat16
    q = torch.randn(1, lq, H, d, device="cuda", dtype=dt)
    k = torch.randn(1, 1, s_keys, d, device="cuda", dtype=dt)
    v = torch.randn(1, 1, s_keys, d, device="cuda", dtype=dt)
    keep = torch.ones(1, s_keys, dtype=torch.bool, device="cuda")
    keep[:, s_keys - 60 : s_keys - 60 + n_pad] = False
    add = additive_mask(keep, dt)[:, None, None, :]
    rows = H * lq
    bias = add.expand(1, 1, rows, s_keys).reshape(1, rows, s_keys).contiguous()
    qf = fold_queries(q, 1)
    ref = unfold_output(F.scaled_dot_product_attention(qf.float(), k.float(), v.float(), attn_mask=add.float()), lq, 1)

    def sdpa(backend: SDPBackend | None, mask: torch.Tensor | None = add) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            if backend is None:
                return unfold_output(F.scaled_dot_product_attention(fold_queries(q, 1), k, v, attn_mask=mask), lq, 1)
            with sdpa_kernel([backend]):
                return unfold_output(F.scaled_dot_product_attention(fold_queries(q, 1), k, v, attn_mask=mask), lq, 1)
        return run

    variants: dict[str, Callable[[], torch.Tensor]] = {
        "sdpa default": sdpa(None),
        "sdpa cudnn": sdpa(SDPBackend.CUDNN_ATTENTION),
        "sdpa efficient": sdpa(SDPBackend.EFFICIENT_ATTENTION),
        "sdpa math": sdpa(SDPBackend.MATH),
        "baddbmm+softmax+bmm": lambda: small_query_attention(q, k, v, bias, 1),
        "(flash, NO mask, ref only)": sdpa(SDPBackend.FLASH_ATTENTION, None),
    }
    print(f"\n{name}: q rows {rows} x keys {s_keys}, head_dim {d}, bf16 "
          f"({2 * 2 * rows * s_keys * d / 1e9:.2f} GFLOP)")
    for label, fn in variants.items():
        try:
            out = fn()
            err = (out.float() - ref).abs().max().item() if "NO mask" not in label else float("nan")
            print(f"  {label:<28}{graph_us(fn):>9.1f} us   max_abs vs fp32 {err:.2e}")
        except Exception as exc:  # a backend refusing these shapes is a result too
            print(f"  {label:<28}   n/a ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})")


def residual_gemm() -> None:
    """x + o_proj(a) as linear+add vs one in-place addmm_ (the GEMM's C input)."""
    dt = torch.bfloat16
    x = torch.randn(50, 1024, device="cuda", dtype=dt)
    a = torch.randn(50, 2048, device="cuda", dtype=dt)
    w = torch.randn(1024, 2048, device="cuda", dtype=dt) / math.sqrt(2048)
    print("\nexpert o_proj + residual (50x2048 @ 2048x1024):")
    print(f"  {'linear + add':<28}{graph_us(lambda: x + F.linear(a, w)):>9.1f} us")
    print(f"  {'addmm (C = x)':<28}{graph_us(lambda: torch.addmm(x, a, w.t())):>9.1f} us")
    print(f"  {'x.addmm_ in place':<28}{graph_us(lambda: x.addmm_(a, w.t())):>9.1f} us")


def main() -> int:
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    print(f"device={torch.cuda.get_device_name()} torch={torch.__version__}")
    case("expert (pi0)", lq=50, s_keys=561 + 50, n_pad=20)
    case("prefix (pi0)", lq=561, s_keys=561, n_pad=20)
    residual_gemm()
    return 0


if __name__ == "__main__":
    sys.exit(main())
