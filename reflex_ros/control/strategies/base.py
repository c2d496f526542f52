"""The chunk-strategy interface: a new raw chunk + what is being executed -> what to publish.

A strategy object lives from configure to cleanup and is the one place where state between
chunks is kept (what was published last and when, for blending or inpainting the next
one). The control loop calls :meth:`ChunkStrategy.plan` once per inference and
:meth:`ChunkStrategy.published` after the trajectory went out; ``reset`` on activate and
deactivate (the controller then holds, nothing is being executed).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from reflex_ros.control.chunking import PlannedChunk, SafetyLimits

if TYPE_CHECKING:
    from reflex_ros.control.params import Settings


@dataclass(frozen=True)
class ChunkRequest:
    """One new chunk and everything needed to turn it into a trajectory.

    actions: ``(rows, action_dim)`` as the engine produced them.
    state: the observed joint positions ``(J,)`` the chunk was computed from.
    obs_stamp_ns: the observation's stamp (row 0 is meant for it).
    now_ns: when planning happens (ROS time).
    settings: the live parameter snapshot (rates, latency compensation, chunk size, action
        mode, and whatever parameters a strategy adds).
    """

    actions: np.ndarray
    state: np.ndarray
    obs_stamp_ns: int
    now_ns: int
    settings: Settings
    limits: SafetyLimits
    joint_names: tuple[str, ...]


@dataclass(frozen=True)
class Executing:
    """The trajectory the controller is executing: the last one published, and when."""

    plan: PlannedChunk
    published_ns: int


class ChunkStrategy(ABC):
    """Subclass, set ``name``, implement :meth:`plan`; register it in ``strategies/__init__.py``."""

    name: ClassVar[str]

    def __init__(self) -> None:
        self.executing: Executing | None = None

    @abstractmethod
    def plan(self, request: ChunkRequest) -> PlannedChunk:
        """The trajectory to publish (raise :class:`~reflex_ros.control.chunking.ChunkError`
        to refuse the chunk; nothing is published then)."""

    def published(self, plan: PlannedChunk, published_ns: int) -> None:
        self.executing = Executing(plan, int(published_ns))

    def reset(self) -> None:
        self.executing = None
