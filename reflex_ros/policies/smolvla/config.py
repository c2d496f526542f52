"""SmolVLA's FamilySpec from a checkpoint and its backbone config (torch-free).

LeRobot builds SmolVLA from ``AutoConfig.from_pretrained(vlm_model_name)`` (the SmolVLM2
repo), truncates the text model to ``num_vlm_layers`` and derives the expert from the same
text config. So head counts and norm epsilons come from that hub config, exactly as in
LeRobot, while widths, depths and the pixel-shuffle factor are read from the weights and
cross-checked against it.
"""

from __future__ import annotations

import math

from reflex_ros.policies.lerobot.checkpoint import CheckpointFacts
from reflex_ros.policies.lerobot.errors import CheckpointError, HubFileNotFoundError
from reflex_ros.policies.lerobot.hub_cache import download_hint
from reflex_ros.policies.lerobot.spec import DecoderArch, FamilySpec, VisionArch
from reflex_ros.policies.lerobot.spec_common import check_dim, common_fields, read_hub_config

VLM = "model.vlm_with_expert.vlm.model."
TEXT = VLM + "text_model."
VISION = VLM + "vision_model."
EXPERT = "model.vlm_with_expert.lm_expert."
#: SmolVLA's own RoPE (``apply_rope``) is called with its default wavelength, whatever the
#: backbone's rope_theta says
SMOLVLA_ROPE_WAVELENGTH = 10000.0


def _backbone_config(hub_id: str) -> dict:
    config = read_hub_config(hub_id)
    if config is None:
        raise HubFileNotFoundError(
            f"SmolVLA reads its backbone config from {hub_id!r}, which is not in the Hugging Face cache; "
            f"fetch it once with {download_hint(hub_id)}"
        )
    return config


def expert_layout(num_vlm: int, num_expert: int, attention_mode: str, every_n: int) -> tuple[list[int], list[bool]]:
    """Per VLM layer: the expert layer beside it (-1: none) and whether it cross-attends.

    LeRobot pairs VLM layer ``i`` with expert layer ``i // (num_vlm // num_expert)`` on every
    ``num_vlm // num_expert``-th layer, and runs self-attention on VLM layers that are a
    multiple of ``self_attn_every_n_layers`` (all layers outside ``cross`` mode)."""
    if num_expert <= 0 or num_vlm % num_expert:
        raise CheckpointError(f"{num_vlm} VLM layers are not a multiple of {num_expert} expert layers")
    step = num_vlm // num_expert
    layer_map = [(i // step) if i % step == 0 else -1 for i in range(num_vlm)]
    cross = [("cross" in attention_mode) and not (every_n > 0 and i % every_n == 0) for i in range(num_vlm)]
    return layer_map, cross


def build_smolvla_spec(facts: CheckpointFacts) -> FamilySpec:
    fields = common_fields(facts, "num_steps")
    hub_id = str(facts.cfg("vlm_model_name") or "HuggingFaceTB/SmolVLM2-500M-Video-Instruct")
    backbone = _backbone_config(hub_id)
    text_cfg = backbone.get("text_config") or {}
    vision_cfg = backbone.get("vision_config") or {}

    # --- vision tower + connector
    v_width, _, patch, _ = facts.shape(VISION + "embeddings.patch_embedding.weight")
    positions = facts.shape(VISION + "embeddings.position_embedding.weight")[0]
    side = math.isqrt(positions)
    if side * side != positions:
        raise CheckpointError(f"vision position table has {positions} rows, not a square grid")
    if vision_cfg.get("hidden_size", v_width) != v_width:
        raise CheckpointError(f"{hub_id} vision hidden_size {vision_cfg.get('hidden_size')} != weights {v_width}")
    vision = VisionArch(
        hidden_size=v_width,
        intermediate_size=facts.shape(VISION + "encoder.layers.0.mlp.fc1.weight")[0],
        num_layers=facts.layer_count(VISION + "encoder.layers."),
        num_heads=int(vision_cfg.get("num_attention_heads", 0) or 0),
        patch_size=patch,
        image_size=side * patch,
        layer_norm_eps=float(vision_cfg.get("layer_norm_eps", 1e-6)),
    )
    if vision.num_heads <= 0 or v_width % vision.num_heads:
        raise CheckpointError(f"{hub_id} vision_config.num_attention_heads is missing or does not divide {v_width}")
    text_width, connector_in = facts.shape(VLM + "connector.modality_projection.proj.weight")
    factor = math.isqrt(connector_in // v_width)
    if factor * factor * v_width != connector_in:
        raise CheckpointError(f"connector input {connector_in} is not vision width {v_width} x a square factor")
    if int(backbone.get("scale_factor", factor)) != factor:
        raise CheckpointError(f"{hub_id} scale_factor {backbone.get('scale_factor')} != weights' {factor}")
    if side % factor:
        raise CheckpointError(f"{side} patches per side do not pixel-shuffle by {factor}")

    # --- text model (truncated) and expert
    heads = int(text_cfg.get("num_attention_heads", 0) or 0)
    kv_heads = int(text_cfg.get("num_key_value_heads", heads) or heads)
    head_dim = int(text_cfg.get("head_dim") or (text_width // heads if heads else 0))
    if heads <= 0 or head_dim <= 0:
        raise CheckpointError(f"{hub_id} text_config lacks num_attention_heads / head_dim")
    eps = float(text_cfg.get("rms_norm_eps", 1e-5))
    check_dim(facts, TEXT + "layers.0.self_attn.q_proj.weight", 0, heads * head_dim, f"{hub_id} heads*head_dim")
    check_dim(facts, TEXT + "layers.0.self_attn.k_proj.weight", 0, kv_heads * head_dim, f"{hub_id} kv_heads*head_dim")
    num_vlm = facts.layer_count(TEXT + "layers.")
    configured = int(facts.cfg("num_vlm_layers", -1) or -1)
    if configured > 0 and configured != num_vlm:
        raise CheckpointError(f"config.json num_vlm_layers={configured} but the weights have {num_vlm} text layers")
    vlm = DecoderArch(
        hidden_size=text_width,
        intermediate_size=facts.shape(TEXT + "layers.0.mlp.gate_proj.weight")[0],
        num_layers=num_vlm,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=eps,
        rope_theta=SMOLVLA_ROPE_WAVELENGTH,
        vocab_size=facts.shape(TEXT + "embed_tokens.weight")[0],
    )
    num_expert = facts.layer_count(EXPERT + "layers.")
    expert = DecoderArch(
        hidden_size=facts.shape(EXPERT + "layers.0.input_layernorm.weight")[0],
        intermediate_size=facts.shape(EXPERT + "layers.0.mlp.gate_proj.weight")[0],
        num_layers=num_expert,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=eps,
        rope_theta=SMOLVLA_ROPE_WAVELENGTH,
    )
    mode = str(facts.cfg("attention_mode", "cross_attn"))
    every_n = int(facts.cfg("self_attn_every_n_layers", -1))
    layer_map, cross = expert_layout(num_vlm, num_expert, mode, every_n)
    for i, (e, is_cross) in enumerate(zip(layer_map, cross, strict=True)):
        if e < 0:
            if not is_cross:
                raise CheckpointError(
                    f"VLM layer {i} has no expert layer but is a self-attention layer; LeRobot cannot denoise "
                    f"with num_expert_layers={num_expert}, self_attn_every_n_layers={every_n}"
                )
            continue
        want_in = kv_heads * head_dim if is_cross else expert.hidden_size
        for proj in ("k_proj", "v_proj"):
            check_dim(facts, f"{EXPERT}layers.{e}.self_attn.{proj}.weight", 1, want_in,
                      f"expert layer {e} ({'cross' if is_cross else 'self'}-attention) {proj} input")
        check_dim(facts, f"{EXPERT}layers.{e}.self_attn.q_proj.weight", 0, heads * head_dim, "expert heads*head_dim")
    check_dim(facts, "model.state_proj.weight", 1, fields["max_state_dim"], "max_state_dim")
    check_dim(facts, "model.action_in_proj.weight", 1, fields["max_action_dim"], "max_action_dim")

    resize = facts.cfg("resize_imgs_with_padding")
    if resize:
        image_hw = (int(resize[1]), int(resize[0]))  # SmolVLA stores (width, height)
    else:
        first = (facts.cfg("input_features") or {})[fields["camera_keys"][0]]
        image_hw = (int(first["shape"][1]), int(first["shape"][2]))
    if image_hw[0] % patch or image_hw[1] % patch or image_hw[0] != image_hw[1]:
        raise CheckpointError(f"SmolVLA image size {image_hw} must be square and a multiple of patch size {patch}")

    special: list[int] = []
    add_special = bool(facts.cfg("add_image_special_tokens", False))
    if add_special:
        from reflex_ros.policies.lerobot.tokenizer import LeRobotTokenizer

        tok = LeRobotTokenizer.from_pretrained(fields["tokenizer_hub_id"] or hub_id)
        for key, default in (("fake_image_token", "<fake_token_around_image>"), ("global_image_token", "<global-img>")):
            token_id = tok.special_token_id(key, default)
            if token_id is None:
                raise CheckpointError(f"add_image_special_tokens is set but the tokenizer has no {default}")
            special.append(int(token_id))

    return FamilySpec(
        model_type="smolvla",
        image_hw=image_hw,
        vision=vision,
        vlm=vlm,
        expert=expert,
        backbone_hub_id=hub_id,
        pixel_shuffle_factor=factor,
        attention_mode=mode,
        self_attn_every_n_layers=every_n,
        expert_layer_map=layer_map,
        cross_attn_layers=cross,
        add_image_special_tokens=add_special,
        image_special_token_ids=special,
        notes={"prefix_length": int(facts.cfg("prefix_length", -1) or -1)},
        **fields,
    )
