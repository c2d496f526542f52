"""CUDA-graph capture bookkeeping, in plain Python so CPU tests can cover it.

A captured graph bakes in every shape and the unrolled NFE loop, so it is valid for exactly
one (nfe, chunk_size, batch, cfg on/off). The key deliberately leaves out ``cfg_beta``'s
value: beta lives in a static device scalar that is refilled before each replay, so sweeping
beta never re-captures. The cache captures on a miss, replays on a hit, and evicts the least
recently used plan past ``max_entries`` (each plan pins its own activation pool on the GPU).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

Plan = TypeVar("Plan")


@dataclass(frozen=True)
class GraphKey:
    """What a captured graph is specialised on."""

    nfe: int
    chunk_size: int
    batch: int
    cfg: bool


def graph_key(nfe: int, chunk_size: int, cfg_beta: float | None) -> GraphKey:
    """The key for one inference request; CFG runs cond and uncond as one batch-2 forward."""
    cfg = cfg_beta is not None
    return GraphKey(nfe=int(nfe), chunk_size=int(chunk_size), batch=2 if cfg else 1, cfg=cfg)


class CaptureCache(Generic[Plan]):
    """key -> captured plan, capturing only when a key is new (or was evicted)."""

    def __init__(
        self,
        capture: Callable[[GraphKey], Plan],
        max_entries: int = 8,
        release: Callable[[Plan], None] | None = None,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self._capture = capture
        self._release = release
        self.max_entries = max_entries
        self._plans: OrderedDict[GraphKey, Plan] = OrderedDict()
        self.captures = 0  # how many times capture() ran (tests and diagnostics read it)
        self.hits = 0

    def __contains__(self, key: GraphKey) -> bool:
        return key in self._plans

    def __len__(self) -> int:
        return len(self._plans)

    def keys(self) -> list[GraphKey]:
        return list(self._plans)

    def get(self, key: GraphKey) -> Plan:
        """The plan for ``key``: replay-ready, captured now if it was not cached."""
        plan = self._plans.get(key)
        if plan is not None:
            self._plans.move_to_end(key)
            self.hits += 1
            return plan
        while len(self._plans) >= self.max_entries:
            _, old = self._plans.popitem(last=False)
            if self._release is not None:
                self._release(old)
        plan = self._capture(key)
        self.captures += 1
        self._plans[key] = plan
        return plan

    def clear(self) -> None:
        """Drop every plan (releasing each), e.g. on close()."""
        while self._plans:
            _, plan = self._plans.popitem(last=False)
            if self._release is not None:
                self._release(plan)
