"""pi0.5's FamilySpec from a checkpoint (torch-free)."""

from __future__ import annotations

from reflex_ros.policies.lerobot.checkpoint import CheckpointFacts
from reflex_ros.policies.lerobot.spec import FamilySpec
from reflex_ros.policies.pi0.config import paligemma_family_spec


def build_pi05_spec(facts: CheckpointFacts) -> FamilySpec:
    """pi0.5: AdaRMS expert norms (``...layernorm.dense``), no state projection."""
    return paligemma_family_spec(facts, "pi05", expert_adarms=True)
