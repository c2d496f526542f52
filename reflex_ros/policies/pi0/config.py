"""pi0's FamilySpec from a checkpoint (torch-free)."""

from __future__ import annotations

from reflex_ros.policies.lerobot.checkpoint import CheckpointFacts
from reflex_ros.policies.lerobot.errors import CheckpointError
from reflex_ros.policies.lerobot.paligemma_spec import paligemma_arch
from reflex_ros.policies.lerobot.spec import FamilySpec
from reflex_ros.policies.lerobot.spec_common import check_dim, common_fields


def paligemma_family_spec(facts: CheckpointFacts, model_type: str, expert_adarms: bool) -> FamilySpec:
    """The spec of a pi0 or pi0.5 checkpoint (they share everything but the suffix)."""
    fields = common_fields(facts, "num_inference_steps")
    resolution = facts.cfg("image_resolution") or [224, 224]
    if resolution[0] != resolution[1]:
        raise CheckpointError(f"config.json image_resolution {resolution}: PaliGemma needs a square input")
    arch = paligemma_arch(facts, fields["tokenizer_hub_id"], expert_adarms)
    if arch["vision"].image_size != int(resolution[0]):
        raise CheckpointError(
            f"image_resolution {resolution} does not match the vision position table "
            f"({arch['vision'].image_size // arch['vision'].patch_size}^2 patches of {arch['vision'].patch_size})"
        )
    check_dim(facts, "model.action_in_proj.weight", 1, fields["max_action_dim"], "max_action_dim")
    check_dim(facts, "model.action_out_proj.weight", 0, fields["max_action_dim"], "max_action_dim")
    return FamilySpec(
        model_type=model_type,
        image_hw=(int(resolution[0]), int(resolution[1])),
        expert_adarms=expert_adarms,
        **arch,
        **fields,
    )


def build_pi0_spec(facts: CheckpointFacts) -> FamilySpec:
    """pi0: the expert's suffix starts with a state token, so ``state_proj`` must fit max_state_dim."""
    spec = paligemma_family_spec(facts, "pi0", expert_adarms=False)
    check_dim(facts, "model.state_proj.weight", 1, spec.max_state_dim, "max_state_dim")
    return spec
