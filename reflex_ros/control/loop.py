"""The control loop, ROS-free: observation -> engine -> chunk strategy -> publish, with subscribers.

In the style of openpi-client's ``Runtime``: the loop owns the cycle and knows nothing of
what watches it; statistics, the motion history and the live calibration are
:class:`LoopSubscriber` objects in a list. The node (or a test) supplies the clock, a
``publish`` function, the engine, the observation assembler and the chunk strategy.

Threads: :meth:`ControlLoop.start` runs the cycle on its own thread, waking every
``execute_steps`` control periods on the supplied clock (sim time aware); a rate change wakes
it, so the tick being waited for moves to the new period at once. A cycle that runs
long makes the loop skip the missed ticks (``overrun``); nothing is queued. Inputs are offered
from any other thread (the ROS executor). Subscribers are called on the thread of the event;
a subscriber that raises is logged (throttled), never fatal.

Settings: one immutable :class:`~reflex_ros.control.params.Settings` snapshot, read once per
cycle and swapped atomically by :meth:`ControlLoop.update_settings`. Changes from a user pin
their names; automatic changes (the calibrator) never override a pinned value.

Refusals: a joint state beyond the limits by more than ``state_limit_tolerance_rad``
(:class:`~reflex_ros.control.observation.StateFault`) and an input stamped in the future or
out of order (:class:`~reflex_ros.control.observation.StampError`) are refused when offered,
logged naming the joint/topic and the values; an observation older than the previous one
used is never inferred on. Hold: :meth:`ControlLoop.set_hold` publishes a hold at the
commanded position and stops chunks until released (checked again right before a chunk is
published, under the same lock, so no chunk computed before the hold can slip out after it).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from reflex_ros.control.chunking import ChunkError, PlannedChunk, SafetyLimits, control_period_ns, state_fault
from reflex_ros.control.jtc import TimedTrajectory, TrajectoryExecutor
from reflex_ros.control.observation import AssembledObservation, ObservationAssembler, StampError, StateFault
from reflex_ros.control.params import Settings, check_all
from reflex_ros.control.strategies import ChunkRequest, ChunkStrategy, GuideRequest, make_strategy
from reflex_ros.engine.types import ChunkResult, Engine, Observation, ObservationError, ReflexError

LOG_THROTTLE_S = 2.0
USER, INPUT, AUTO = "user", "input", "auto"  # update sources: pins / neither / respects pins
NO_OBSERVATION, STALE, REFUSED, ENGINE_ERROR, OVERRUN = "no_observation", "stale", "refused", "engine_error", "overrun"
HELD, OUT_OF_ORDER = "held", "out_of_order"


class Logger(Protocol):
    def info(self, msg: str) -> Any: ...
    def warning(self, msg: str) -> Any: ...
    def error(self, msg: str) -> Any: ...


class ThrottledLog:
    """One line per (key, message kind) every ``period_s``; errors keyed by their start."""

    def __init__(self, logger: Logger, period_s: float = LOG_THROTTLE_S) -> None:
        self.logger = logger
        self.period_s = period_s
        self._last: dict[tuple[str, str], float] = {}

    def __call__(self, key: str, level: str, text: str, kind: str | None = None) -> None:
        """``kind`` groups messages whose text varies (values, stamps) into one throttle slot."""
        slot = (key, kind if kind is not None else text[:60] if level == "error" else text.split(":", 1)[0])
        now = time.monotonic()
        if now - self._last.get(slot, -math.inf) >= self.period_s:
            self._last[slot] = now
            getattr(self.logger, level)(text)


@dataclass(frozen=True)
class PublishedChunk:
    """One published chunk and how it came about (what subscribers get)."""

    plan: PlannedChunk
    observation: AssembledObservation
    result: ChunkResult
    settings: Settings
    cycle_start_ns: int
    published_ns: int
    inference_ms: float  # wall time around engine.infer

    @property
    def obs_to_publish_ms(self) -> float:
        return (self.published_ns - self.observation.stamp_ns) * 1e-6


@dataclass(frozen=True)
class SettingsUpdate:
    """What :meth:`ControlLoop.update_settings` did."""

    applied: dict[str, Any] = field(default_factory=dict)
    pinned: dict[str, Any] = field(default_factory=dict)  # automatic changes not applied: set by a user
    refused: str | None = None  # the validator's reason (nothing applied)


class LoopSubscriber:
    """Override what you need; every method is optional."""

    def on_start(self, loop: ControlLoop) -> None:
        """The loop was activated (called on the activating thread)."""

    def on_stop(self) -> None:
        """The loop stopped (deactivate, failure)."""

    def on_measurement(self, stamp_ns: int, positions: np.ndarray) -> None:
        """An accepted joint state (executor thread)."""

    def on_published(self, event: PublishedChunk) -> None:
        """A chunk went out (control thread)."""

    def on_skipped(self, reason: str, count: int = 1, detail: str = "") -> None:
        """A cycle published nothing: no_observation, stale, out_of_order, held, refused,
        engine_error (``detail`` says why); or ``count`` ticks were skipped (overrun)."""

    def on_input_rejected(self, topic: str, error: Exception) -> None:
        """A message was dropped (bad encoding, size, missing joint, NaN, corrupt payload;
        StampError: stamped in the future / out of order; StateFault: beyond the limits)."""

    def on_settings_changed(self, changed: Mapping[str, Any], source: str) -> None:
        """Settings were swapped (on the thread that changed them)."""

    def on_hold(self, held: bool) -> None:
        """``~/hold`` was set (``held``) or released (on the service's thread)."""

    def on_housekeeping(self, now_ns: int) -> None:
        """About once a second, off the control path (the node's timer)."""


class ControlLoop:
    """See the module docstring.

    ``publish(plan, result, settings, inference_ms)`` sends the trajectory (it runs on the
    control thread and must not block); ``now_ns()`` is the clock stamps live on; ``validate(values)``
    returns why a settings dict is refused, or None.
    """

    def __init__(self, *, engine: Engine, assembler: ObservationAssembler, strategy: ChunkStrategy,
                 settings: Settings, publish: Callable[[PlannedChunk, ChunkResult, Settings, float], None],
                 now_ns: Callable[[], int], logger: Logger, subscribers: Iterable[LoopSubscriber] = (),
                 validate: Callable[[dict[str, Any]], str | None] | None = None,
                 pinned: Iterable[str] = ()) -> None:
        self.engine = engine
        self.assembler = assembler
        self.strategy = strategy
        self.subscribers: list[LoopSubscriber] = list(subscribers)
        self.log = ThrottledLog(logger)
        self.logger = logger
        self._settings = settings
        self._settings_lock = threading.Lock()
        self._publish = publish
        self._now = now_ns
        self._validate = validate
        self.pinned: set[str] = set(pinned)
        self._limits: tuple[tuple, SafetyLimits] | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()  # a settings change: re-read the period while waiting
        self._thread: threading.Thread | None = None
        self.failure: str | None = None  # set when the engine failed; the loop has stopped
        self.watchdog_stale = False
        self.held = False  # set_hold(True): no chunk is published until set_hold(False)
        self._publish_lock = threading.Lock()  # a chunk's publish vs. a hold
        # what the controller was last told: ("plan", (plan, published_ns, state)) or ("hold", positions)
        self._commanded: tuple[str, Any] | None = None
        self._last_obs_stamp: int | None = None
        assembler.state_check = self._check_state
        assembler.max_future_ns = int(settings.max_future_stamp_ms * 1e6)

    @classmethod
    def build(cls, engine: Engine, settings: Settings, *, publish: Callable[..., None], now_ns: Callable[[], int],
              logger: Logger, subscribers: Iterable[LoopSubscriber] = (), pinned: Iterable[str] = ()) -> ControlLoop:
        """The loop the parameters describe: its assembler (camera topics and message type,
        joints, sync capacity), the chunk strategy, and every rule of the parameter table
        (with the engine's limits) as the settings validator."""
        assembler = ObservationAssembler(
            settings.camera_topics, settings.joint_names, camera_names=settings.camera_names or None,
            joint_topic=settings.joint_states_topic, camera_type=settings.camera_message_type,
            on_zero_stamp=lambda topic: logger.warning(f"{topic}: header.stamp is 0; using the arrival time instead"))
        return cls(engine=engine, assembler=assembler, strategy=make_strategy(settings.chunk_strategy),
                   settings=settings, publish=publish, now_ns=now_ns, logger=logger, subscribers=subscribers,
                   validate=lambda values: check_all(values, engine.info), pinned=pinned)

    # ------------------------------------------------------------------ subscribers

    def _notify(self, method: str, *args: Any) -> None:
        for subscriber in self.subscribers:
            try:
                getattr(subscriber, method)(*args)
            except Exception as exc:  # an observer must never break the loop
                self.log(f"subscriber:{method}", "error", f"{type(subscriber).__name__}.{method}: "
                                                          f"{type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ inputs (any thread)

    def _reject(self, topic: str, exc: Exception) -> None:
        text = str(exc) if isinstance(exc, ReflexError) else f"{topic}: {type(exc).__name__}: {exc}"
        kind = type(exc).__name__ if isinstance(exc, StampError | StateFault) else None
        self.log(topic, "error", f"dropped message: {text}", kind)
        self._notify("on_input_rejected", topic, exc)

    def _check_state(self, state: np.ndarray) -> None:
        """A joint state beyond the limits by more than the tolerance is a fault (assembler
        hook: runs before the state is buffered, so it never reaches the model)."""
        s = self._settings
        fault = state_fault(state, self.limits, s.state_limit_tolerance_rad, self.assembler.joint_names)
        if fault is not None:
            raise StateFault(f"{self.assembler.joint_topic}: {fault}; joint state refused")

    def offer_camera(self, topic: str, msg: Any) -> None:
        try:
            self.assembler.offer_camera(topic, msg, self._now())
        except Exception as exc:  # one bad message never kills the loop
            self._reject(topic, exc)

    def offer_joint_state(self, msg: Any) -> None:
        try:
            stamp, positions = self.assembler.offer_joint_state(msg, self._now())
        except Exception as exc:
            self._reject(self.assembler.joint_topic, exc)
            return
        self._notify("on_measurement", stamp, positions)

    # ------------------------------------------------------------------ settings

    @property
    def settings(self) -> Settings:
        return self._settings

    def update_settings(self, changes: Mapping[str, Any], *, source: str = USER) -> SettingsUpdate:
        """Validate and swap in ``changes``; the next cycle uses them. ``source`` USER pins the
        names, AUTO skips pinned names, INPUT does neither."""
        with self._settings_lock:
            old = self._settings
            pinned = {k: v for k, v in changes.items() if source == AUTO and k in self.pinned}
            wanted = {k: v for k, v in changes.items() if k not in pinned}
            new = old.replace(wanted)
            changed = {k: v for k, v in wanted.items() if getattr(old, k) != getattr(new, k)}
            if changed and self._validate is not None and (reason := self._validate(new.as_dict())) is not None:
                return SettingsUpdate(pinned=pinned, refused=reason)
            if source == USER:
                self.pinned.update(wanted)
            if not changed:
                return SettingsUpdate(pinned=pinned)
            self._settings = new
            self.assembler.max_future_ns = int(new.max_future_stamp_ms * 1e6)
        self._wake.set()  # a waiting loop re-reads the period (a rate change applies at once)
        self._notify("on_settings_changed", changed, source)
        return SettingsUpdate(changed, pinned)

    @property
    def limits(self) -> SafetyLimits:
        s = self._settings
        key = (s.position_lower, s.position_upper, s.max_delta_per_step)
        cached = self._limits
        if cached is None or cached[0] != key:
            cached = (key, SafetyLimits.from_lists(*key))
            self._limits = cached
        return cached[1]

    def hold_command(self) -> tuple[np.ndarray, int] | None:
        """(positions, control period ns) to hold: the last measured positions, clamped to the
        position limits (a hold is a command like any other: an arm that drifted past a soft
        limit is brought back inside it), or None before any joint state."""
        state = self.assembler.last_state
        if state is None:
            return None
        limits = self.limits
        positions = np.clip(np.asarray(state, dtype=np.float64), limits.position_lower, limits.position_upper)
        self._commanded = ("hold", positions)  # what the controller is told from now on
        return positions, control_period_ns(self._settings.control_frequency_hz)

    def commanded_position(self, now_ns: int | None = None) -> np.ndarray | None:
        """Where the controller is commanded to be at ``now_ns`` (default: now): the chunk
        strategy's command model (every chunk published since activate, deferral aware), else
        the last published chunk evaluated with the one JTC model (control/jtc.py: it took over
        on arrival, ramping from the state then to point 0), or the last hold, else the last
        measured state; None before any joint state. Not clipped here: the node's gate does."""
        commanded = self._commanded
        if commanded is None:
            state = self.assembler.last_state
            return None if state is None else np.asarray(state, dtype=np.float64).copy()
        kind, value = commanded
        if kind == "hold":
            return np.array(value, dtype=np.float64)
        t_ns = self._now() if now_ns is None else int(now_ns)
        commanded_by = getattr(self.strategy, "commanded", None)  # the strategy's command model (deferral aware)
        if commanded_by is not None:
            rows = commanded_by(np.array([t_ns], dtype=np.int64))
            if rows is not None and np.all(np.isfinite(rows)):
                return np.asarray(rows, dtype=np.float64).reshape(-1).copy()
        plan, published_ns, state = value
        names = self.assembler.joint_names
        executor = TrajectoryExecutor(names, np.asarray(state, dtype=np.float64))
        offsets = plan.point_times_ns() - plan.stamp_ns
        executor.submit(TimedTrajectory(names, offsets, plan.positions, plan.stamp_ns), published_ns, state)
        return executor.sample(t_ns)

    def set_hold(self, on: bool, publish_hold: Callable[[np.ndarray, int], Any] | None = None) -> np.ndarray | None:
        """Hold (``on``): ``publish_hold(positions, control period ns)`` at once with the
        commanded position (None when no position is known yet: nothing is published), and no
        chunk is published until released; returns the positions held. Release: chunks resume
        from the next observation (rate-limited from the observed state, as always)."""
        with self._publish_lock:
            self.held = bool(on)
            self._notify("on_hold", self.held)
            if not on:
                return None
            positions = self.commanded_position()
            if positions is not None and publish_hold is not None:
                publish_hold(positions, control_period_ns(self._settings.control_frequency_hz))
                self._commanded = ("hold", positions)
            self.strategy.reset()  # nothing of a chunk is being executed any more
            return positions

    # ------------------------------------------------------------------ running

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self.failure = None
        self.watchdog_stale = False
        self._last_obs_stamp = None
        self.strategy.reset()
        self._stop.clear()
        self._notify("on_start", self)
        self._thread = threading.Thread(target=self._run, name="reflex_control_loop", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 60.0) -> bool:
        """Stop and join (an in-flight inference finishes first). False if it would not stop."""
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=timeout_s)
            if thread.is_alive():
                return False
        if thread is not None:
            self.strategy.reset()
            self._notify("on_stop")
        return True

    def warm_up(self, iterations: int) -> float:
        """Run the engine on zero inputs (first calls allocate, JIT and capture graphs; none of
        that may land on the first real chunk). Returns the wall time in ms."""
        info, s = self.engine.info, self._settings
        size = info.image_size
        names = self.assembler.camera_names or list(info.camera_names)
        obs = Observation(images={name: np.zeros((size, size, 3), np.uint8) for name in names},
                          state=np.zeros(len(self.assembler.joint_names), np.float32),
                          instruction=s.instruction or "warm up", stamp_ns=0)
        started = time.perf_counter()
        for _ in range(iterations):
            self.engine.infer(obs, nfe=s.nfe or None, cfg_beta=s.cfg_beta or None)
        return (time.perf_counter() - started) * 1e3

    def housekeeping(self) -> None:
        self._notify("on_housekeeping", self._now())

    def _period_ns(self) -> int:
        s = self._settings
        return s.execute_steps * control_period_ns(s.control_frequency_hz)

    def _next_tick(self, last_tick: int | None, last_period: int) -> int | None:
        """Wait on the loop's clock (sim time aware) for the tick after ``last_tick`` (the
        first one is now) and return it; None once stopped. The period is read again whenever
        a settings change wakes the wait (and at least every 50 ms), so a rate change moves
        the tick being waited for: 0.1 Hz for a moment never leaves the loop asleep for 100 s.
        A changed period whose tick is already past starts a new schedule now (the ticks a
        slower rate never had are not overruns)."""
        while not self._stop.is_set():
            now = self._now()
            if last_tick is None:
                return now
            period = self._period_ns()
            if now < last_tick - 4 * period:  # clock jumped back (sim time reset)
                return now
            due = last_tick + period
            if now >= due:
                return due if period == last_period else now
            self._wake.wait(min((due - now) * 1e-9, 0.05))
            self._wake.clear()
        return None

    def _run(self) -> None:
        last_tick: int | None = None
        last_period = self._period_ns()
        while (tick := self._next_tick(last_tick, last_period)) is not None:
            try:
                self.cycle()
            except Exception as exc:  # a bug in a cycle must not kill the loop silently
                self.log("loop", "error", f"control cycle: {type(exc).__name__}: {exc}")
            now, period = self._now(), self._period_ns()
            if now > tick + period:  # overran: skip the missed ticks, never queue them
                missed = (now - tick) // period
                self._notify("on_skipped", OVERRUN, int(missed))
                tick += int(missed) * period
            last_tick, last_period = tick, period

    def _skip(self, reason: str, detail: str = "") -> None:
        self._notify("on_skipped", reason, 1, detail)

    def cycle(self) -> PublishedChunk | None:
        """One control cycle: assemble, infer, plan, publish. Returns what was published."""
        s = self._settings
        t_start = self._now()
        if self.held:
            self._skip(HELD)
            return None
        assembled, rejected = self.assembler.assemble(int(s.sync_slop_ms * 1e6), s.instruction, now_ns=t_start)
        for topic, exc in rejected:
            self._reject(topic, exc)
        if assembled is None:
            self._skip(NO_OBSERVATION)
            return None
        last = self._last_obs_stamp
        if last is not None and assembled.stamp_ns < last <= t_start + self.assembler.max_future_ns:
            detail = (f"newest observation {assembled.stamp_ns * 1e-9:.3f} s is older than the previous one "
                      f"{last * 1e-9:.3f} s (node clock {t_start * 1e-9:.3f} s); not inferring on it")
            self.log("observation", "warning", f"observation refused: {detail}", OUT_OF_ORDER)
            self._skip(OUT_OF_ORDER, detail)
            return None
        age_ms = (t_start - assembled.stamp_ns) * 1e-6
        if age_ms > s.max_observation_age_ms:
            if not self.watchdog_stale:
                self.watchdog_stale = True
                self.logger.warning(
                    f"watchdog: newest synchronized observation is {age_ms:.0f} ms old "
                    f"(max_observation_age_ms {s.max_observation_age_ms:g}); pausing inference")
            self._skip(STALE)
            return None
        if self.watchdog_stale:
            self.watchdog_stale = False
            self.logger.info("watchdog: fresh observations again; resuming inference")

        t_infer = time.perf_counter()
        try:
            # real-time chunking: the strategy may steer the inference towards what is executing
            guide = self.strategy.guide(GuideRequest(assembled.observation.state, assembled.stamp_ns, t_start, s,
                                                     self.limits, self.assembler.joint_names, self.engine.info))
            steer = {"guide": guide} if guide is not None else {}
            result = self.engine.infer(assembled.observation, nfe=s.nfe or None, cfg_beta=s.cfg_beta or None,
                                       **steer)
        except ObservationError as exc:
            self._reject("observation", exc)
            return None
        except Exception as exc:  # the engine failed: the owner runs error processing
            reason = str(exc) if isinstance(exc, ReflexError) else f"{type(exc).__name__}: {exc}"
            self.failure = f"engine failed: {reason}"
            self.logger.error(self.failure)
            self._stop.set()
            self._skip(ENGINE_ERROR, self.failure)
            return None
        infer_ms = (time.perf_counter() - t_infer) * 1e3

        request = ChunkRequest(result.actions, assembled.observation.state, assembled.stamp_ns, self._now(), s,
                               self.limits, self.assembler.joint_names)
        try:
            plan = self.strategy.plan(request)
        except ChunkError as exc:
            self.log("chunk", "error", f"chunk not published: {exc}")
            self._skip(REFUSED, str(exc))
            return None
        with self._publish_lock:  # a hold that came while inferring wins
            if self._stop.is_set():
                return None
            if self.held:
                self._skip(HELD)
                return None
            self._publish(plan, result, s, infer_ms)
            t_pub = self._now()
            self._last_obs_stamp = assembled.stamp_ns
            self._commanded = ("plan", (plan, t_pub, np.asarray(assembled.observation.state, dtype=np.float64)))
        self.strategy.published(plan, t_pub)
        event = PublishedChunk(plan, assembled, result, s, t_start, t_pub, infer_ms)
        self._notify("on_published", event)
        return event
