"""Auto-calibration for a serving node: the configure-time steps and the live loop observer.

At configure (``auto_calibrate`` on), :class:`LiveCalibration` runs the resolver's steps 1-2
before the engine is loaded (:meth:`~LiveCalibration.select_runtime`: precision and
provider) and steps 3-5 after (:meth:`~LiveCalibration.resolve`: nfe, chunk_size, latency
compensation from the cache, measuring on a miss). Explicit parameters are never changed.

While active it is a :class:`~reflex_ros.control.loop.LoopSubscriber`: every published
chunk's observation-to-publish latency goes to the passive tracker and the commanded
trajectory to the motion history; once a second (off the control path) the actuation lag is
estimated from the history; a learned latency is applied to the loop's settings at once (the
next chunk uses it) unless a user pinned latency_compensation_ms; a live rate change
re-resolves nfe and chunk_size from the cached measurement. ROS-free.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from reflex_ros.calibration.motion_history import MotionHistory
from reflex_ros.calibration.session import CalibrationSession, Resolution
from reflex_ros.control.embodiment import load_embodiment
from reflex_ros.control.loop import AUTO, ControlLoop, Logger, LoopSubscriber, PublishedChunk, ThrottledLog
from reflex_ros.control.params import AUTOMATIC_SENTINELS
from reflex_ros.engine.types import Engine, ReflexError
from reflex_ros.vocab import CPU, TORCH

LOG = "[auto-calibrate]"
LAG_ESTIMATE_PERIOD_S = 1.0
RATE_PARAMETERS = frozenset({"control_frequency_hz", "execute_steps"})


class LiveCalibration(LoopSubscriber):
    """See the module docstring. ``explicit``: the explicit parameters and their values; none
    of them is ever changed, and (minus "automatic" sentinels such as ``nfe`` 0, which pin
    nothing) they are the override ladder's top rung."""

    def __init__(self, values: Mapping[str, Any], explicit: Mapping[str, Any], logger: Logger) -> None:
        if not values["embodiment"]:
            raise ReflexError("auto_calibrate needs an embodiment (the calibration cache is keyed by it)")
        self.logger = logger
        self.log = ThrottledLog(logger)
        self.explicit = frozenset(explicit)
        ladder = {k: v for k, v in explicit.items()
                  if not (k in AUTOMATIC_SENTINELS and v == AUTOMATIC_SENTINELS[k])}
        self.session = CalibrationSession(values["calibration_cache"], load_embodiment(values["embodiment"]), None,
                                          ladder, bool(values["calibrate_force"]), logger.info)
        self.history = MotionHistory()
        self._loop: ControlLoop | None = None
        self._engine_rows: int | None = None
        self._next_lag_estimate = 0.0

    @property
    def state(self) -> str:
        return str(self.session.state)

    # ------------------------------------------------------------------ configure

    def select_runtime(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Steps 1-2, before the engine is loaded: the dtype/provider changes to load it with."""
        precision, provider = self.session.select_runtime(values["export_dir"], values["engine"])
        if values["engine"] == TORCH:  # the resolver speaks ONNX provider names
            provider = "cpu" if provider == CPU else "cuda"
        wanted = {"dtype": precision, "provider": provider}
        return {k: v for k, v in wanted.items() if k not in self.explicit and values[k] != v}

    def _changes(self, res: Resolution, values: Mapping[str, Any]) -> dict[str, Any]:
        chunk = int(res.chunk_size) if self._engine_rows is None else min(int(res.chunk_size), self._engine_rows)
        resolved = {"nfe": int(res.nfe), "chunk_size": chunk, "latency_compensation_ms": float(res.latency_compensation_ms)}
        return {k: v for k, v in resolved.items() if k not in self.explicit and values[k] != v}

    def resolve(self, engine: Engine, values: Mapping[str, Any]) -> dict[str, Any]:
        """Steps 3-5 (cache hit = instant, miss = measure + write): nfe/chunk/latency changes."""
        self._engine_rows = int(engine.info.chunk_size)
        res = self.session.resolve(engine, control_frequency_hz=values["control_frequency_hz"],
                                   execute_steps=values["execute_steps"])
        self.logger.info(
            f"{LOG} {'cache hit' if res.cache_hit else f'measured in {res.measure_s:.1f} s'}; "
            f"resolved in {res.resolve_s:.2f} s: nfe={res.nfe} chunk_size={res.chunk_size} "
            f"latency_compensation_ms={res.latency_compensation_ms:.1f} cache={res.cache_path}")
        return self._changes(res, values)

    def close(self) -> None:
        """Wait for background cache writes (cleanup)."""
        try:
            self.session.flush()
        except Exception as exc:
            self.logger.warning(f"{LOG} flush: {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ loop subscriber

    def _guard(self, what: Callable[[], None]) -> None:
        try:
            what()
        except Exception as exc:  # calibration must never stop the node
            self.log("calibration", "error", f"{LOG} {type(exc).__name__}: {exc}")

    def _apply(self, loop: ControlLoop, changes: Mapping[str, Any], what: str) -> None:
        update = loop.update_settings(changes, source=AUTO)
        if update.refused is not None:
            self.logger.warning(f"{LOG} {what} refused: {update.refused}")
        for name, value in update.pinned.items():
            if name == "latency_compensation_ms":
                self.log("calibration", "info", f"{LOG} latency_compensation_ms was set explicitly; "
                                                f"not applying the learned {value:.1f} ms")

    def on_start(self, loop: ControlLoop) -> None:
        self._loop = loop

    def on_measurement(self, stamp_ns: int, positions: Any) -> None:
        self.history.add_measurement(stamp_ns, positions)

    def on_hold(self, held: bool) -> None:
        """A hold ends the commanded motion, and whatever the arm does until the release (held
        still, moved by hand, a simulator's scene reset) answers no command of ours; left in
        the history, the stale hold command next to the moved arm would pull the lag estimate
        towards zero (measured in the demo: 7 ms for a 150 ms delay). So the history restarts
        at the release; the lag estimates already made are kept."""
        if not held:
            self.history.clear()

    def on_published(self, event: PublishedChunk) -> None:
        def record() -> None:
            plan = event.plan
            self.history.add_command(plan.stamp_ns, plan.dt_ns, plan.positions, published_ns=event.published_ns)
            learned = self.session.record_loop_latency(event.obs_to_publish_ms)
            if learned is not None and self._loop is not None:
                self._apply(self._loop, {"latency_compensation_ms": round(float(learned), 3)}, "learned latency")
        self._guard(record)

    def on_settings_changed(self, changed: Mapping[str, Any], source: str) -> None:
        loop = self._loop
        if source == AUTO or loop is None or not (RATE_PARAMETERS & set(changed)):
            return

        def re_resolve() -> None:
            s = loop.settings
            res = self.session.re_resolve(control_frequency_hz=s.control_frequency_hz, execute_steps=s.execute_steps)
            self._apply(loop, self._changes(res, s.as_dict()), "re-resolved values")
        self._guard(re_resolve)

    def on_housekeeping(self, now_ns: int) -> None:
        now = time.monotonic()
        if self._loop is None or not self._loop.running or now < self._next_lag_estimate:
            return
        self._next_lag_estimate = now + LAG_ESTIMATE_PERIOD_S

        def estimate() -> None:
            lag = self.history.estimate_lag_ms(now_ns)
            if lag is not None:
                self.session.record_actuation_lag(lag)
        self._guard(estimate)


__all__ = ["LiveCalibration"]
