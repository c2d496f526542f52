"""Physical latency floor of one chunk: what the hardware cannot beat.

floor = (weight bytes one chunk must read) / (measured HBM bandwidth)
      + (prefix FLOPs) / (measured bf16 matmul throughput)

The expert is memory-bound (50 action tokens reuse each weight only 50 times, NFE times per
chunk), the prefix is compute-bound (~560 tokens through a 2 B-parameter LM), so those are the
two terms that dominate. The byte/FLOP counts are plain arithmetic (CPU-testable): on the
reference model's config (:func:`weight_bytes_per_chunk`, :func:`prefix_flops`), or counted
from any LeRobot family model's own parameters (:func:`model_work`): the weights the prefix
graph multiplies once per chunk, the weights each Euler step multiplies, and the prefix
matmul + attention FLOPs with each group's token count. The two rates are measured on the GPU
in the same process as the latency rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

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


# ---------------------------------------------------------------------------------------
# any LeRobot family model, counted from its own parameters
# ---------------------------------------------------------------------------------------


@dataclass
class ModelWork:
    """What one chunk of a model must do at minimum.

    ``once_params``: weights read once per chunk (vision, projector, VLM, per-chunk expert
    constants such as pi0.5's AdaRMS modulation and SmolVLA's cross K/V projections);
    ``step_params``: weights read at every Euler step (the expert); ``mlp_params``: of those
    two, the gated-MLP weights (the ones the fp8 path stores in one byte), as (once, step);
    ``prefix_flops``: matmul + attention FLOPs of the prefix; ``groups``: the count by part,
    for the table's note."""

    once_params: int
    step_params: int
    prefix_flops: int
    mlp_params: tuple[int, int] = (0, 0)
    groups: dict[str, int] = field(default_factory=dict)

    def weight_bytes(self, nfe: int, bytes_per_param: float = 2.0, fp8_mlp: bool = False) -> int:
        """Bytes one chunk reads (CFG's batch 2 reads each weight once too)."""
        once, step = self.once_params, self.step_params
        if not fp8_mlp:
            return int(bytes_per_param * (once + nfe * step))
        m_once, m_step = self.mlp_params
        return int(bytes_per_param * (once - m_once + nfe * (step - m_step)) + (m_once + nfe * m_step))


def _numel(params: Iterable[Any]) -> int:
    return sum(int(p.numel()) for p in params)


def model_work(model: Any) -> ModelWork:
    """:class:`ModelWork` of a LeRobot pi0 / pi0.5 / SmolVLA model from its own modules.

    Embedding tables are left out (a chunk reads 48 of their rows). FLOPs: 2 x tokens x
    weights per linear group (images' tokens for the vision tower, the prefix's P tokens for
    the VLM), plus 4 x T^2 x width per attention layer."""
    spec = model.spec
    smol = spec.model_type == "smolvla"
    bb = model if smol else model.backbone
    vis = spec.vision
    per_image = (vis.image_size // vis.patch_size) ** 2
    n_img = spec.num_cameras * per_image
    P = int(model.prefix_len)
    vision = _numel(bb.vision.parameters())
    proj_mod = model.connector if smol else bb.projector
    proj = _numel(proj_mod.parameters())
    proj_tokens = n_img // (spec.pixel_shuffle_factor**2) if smol else n_img
    vlm = _numel(bb.vlm_layers.parameters())
    vlm_mlp = _numel(p for layer in bb.vlm_layers if hasattr(layer, "mlp") for p in layer.mlp.parameters())
    cross = 0
    if smol:
        cross = _numel(p for layer in bb.expert_layers for name, p in layer.self_attn.named_parameters()
                       if name.split(".")[0] in ("k_proj", "v_proj") and layer.self_attn.k_proj.in_features
                       != layer.input_layernorm.weight.shape[0])
    ada = _numel(p for name, p in bb.expert_layers.named_parameters() if ".dense." in f".{name}")
    ada += _numel(p for name, p in bb.expert_norm.named_parameters() if name.startswith("dense"))
    expert = _numel(bb.expert_layers.parameters()) + _numel(bb.expert_norm.parameters()) - cross - ada
    expert_mlp = _numel(p for layer in bb.expert_layers for p in layer.mlp.parameters())
    heads = ("action_in_proj", "action_out_proj", "action_time_mlp_in", "action_time_mlp_out")
    expert += sum(_numel(getattr(model, h).parameters()) for h in heads if hasattr(model, h))
    time_mlps = sum(_numel(getattr(model, h).parameters()) for h in ("time_mlp_in", "time_mlp_out") if hasattr(model, h))
    state = _numel(model.state_proj.parameters()) if hasattr(model, "state_proj") else 0
    once = vision + proj + vlm + cross + ada + time_mlps + state
    # FLOPs: vision linears + its attention, projector, VLM linears + attention, cross K/V
    vflops = 2 * n_img * vision + spec.num_cameras * vis.num_layers * 4 * per_image * per_image * vis.hidden_size
    lm = spec.vlm
    attn_layers = sum(1 for layer in bb.vlm_layers if hasattr(layer.self_attn, "q_proj"))
    lflops = 2 * P * (vlm + cross) + attn_layers * 4 * P * P * lm.num_heads * lm.head_dim
    flops = vflops + 2 * proj_tokens * proj + lflops
    return ModelWork(once, expert, flops, (vlm_mlp, expert_mlp),
                     {"vision": vision, "projector": proj, "vlm": vlm, "cross_kv": cross, "adarms": ada,
                      "expert": expert})


def measure_floor_model(model: Any, nfe: int, device: str = "cuda", fp8: bool = False,
                        rates: tuple[float, float] | None = None) -> Floor:
    """The floor of one chunk of a LeRobot family model (bf16 weights; ``fp8``: its MLP
    weights at one byte and their FLOPs at twice the bf16 rate, Hopper's e4m3 ratio).
    ``rates`` (GB/s, TFLOP/s) reuses measurements from the same run."""
    work = model_work(model)
    hbm, tflops = rates if rates is not None else (measure_hbm_gbps(device), measure_matmul_tflops(device))
    flops = work.prefix_flops
    if fp8:  # the MLP share of the prefix FLOPs runs at twice the rate
        p = int(model.prefix_len)
        flops -= p * work.mlp_params[0]  # 2 * P * mlp / 2
    return Floor(weight_bytes=work.weight_bytes(nfe, fp8_mlp=fp8), hbm_gbps=hbm, prefix_tflop=flops / 1e12,
                 matmul_tflops=tflops)
