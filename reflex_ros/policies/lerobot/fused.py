"""Fused CUDA-graph fast path of LeRobot's pi0, pi0.5 and SmolVLA (``Family.fast_path``).

The same math as the family model's ``prefix`` + the Euler loop over its ``velocity``,
rearranged for a GPU at batch 1-2 as the reference model's fast path is
(``policies/reference/fused.py``; why each step pays: ``benchmarks/results/issue6_notes.md``).
One implementation per building block serves the three families; what differs between them
is data (norm kind, activation, head grouping, mask flags, which layers cross-attend), read
from the model's spec:

- **SigLIP tower** (:class:`FusedSiglip`): the patch convolution and the position table as
  the model has them, q/k/v packed into one biased GEMM, SDPA, bias + residual + the next
  LayerNorm as one kernel (``add_layernorm``), fc1 + bias + GELU as one cuBLASLt call;
- **projector / connector**: PaliGemma's biased projection; SmolVLA's pixel shuffle (the
  model's own reshape, one copy of ~3 MB: nothing to fuse) and its bias-free connector;
- **one K/V buffer** ``[slots, B, KVH, S_pad, D]`` per plan, laid out
  ``[prefix | suffix | pad]``: the prefix writes rows ``[0, P)``, each Euler step overwrites
  its own suffix rows; pad keys and padded prefix tokens are masked by an fp32 key bias;
- **RoPE + K/V write** (``rope_heads``): one kernel per layer rotates q and k from the packed
  QKV projection with the model's own cos/sin tables (the model's ``rope.angles``, so the
  float32 angles are bit-identical), writes q folded per KV head (grouped-query: SmolVLA's
  15 query / 5 KV heads become 5 attention batches of 3 x tokens rows) and k, v into the
  buffer; the attention kernel writes its output back token-major over the heads (``fold``),
  straight into the o-projection's input, so grouped heads cost no reordering copy;
- **attention**: the split-key Triton kernel, with a per-token key limit for LeRobot's
  block-causal masks (pi0's state token sees the prefix and itself; SmolVLA's actions are
  causal, and its prefix tokens do not see the state token);
- **SmolVLA cross-attention layers**: the prefix re-projects the VLM layer's post-RoPE K/V
  with the expert's packed k/v projection once per chunk, straight into that layer's slot;
  the expert's queries (RoPE at positions 0..C-1) attend to it with no suffix keys;
- **residual add + RMSNorm** as one kernel for every norm variant: Gemma ``(1 + w)``,
  Llama ``w``, pi0.5's AdaRMS (``(1 + scale)``, ``shift`` and the residual ``gate``); the
  AdaRMS modulation of every norm at every step is ONE GEMM per chunk (it depends on t
  only), over the norms' dense weights packed in place;
- **gated MLP**: gate and up packed into one GEMM, GELU-tanh (Gemma) or SiLU (Llama) times
  up as one kernel;
- **suffix**: the time half of ``action_time_mlp_in`` for all NFE steps is one GEMM per
  chunk; pi0's state token is projected once per chunk (in the prefix graph);
- the Euler update (with RECAP CFG for pi0.5) is one kernel per step.

Packing q/k/v, gate/up and the AdaRMS denses concatenates the weights once (at the first
:meth:`LeRobotFastPath.allocate`, before any capture) and re-binds the model's parameters as
views of the packed tensors, so the eager model runs on the very same storage (identical
values, no second copy). Such a model's ``state_dict`` shares storage: save it with
``torch.save`` or ``.clone()`` its tensors first (safetensors refuses shared storage).

fp8 (``fp8=True``, ``engine/fp8.py``): the MLP GEMMs of the expert and of the VLM (and with
``fp8_scope="all"`` the attention projections too) run on e4m3 weights with per-output-channel
scales; the norm and gated-activation kernels emit their output already quantized per row.

Each op has a ``triton`` and a ``torch`` backend (``engine/kernels.py``); the CPU tests run
the whole path with the torch backend against the model's own eager output on LeRobot's
fixture checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from reflex_ros.engine.fp8 import Fp8Weight, fp8_linear, fp8_shape_ok
from reflex_ros.engine.kernels import KEY_ALIGN, MASKED, FusedOps, default_backend
from reflex_ros.engine.schedule import euler_schedule

#: families this fast path serves
FAMILIES = ("pi0", "pi05", "smolvla")
#: the expert's o_proj input is padded to this many rows (cuBLAS picks a faster kernel for 64
#: than for 50 rows on an H200: issue6_notes.md)
O_PROJ_ROWS = 64


def _round_up(n: int, k: int) -> int:
    return -(-int(n) // k) * k


def supports(model: Any, backend: str | None = None) -> tuple[bool, str]:
    """Whether the fast path covers ``model`` on ``backend`` (default: the device's), and why not."""
    spec = getattr(model, "spec", None)
    if spec is None or spec.model_type not in FAMILIES:
        return False, "not a LeRobot pi0 / pi0.5 / SmolVLA model"
    vlm, expert = spec.vlm, spec.expert
    if vlm.num_kv_heads != expert.num_kv_heads or vlm.head_dim != expert.head_dim:
        return False, "the expert's K/V geometry differs from the VLM's"
    if vlm.num_heads % vlm.num_kv_heads or expert.num_heads % expert.num_kv_heads:
        return False, "query heads are not a multiple of the K/V heads"
    dev = next(model.parameters()).device
    if (backend or default_backend(dev)) == "triton":
        d = vlm.head_dim
        if d < 16 or d & (d - 1):
            return False, f"the Triton kernels need a power-of-two head_dim >= 16 (got {d})"
    return True, ""


# ---------------------------------------------------------------------------------------
# weights: packed projections on the model's own storage
# ---------------------------------------------------------------------------------------


@dataclass
class Proj:
    """One (possibly packed) linear layer: ``x @ w.T (+ b)``, optionally with an fp8 twin."""

    w: torch.Tensor
    b: torch.Tensor | None = None
    fp8: Fp8Weight | None = None


def pack(linears: list[nn.Linear]) -> Proj:
    """Concatenate the linears' weights (and biases) along the output rows once and re-bind
    each layer's parameters as views of the packed tensors (same values, one copy)."""
    if len(linears) == 1:
        lin = linears[0]
        return Proj(lin.weight, lin.bias)
    w = torch.cat([lin.weight.detach() for lin in linears], dim=0)
    has_bias = all(lin.bias is not None for lin in linears)
    b = torch.cat([lin.bias.detach() for lin in linears], dim=0) if has_bias else None
    row = 0
    for lin in linears:
        n = lin.weight.shape[0]
        lin.weight = nn.Parameter(w[row:row + n], requires_grad=False)
        if has_bias:
            lin.bias = nn.Parameter(b[row:row + n], requires_grad=False)
        row += n
    return Proj(w, b)


@dataclass
class NormSite:
    """One RMSNorm: a static fp32 gain (Gemma ``1 + w``, Llama ``w``) or, for AdaRMS, its row
    ``ada`` in the per-step modulation table."""

    eps: float
    gain: torch.Tensor | None = None
    ada: int | None = None


def norm_site(norm: nn.Module, ada_index: int | None = None) -> NormSite:
    from reflex_ros.policies.lerobot.decoder_layers import AdaRMSNorm, GemmaRMSNorm

    if isinstance(norm, AdaRMSNorm):
        return NormSite(norm.eps, ada=ada_index)
    w = norm.weight.detach().to(torch.float32)
    return NormSite(norm.eps, gain=(1.0 + w) if isinstance(norm, GemmaRMSNorm) else w)


@dataclass
class Layer:
    """One decoder layer (VLM or expert) in fused form."""

    norm1: NormSite
    qkv: Proj | None  # packed [q | k | v]; [k | v] for a K/V-only layer; [q] for a cross layer
    o: Proj | None
    norm2: NormSite | None
    gate_up: Proj | None
    down: Proj | None
    has_q: bool = True
    has_kv: bool = True
    #: K/V buffer slot this layer reads/writes (None: the VLM layer feeds no expert layer)
    slot: int | None = None
    #: SmolVLA: the expert layer cross-attends (VLM side: its K/V are re-projected into the slot)
    cross: bool = False
    #: SmolVLA cross layers (VLM side): the expert's k_proj and v_proj weights
    kv_proj: tuple[torch.Tensor, torch.Tensor] | None = None


# ---------------------------------------------------------------------------------------
# the SigLIP tower
# ---------------------------------------------------------------------------------------


class FusedSiglip:
    """:class:`~reflex_ros.policies.lerobot.siglip.SiglipVisionTower` on fused ops."""

    def __init__(self, tower: nn.Module, ops: FusedOps) -> None:
        self.tower, self.ops = tower, ops
        self.layers: list[dict[str, Any]] = []

    def pack(self) -> None:
        t = self.tower
        for layer in t.encoder.layers:
            a = layer.self_attn
            self.layers.append({"qkv": pack([a.q_proj, a.k_proj, a.v_proj]), "layer": layer,
                                "heads": a.heads, "head_dim": a.head_dim})
        self.pos = t.embeddings.position_embedding.weight.detach()[t.position_ids[0]].contiguous()

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """``pixels [N, 3, H, W]`` (model dtype) -> ``[N, T, width]``."""
        t, ops = self.tower, self.ops
        x = t.embeddings.patch_embedding(pixels).flatten(2).transpose(1, 2) + self.pos
        n, seq, width = x.shape
        x = x.reshape(n * seq, width).contiguous()
        first = self.layers[0]["layer"].layer_norm1
        xn = F.layer_norm(x, (width,), first.weight, first.bias, first.eps)
        for j, blk in enumerate(self.layers):
            layer, heads, hd = blk["layer"], blk["heads"], blk["head_dim"]
            qkv = torch.addmm(blk["qkv"].b, xn, blk["qkv"].w.t()).view(n, seq, 3, heads, hd).permute(2, 0, 3, 1, 4)
            o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=hd**-0.5)
            o = o.transpose(1, 2).reshape(n * seq, width)
            att = layer.self_attn.out_proj
            xn = ops.add_layernorm(x, torch.mm(o, att.weight.t()), att.bias, layer.layer_norm2)
            y = torch.mm(ops.linear_gelu(xn, layer.mlp.fc1), layer.mlp.fc2.weight.t())
            nxt = self.layers[j + 1]["layer"].layer_norm1 if j + 1 < len(self.layers) else t.post_layernorm
            xn = ops.add_layernorm(x, y, layer.mlp.fc2.bias, nxt)
        return xn.view(n, seq, width)


# ---------------------------------------------------------------------------------------
# per-plan buffers
# ---------------------------------------------------------------------------------------


@dataclass
class LeRobotBuffers:
    """Static per-plan state shared by the prefix and the denoise graphs.

    ``k``/``v`` [slots, B, KVH, S_pad, D]: rows [0, P) the prefix (VLM K/V, or SmolVLA's
    re-projected cross K/V), [P, P + Ls) the suffix tokens (rewritten every step), the rest
    zero pad. ``bias`` [B, KVH, S_pad] fp32: 0 = attend, MASKED = padded prefix token / pad row.
    ``cos``/``sin`` [B, Ls, D] fp32: the suffix's RoPE (absolute positions, continuing after
    the valid prefix); ``rel_cos``/``rel_sin`` [B, C, D]: SmolVLA cross layers' (0..C-1).
    ``state`` [B, width]: pi0's projected state token. ``times`` [nfe]: the schedule's t_i.
    ``scratch_k``/``scratch_v``: K/V of VLM layers whose keys the expert does not read as is.
    """

    k: torch.Tensor
    v: torch.Tensor
    bias: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    rel_cos: torch.Tensor | None
    rel_sin: torch.Tensor | None
    state: torch.Tensor | None
    times: torch.Tensor
    scratch_k: torch.Tensor | None
    scratch_v: torch.Tensor | None
    batch: int
    nfe: int
    extra: dict[str, Any] = field(default_factory=dict)


def limits_from_ar(ar: list[int], offset: int = 0) -> list[int] | None:
    """Per query token, the number of keys it sees under LeRobot's rule (key ``j`` visible to
    ``i`` iff ``cumsum(ar)[j] <= cumsum(ar)[i]``: always a prefix of the keys), plus
    ``offset`` always-visible keys before them; None when every token sees every key."""
    cum, total = [], 0
    for a in ar:
        total += int(a)
        cum.append(total)
    lim = [offset + sum(1 for c in cum if c <= ci) for ci in cum]
    return None if all(x == offset + len(ar) for x in lim) else lim


def folded_tables(rope: nn.Module, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own ``rope.angles`` -> full-width cos and sign-folded sin ``[B, L, D]`` fp32,
    so ``x * cos + swap_halves(x) * sin`` is LeRobot's ``[x1 c - x2 s, x2 c + x1 s]``."""
    cos, sin = rope.angles(positions)
    return torch.cat([cos, cos], dim=-1).contiguous(), torch.cat([-sin, sin], dim=-1).contiguous()


# ---------------------------------------------------------------------------------------
# the fast path
# ---------------------------------------------------------------------------------------


class LeRobotFastPath:
    """Prefix + the whole Euler loop of a pi0 / pi0.5 / SmolVLA model on fused ops.

    The torch engine drives it (``TorchEngine.build_runner``): :meth:`allocate` once per
    (batch, nfe) plan, then :meth:`prefix` and :meth:`denoise`, each captured as one CUDA
    graph. ``shared_inputs``: under CFG both slots carry the same images, so the vision tower
    runs once at batch 1."""

    shared_inputs = ("images",)

    def __init__(self, model: nn.Module, backend: str | None = None, fp8: bool = False,
                 fp8_scope: str = "mlp") -> None:
        ok, why = supports(model, backend)
        if not ok:
            raise ValueError(f"fused path: {why}")
        if fp8_scope not in ("mlp", "all"):
            raise ValueError(f"fp8_scope {fp8_scope!r}; expected 'mlp' or 'all'")
        self.model = model
        self.spec = model.spec
        self.family = self.spec.model_type
        p0 = next(model.parameters())
        self.device, self.dtype = p0.device, p0.dtype
        self.ops = FusedOps(backend or default_backend(self.device))
        self.fp8, self.fp8_scope = bool(fp8), fp8_scope
        vlm, expert = self.spec.vlm, self.spec.expert
        self.KVH, self.D = vlm.num_kv_heads, vlm.head_dim
        #: query heads per K/V head, in the VLM and in the expert (they share K/V geometry only)
        self.Gv = vlm.num_heads // vlm.num_kv_heads
        self.Ge = expert.num_heads // expert.num_kv_heads
        self.P = int(model.prefix_len)
        self.C = int(self.spec.chunk_size)
        self.pi0, self.pi05, self.smolvla = (self.family == f for f in FAMILIES)
        self.Ls = self.C + (1 if self.pi0 else 0)
        self.S = _round_up(self.P + self.Ls, KEY_ALIGN)
        self.width = expert.hidden_size
        self.act = "silu" if self.smolvla else "gelu_tanh"
        self.scaling = float(vlm.head_dim**-0.5)
        self.backbone = model if self.smolvla else model.backbone
        self.rope = model.rope if self.smolvla else model.backbone.rope
        # LeRobot's attention flags (``ar``), which are static: the prefix's (SmolVLA's state
        # token starts a block) and the suffix's (pi0: [state, actions...] -> [1, 1, 0, ...];
        # pi0.5: [1, 0, ...]; SmolVLA: every action token its own block, i.e. causal)
        prefix_ar = [0] * (self.P - 1) + [1] if self.smolvla else [0] * self.P
        suffix_ar = [1, 1] + [0] * (self.C - 1) if self.pi0 else ([1] * self.C if self.smolvla else [1] + [0] * (self.C - 1))
        self.prefix_limit = self._limit(limits_from_ar(prefix_ar))
        self.suffix_limit = self._limit(limits_from_ar(suffix_ar, offset=self.P))
        self.vision = FusedSiglip(self.backbone.vision, self.ops)
        self._packed = False
        self.vlm_layers: list[Layer] = []
        self.expert_layers: list[Layer] = []
        self.final_norm: NormSite | None = None
        self.ada: Proj | None = None

    def _limit(self, lim: list[int] | None) -> torch.Tensor | None:
        return None if lim is None else torch.tensor(lim, dtype=torch.int32, device=self.device)

    @property
    def backend(self) -> str:
        return self.ops.backend

    # -- building (lazy: the first allocate, before any capture) --------------------------
    def _build(self) -> None:
        if self._packed:
            return
        spec = self.spec
        self.vision.pack()
        vlm_mods = self.backbone.vlm_layers
        expert_mods = self.backbone.expert_layers
        n_vlm = len(vlm_mods)
        if self.smolvla:
            layer_map, cross = list(spec.expert_layer_map), list(spec.cross_attn_layers)
        else:
            layer_map, cross = list(range(n_vlm)), [False] * n_vlm
        slot = 0
        ada_rows: list[nn.Linear] = []

        def site(norm: nn.Module) -> NormSite:
            s = norm_site(norm, len(ada_rows) if hasattr(norm, "dense") else None)
            if s.ada is not None:
                ada_rows.append(norm.dense)
            return s

        for i, layer in enumerate(vlm_mods):
            a = layer.self_attn
            e = layer_map[i]
            kv_only = not hasattr(a, "q_proj")
            qkv = pack([a.k_proj, a.v_proj] if kv_only else [a.q_proj, a.k_proj, a.v_proj])
            ly = Layer(norm_site(layer.input_layernorm), qkv, None if kv_only else Proj(a.o_proj.weight),
                       None if kv_only else norm_site(layer.post_attention_layernorm),
                       None if kv_only else pack([layer.mlp.gate_proj, layer.mlp.up_proj]),
                       None if kv_only else Proj(layer.mlp.down_proj.weight), has_q=not kv_only,
                       slot=slot if e >= 0 else None, cross=bool(cross[i]) and e >= 0)
            if e >= 0:
                ea = expert_mods[e].self_attn
                if ly.cross:
                    ly.kv_proj = (ea.k_proj.weight, ea.v_proj.weight)
                el = expert_mods[e]
                self.expert_layers.append(Layer(
                    site(el.input_layernorm), pack([ea.q_proj] if ly.cross else [ea.q_proj, ea.k_proj, ea.v_proj]),
                    Proj(ea.o_proj.weight), site(el.post_attention_layernorm),
                    pack([el.mlp.gate_proj, el.mlp.up_proj]), Proj(el.mlp.down_proj.weight),
                    has_kv=not ly.cross, slot=slot, cross=ly.cross))
                slot += 1
            self.vlm_layers.append(ly)
        self.final_norm = site(self.backbone.expert_norm)
        self.n_slots = slot
        if ada_rows:
            self.ada = pack(ada_rows)
        if self.fp8:
            self._quantize()
        self._packed = True

    def _quantize(self) -> None:
        """e4m3 twins of the MLP GEMMs (and, scope "all", the attention projections)."""
        for ly in self.vlm_layers + self.expert_layers:
            projs = [ly.gate_up, ly.down] + ([ly.qkv, ly.o] if self.fp8_scope == "all" else [])
            for p in projs:
                if p is not None and fp8_shape_ok(*p.w.shape):
                    p.fp8 = Fp8Weight.from_weight(p.w, p.b)

    # -- buffers ------------------------------------------------------------------------------
    def allocate(self, batch: int, nfe: int) -> LeRobotBuffers:
        """Static buffers of one (batch, nfe) plan; call outside any graph capture."""
        self._build()
        dev, dt = self.device, self.dtype
        B, KVH, S, D, P, Ls, C = batch, self.KVH, self.S, self.D, self.P, self.Ls, self.C
        k = torch.zeros((self.n_slots, B, KVH, S, D), dtype=dt, device=dev)
        bias = torch.full((B, KVH, S), MASKED, dtype=torch.float32, device=dev)
        bias[:, :, P:P + Ls] = 0.0
        need_scratch = any(ly.slot is None or ly.cross for ly in self.vlm_layers)
        scratch = torch.zeros((B, KVH, _round_up(P, KEY_ALIGN), D), dtype=dt, device=dev) if need_scratch else None
        times = torch.tensor([t for t, _ in euler_schedule(nfe)], dtype=torch.float32, device=dev)
        cos = torch.zeros((B, Ls, D), dtype=torch.float32, device=dev)
        rel = torch.zeros((B, C, D), dtype=torch.float32, device=dev) if self.smolvla else None
        state = torch.zeros((B, self.width), dtype=dt, device=dev) if self.pi0 else None
        return LeRobotBuffers(k, torch.zeros_like(k), bias, cos, torch.zeros_like(cos), rel,
                              None if rel is None else torch.zeros_like(rel), state, times, scratch,
                              None if scratch is None else torch.zeros_like(scratch), B, int(nfe))

    # -- GEMMs --------------------------------------------------------------------------------
    def _mm(self, x: torch.Tensor | tuple[torch.Tensor, torch.Tensor], p: Proj) -> torch.Tensor:
        """``x @ p.w.T (+ b)``; on the fp8 twin when ``p`` has one (``x`` may come quantized)."""
        if p.fp8 is not None:
            xq, xs = x if isinstance(x, tuple) else self.ops.quant_rows(x)
            return fp8_linear(xq, xs, p.fp8, self.dtype, self.ops.backend)
        assert not isinstance(x, tuple)
        return torch.mm(x, p.w.t()) if p.b is None else torch.addmm(p.b, x, p.w.t())

    @staticmethod
    def _fp8_in(p: Proj | None) -> bool:
        return p is not None and p.fp8 is not None

    def _norm(self, h: torch.Tensor, y: torch.Tensor | None, site: NormSite, ada: torch.Tensor | None,
              gate_site: NormSite | None = None, fp8: bool = False) -> Any:
        gate = ada[gate_site.ada, 2] if (gate_site is not None and gate_site.ada is not None) else None
        if site.ada is not None:
            return self.ops.residual_norm(h, y, ada[site.ada, 0], site.eps, gate, ada[site.ada, 1], fp8)
        return self.ops.residual_norm(h, y, site.gain, site.eps, gate, None, fp8)

    # -- prefix -------------------------------------------------------------------------------
    def prefix(self, buf: LeRobotBuffers, images: torch.Tensor, image_masks: torch.Tensor,
               lang_tokens: torch.Tensor, lang_masks: torch.Tensor, state: torch.Tensor | None = None,
               image_slot_masks: torch.Tensor | None = None) -> None:
        """Fill ``buf``: the K/V of every expert-visible layer, the key bias, the suffix's RoPE
        tables (and pi0's state token). Arguments are the processor's arrays by name (float
        images, batch 1 under CFG); the model's own ``assemble_prefix`` lays the tokens out."""
        dt, B, P = self.dtype, buf.batch, self.P
        pix = images.to(dt)
        b_img, n = pix.shape[:2]
        feats = self.vision(pix.reshape(b_img * n, *pix.shape[2:]))
        if self.smolvla:
            from reflex_ros.policies.smolvla.model import pixel_shuffle

            m = self.model
            img = F.linear(pixel_shuffle(feats, self.spec.pixel_shuffle_factor), m.connector.weight) * m.scale
            img = img.reshape(b_img, n, img.shape[1], img.shape[-1])
            embs, pad, _ = m.assemble_prefix(img, image_masks, lang_tokens, lang_masks, state.to(dt), image_slot_masks)
        else:
            proj = self.backbone.projector
            img = F.linear(feats, proj.weight, proj.bias).reshape(b_img, -1, proj.weight.shape[0])
            embs, pad, _ = self.backbone.assemble_prefix(img, image_masks, lang_tokens, lang_masks)
        pad = pad.to(torch.bool)
        buf.bias[:, :, :P].copy_(torch.where(pad, 0.0, MASKED)[:, None, :].expand(B, self.KVH, P))
        cos, sin = folded_tables(self.rope, torch.cumsum(pad.to(torch.int64), dim=1) - 1)
        n_valid = pad.to(torch.int64).sum(dim=-1, keepdim=True)
        steps = torch.arange(self.Ls, device=pad.device, dtype=torch.int64)[None, :]
        ecos, esin = folded_tables(self.rope, n_valid + steps)
        buf.cos.copy_(ecos)
        buf.sin.copy_(esin)
        if self.smolvla:
            rcos, rsin = folded_tables(self.rope, steps[:, : self.C].expand(B, self.C))
            buf.rel_cos.copy_(rcos)
            buf.rel_sin.copy_(rsin)
        if self.pi0:
            sp = self.model.state_proj
            buf.state.copy_(F.linear(state.to(dt), sp.weight, sp.bias))
        self._prefix_lm(buf, embs.reshape(B * P, -1).contiguous(), cos, sin)

    def _prefix_lm(self, buf: LeRobotBuffers, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
        ops, B, P, KVH, G, D = self.ops, buf.batch, self.P, self.KVH, self.Gv, self.D
        bias = buf.bias.view(B * KVH, self.S)
        layers = self.vlm_layers
        xn: Any = self._norm(x, None, layers[0].norm1, None, fp8=self._fp8_in(layers[0].qkv))
        for i, ly in enumerate(layers):
            direct = ly.slot is not None and not ly.cross
            kk = buf.k[ly.slot] if direct else buf.scratch_k
            vv = buf.v[ly.slot] if direct else buf.scratch_v
            qkv = self._mm(xn, ly.qkv)
            q = torch.empty((B, KVH, P * G if ly.has_q else 0, D), dtype=x.dtype, device=x.device)
            ops.rope_heads(qkv, cos, sin, q, kk[:, :, :P], vv[:, :, :P], P, G if ly.has_q else 0, KVH)
            if ly.cross:
                self._cross_kv(buf, ly, kk, vv)
            if not ly.has_q:  # the last VLM layer only provides K/V
                break
            o = ops.attention(q.view(B * KVH, P * G, D), kk.view(B * KVH, -1, D), vv.view(B * KVH, -1, D), bias,
                              P, tok_limit=self.prefix_limit, rows_per_tok=G, scale=self.scaling, fold=(KVH, G))
            pending = self._residual(x, o, ly.o)
            xn = self._norm(x, pending, ly.norm2, None, fp8=self._fp8_in(ly.gate_up))
            act = ops.gated_act(self._mm(xn, ly.gate_up), self.act, fp8=self._fp8_in(ly.down))
            pending = self._residual(x, act, ly.down)
            nxt = layers[i + 1]
            xn = self._norm(x, pending, nxt.norm1, None, fp8=self._fp8_in(nxt.qkv))

    def _residual(self, x: torch.Tensor, a: Any, p: Proj) -> torch.Tensor | None:
        """``x += a @ W^T``: in cuBLAS's epilogue (bf16; returns None), or the product is
        returned for the next norm kernel to add (fp8 GEMMs have no accumulate-into-C)."""
        if p.fp8 is None and not isinstance(a, tuple):
            x.addmm_(a, p.w.t())
            return None
        return self._mm(a, p)

    def _cross_kv(self, buf: LeRobotBuffers, ly: Layer, kk: torch.Tensor, vv: torch.Tensor) -> None:
        """SmolVLA: the expert's k/v projections of this VLM layer's post-RoPE K/V (flattened
        per token over heads, as LeRobot does), into the layer's slot; no RoPE of their own."""
        B, P, KVH, D = buf.batch, self.P, self.KVH, self.D
        wk, wv = ly.kv_proj
        for src, w, dst in ((kk, wk, buf.k), (vv, wv, buf.v)):
            flat = src[:, :, :P].transpose(1, 2).reshape(B * P, KVH * D)
            dst[ly.slot, :, :, :P].copy_(torch.mm(flat, w.t()).view(B, P, KVH, D).transpose(1, 2))

    # -- denoise ------------------------------------------------------------------------------
    def denoise(self, buf: LeRobotBuffers, noise: torch.Tensor, beta: torch.Tensor | None) -> torch.Tensor:
        """Euler from ``noise`` [1, C, A] to the sampler's output [1, C, A] fp32 in ``buf.nfe`` steps."""
        m, dt, w = self.model, self.dtype, self.width
        temb = m.time_embedding(buf.times).to(dt)  # [nfe, w]: the model's float64 angles
        ctx: dict[str, Any] = {}
        if self.pi05:
            cond = F.silu(m.time_mlp_out(F.silu(m.time_mlp_in(temb))))
            mod = F.linear(cond, self.ada.w, self.ada.b).view(buf.nfe, -1, 3, w)
            ctx["ada"] = torch.stack([1.0 + mod[:, :, 0].float(), mod[:, :, 1].float(), mod[:, :, 2].float()], dim=2)
        else:
            lin = m.action_time_mlp_in
            ctx["time"] = F.linear(temb, lin.weight[:, w:], lin.bias)  # [nfe, w]: the time half, every step
            ctx["w_a"] = lin.weight[:, :w]
        x = noise.to(torch.float32).clone()
        for i, (_, step) in enumerate(euler_schedule(buf.nfe)):
            v = self.velocity(buf, x, i, ctx)
            self.ops.euler(x, v, step, beta)
        return x

    def suffix(self, buf: LeRobotBuffers, x: torch.Tensor, i: int, ctx: dict[str, Any]) -> torch.Tensor:
        """The suffix tokens [B*Ls, width] of step ``i`` from x [1, C, A] (both CFG slots share x, t)."""
        m, B, C = self.model, buf.batch, self.C
        a = F.linear(x[0].to(self.dtype), m.action_in_proj.weight, m.action_in_proj.bias)  # [C, w]
        if not self.pi05:
            out = m.action_time_mlp_out
            a = F.linear(F.silu(torch.addmm(ctx["time"][i], a, ctx["w_a"].t())), out.weight, out.bias)
        if self.pi0:
            return torch.cat([buf.state[:, None, :], a[None].expand(B, C, a.shape[-1])], dim=1).reshape(B * self.Ls, -1)
        return a.repeat(B, 1) if B > 1 else a

    def velocity(self, buf: LeRobotBuffers, x: torch.Tensor, i: int, ctx: dict[str, Any]) -> torch.Tensor:
        """Velocity rows [B*C, A] (model dtype) of step ``i``. Each residual add is fused with
        the norm after it, so a layer is 4 GEMMs + RoPE/K-V write + attention + 2 norms + act."""
        ops, m = self.ops, self.model
        B, C, Ls, P, KVH, G, D = buf.batch, self.C, self.Ls, self.P, self.KVH, self.Ge, self.D
        ada = ctx["ada"][i] if "ada" in ctx else None
        h = self.suffix(buf, x, i, ctx)
        layers = self.expert_layers
        bias = buf.bias.view(B * KVH, self.S)
        o_pad = torch.empty((max(B * Ls, O_PROJ_ROWS), KVH * G * D), dtype=h.dtype, device=h.device)
        xn: Any = self._norm(h, None, layers[0].norm1, ada, fp8=self._fp8_in(layers[0].qkv))
        for li, ly in enumerate(layers):
            kk, vv = buf.k[ly.slot], buf.v[ly.slot]
            L = C if ly.cross else Ls
            q = torch.empty((B, KVH, L * G, D), dtype=h.dtype, device=h.device)
            # the kernel writes the o_proj input in place, token-major over the heads (fold)
            direct = o_pad[: B * L]
            if ly.cross:
                ops.rope_heads(self._mm(xn, ly.qkv), buf.rel_cos, buf.rel_sin, q, None, None, C, G, KVH)
                ops.attention(q.view(B * KVH, C * G, D), kk.view(B * KVH, self.S, D), vv.view(B * KVH, self.S, D),
                              bias, P, out=direct, scale=self.scaling, fold=(KVH, G))
            else:
                ops.rope_heads(self._mm(xn, ly.qkv), buf.cos, buf.sin, q, kk[:, :, P:P + Ls], vv[:, :, P:P + Ls],
                               Ls, G, KVH)
                ops.attention(q.view(B * KVH, Ls * G, D), kk.view(B * KVH, self.S, D),
                              vv.view(B * KVH, self.S, D), bias, P + Ls, out=direct, tok_limit=self.suffix_limit,
                              rows_per_tok=G, scale=self.scaling, fold=(KVH, G))
            if ly.o.fp8 is not None:
                y = self._mm(o_pad[: B * L], ly.o)
            else:
                y = torch.mm(o_pad, ly.o.w.t())[: B * L]
            xn = self._norm(h, y, ly.norm2, ada, gate_site=ly.norm1, fp8=self._fp8_in(ly.gate_up))
            act = ops.gated_act(self._mm(xn, ly.gate_up), self.act, fp8=self._fp8_in(ly.down))
            y = self._mm(act, ly.down)
            last = li + 1 == len(layers)
            nxt = self.final_norm if last else layers[li + 1].norm1
            xn = self._norm(h, y, nxt, ada, gate_site=ly.norm2,
                            fp8=False if last else self._fp8_in(layers[li + 1].qkv))
        rows = xn.view(B, Ls, -1)[:, Ls - C:].reshape(B * C, -1)
        head = m.action_out_proj
        return F.linear(rows, head.weight, head.bias)
