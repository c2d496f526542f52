"""The chunk-strategy interface: a new raw chunk + what is being executed -> what to publish.

A strategy object lives from configure to cleanup and is the one place where state between
chunks is kept (what was published last and when, for blending or inpainting the next
one). The control loop calls :meth:`ChunkStrategy.guide` before inference (real-time
chunking steers the model with it), :meth:`ChunkStrategy.plan` once per inference and
:meth:`ChunkStrategy.published` after the trajectory went out; ``reset`` on activate and
deactivate (the controller then holds, nothing is being executed).

Anchoring, for every strategy (:meth:`ChunkStrategy.plan_anchored`): a new trajectory starts
from where the command being executed will be when the new one takes over (on arrival, or at
its stamp when the controller defers future-stamped trajectories: the
``defer_future_trajectories`` parameter), not from the measured state, and its first point is
rate-limited against that point. :attr:`ChunkStrategy.command` is the node's model of that
command (``control/handover.py``: the published trajectories through the one JTC model).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from reflex_ros.control.chunking import (
    PlannedChunk,
    SafetyLimits,
    control_period_ns,
    plan_chunk,
    skipped_steps,
)
from reflex_ros.control.handover import CommandModel, takeover_ns

if TYPE_CHECKING:
    from reflex_ros.control.params import Settings
    from reflex_ros.engine.types import ChunkGuide, EngineInfo


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
class GuideRequest:
    """Before inference: what a strategy may steer the new chunk with (real-time chunking).

    The fields are :class:`ChunkRequest`'s without the actions, plus the engine's limits.
    """

    state: np.ndarray
    obs_stamp_ns: int
    now_ns: int
    settings: Settings
    limits: SafetyLimits
    joint_names: tuple[str, ...]
    engine: EngineInfo


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
        #: the command the controller is executing, as the node models it (None: nothing yet)
        self.command: CommandModel | None = None
        self._state: np.ndarray | None = None  # the state the last plan was computed from
        self._defer = False
        #: when the trajectory being planned takes over (set by :meth:`plan_anchored`)
        self.takeover_ns: int | None = None

    @abstractmethod
    def plan(self, request: ChunkRequest) -> PlannedChunk:
        """The trajectory to publish (raise :class:`~reflex_ros.control.chunking.ChunkError`
        to refuse the chunk; nothing is published then)."""

    def guide(self, request: GuideRequest) -> ChunkGuide | None:
        """How to steer the next inference (real-time chunking), or None (the default)."""
        return None

    def published(self, plan: PlannedChunk, published_ns: int) -> None:
        self.executing = Executing(plan, int(published_ns))
        if self.command is None or self.command.defer != self._defer:
            self.command = CommandModel(tuple(str(j) for j in range(plan.positions.shape[1])), self._defer)
        offsets = plan.point_times_ns() - plan.stamp_ns
        self.command.submit(plan.stamp_ns, offsets, plan.positions, int(published_ns), self._state)

    def reset(self) -> None:
        self.executing = None
        self.command = None

    # ------------------------------------------------------------------ helpers for subclasses
    def commanded(self, times_ns: np.ndarray) -> np.ndarray | None:
        """Where the command being executed will be at ``times_ns`` (non-decreasing), rows with
        NaN where unknown; None when nothing is being executed."""
        return None if self.command is None or not self.command.active else self.command.peek(times_ns)

    def plan_anchored(self, request: ChunkRequest,
                      transform: Callable[[np.ndarray, int, int], np.ndarray] | None = None) -> PlannedChunk:
        """:func:`~reflex_ros.control.chunking.plan_chunk` with anchoring (module docstring):
        with ``anchor_to_command`` on and a command being executed, the first point moves at
        most ``max(1, ceil((stamp - T) / dt))`` steps of ``max_delta_per_step`` from the
        command at the takeover T, and the first point's velocity is the central difference
        across the command one period before it, so the published velocities continue the
        executed motion. A late chunk (stamped before T: the controller starts it part-way
        through) holds the command at T on its points before T, so the point it starts
        between is still the anchor. ``transform(targets, stamp_ns, dt_ns)`` reshapes the
        absolute targets before the limits (blend; :attr:`takeover_ns` is T then)."""
        s = request.settings
        self._state = np.asarray(request.state, dtype=np.float64)
        self._defer = bool(s.defer_future_trajectories)
        dt_ns = control_period_ns(s.control_frequency_hz)
        stamp = int(request.obs_stamp_ns) + skipped_steps(s.latency_compensation_ms, s.control_frequency_hz) * dt_ns
        t = self.takeover_ns = takeover_ns(stamp, request.now_ns, self._defer)
        anchor = steps = before = None
        if s.anchor_to_command:
            probe = self.commanded(np.array([min(t, stamp - dt_ns), t], dtype=np.int64))
            if probe is not None and np.all(np.isfinite(probe)):
                before, anchor = probe[0], probe[1]
                steps = max(1, math.ceil((stamp - t) / dt_ns - 1e-6))

        def shape(targets: np.ndarray, stamp_ns: int, period_ns: int) -> np.ndarray:
            if transform is not None:
                targets = transform(targets, stamp_ns, period_ns)
            if anchor is not None and t > stamp_ns:  # late: the points already past hold the anchor
                past = stamp_ns + np.arange(len(targets), dtype=np.int64) * period_ns < t
                targets = np.where(past[:, None], anchor[None, :], targets)
            return targets

        plan = plan_chunk(
            request.actions, state=request.state, obs_stamp_ns=request.obs_stamp_ns,
            control_frequency_hz=s.control_frequency_hz, latency_compensation_ms=s.latency_compensation_ms,
            limits=request.limits, action_mode=s.action_mode, chunk_size=s.chunk_size or None,
            joint_names=request.joint_names, state_tolerance=s.state_limit_tolerance_rad,
            anchor=anchor, anchor_steps=steps, transform=shape if (transform is not None or anchor is not None)
            else None)
        if before is not None and len(plan.positions) >= 2:
            plan.velocities[0] = (plan.positions[1] - before) / (2 * plan.dt_s)
        return plan
