"""Physical latency floor of one chunk: what the hardware cannot beat.

floor = (weight bytes one chunk must read) / (measured HBM bandwidth)
      + (prefix FLOPs) / (measured bf16 matmul throughput)

The expert is memory-bound (50 action tokens reuse each weight only 50 times, NFE times per
chunk), the prefix is compute-bound (~560 tokens through a 2 B-parameter LM), so those are the
two terms that dominate. The byte/FLOP counts are plain arithmetic on the config (CPU-testable);
the two rates are measured on the GPU in the same process as the latency rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from reflex_ros.policies.reference.config import PolicyConfig


def _decoder_layer_params(width: int, mlp_dim: int, cfg: PolicyConfig) -> tuple[int, int]:
    """(qkv params, o + mlp params) of one decoder layer, norms ignored."""
    qkv = width * (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
    rest = cfg.num_heads * cfg.head_dim * width + 3 * width * mlp_dim
    return qkv, rest


def vision_matmul_params(cfg: PolicyConfig) -> int:
    w, m = cfg.vision_width, cfg.vision_mlp_dim
    block = 4 * w * w + 2 * w * m
    return cfg.patch_size**2 * 3 * w + cfg.vision_depth * block + w * cfg.width


def prefix_matmul_params(cfg: PolicyConfig) -> int:
    """Prefix LM weights actually multiplied (the last layer only projects K/V)."""
    qkv, rest = _decoder_layer_params(cfg.width, cfg.mlp_dim, cfg)
    return cfg.depth * qkv + (cfg.depth - 1) * rest + cfg.max_state_dim * cfg.width


def expert_matmul_params(cfg: PolicyConfig) -> int:
    ew = cfg.expert_width
    qkv, rest = _decoder_layer_params(ew, cfg.expert_mlp_dim, cfg)
    return cfg.depth * (qkv + rest) + cfg.action_dim * ew + 3 * ew * ew + ew * cfg.action_dim


def weight_bytes_per_chunk(cfg: PolicyConfig, nfe: int, bytes_per_param: int = 2) -> int:
    """Vision + prefix weights once, expert weights once per step (batch 2 reads them once too)."""
    return bytes_per_param * (vision_matmul_params(cfg) + prefix_matmul_params(cfg) + nfe * expert_matmul_params(cfg))


def prefix_flops(cfg: PolicyConfig) -> int:
    """Matmul + attention FLOPs of the vision tower and the prefix LM for one observation."""
    n_img = cfg.patches_per_image
    vision = 2 * cfg.num_image_tokens * vision_matmul_params(cfg)
    vision += cfg.num_cameras * cfg.vision_depth * 4 * n_img * n_img * cfg.vision_width
    P = cfg.prefix_len
    lm = 2 * P * prefix_matmul_params(cfg)
    lm += (cfg.depth - 1) * 4 * P * P * cfg.num_heads * cfg.head_dim
    return vision + lm


@dataclass
class Floor:
    weight_bytes: int
    hbm_gbps: float
    prefix_tflop: float
    matmul_tflops: float

    @property
    def memory_ms(self) -> float:
        return self.weight_bytes / (self.hbm_gbps * 1e9) * 1e3

    @property
    def compute_ms(self) -> float:
        return self.prefix_tflop / self.matmul_tflops * 1e3

    @property
    def total_ms(self) -> float:
        return self.memory_ms + self.compute_ms


def measure_hbm_gbps(device: str = "cuda", gib: float = 1.0, iters: int = 20) -> float:
    """Device-to-device copy bandwidth (read + write bytes), best of ``iters``."""
    import torch

    n = int(gib * (1 << 30)) // 2
    src = torch.empty(n, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        b.synchronize()
        best = min(best, a.elapsed_time(b))
    del src, dst
    return 2 * n * 2 / (best * 1e-3) / 1e9


def measure_matmul_tflops(device: str = "cuda", n: int = 8192, iters: int = 10) -> float:
    """bf16 square-matmul throughput, best of ``iters``."""
    import torch

    a = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    b = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    a @ b
    best = float("inf")
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        a @ b
        e.record()
        e.synchronize()
        best = min(best, s.elapsed_time(e))
    return 2 * n**3 / (best * 1e-3) / 1e12


def measure_floor(cfg: PolicyConfig, nfe: int, device: str = "cuda") -> Floor:
    return Floor(
        weight_bytes=weight_bytes_per_chunk(cfg, nfe),
        hbm_gbps=measure_hbm_gbps(device),
        prefix_tflop=prefix_flops(cfg) / 1e12,
        matmul_tflops=measure_matmul_tflops(device),
    )
