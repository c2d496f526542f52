"""Passive latency learning: latency_compensation_ms from the real control loop, never a probe.

Moving a robot to measure it could surprise someone standing next to an arm in an unsafe
pose, so the tracker only *watches*: every published chunk reports its observation-to-publish
latency, and the actuation-lag estimator (commanded vs measured joint positions of motion
the policy commanded anyway) reports how long the arm takes to follow.

The loop latency the robot really has is ``p95(observation-to-publish) + actuation lag``:
p95 of the rolling window (100 samples) so 19 chunks in 20 are compensated fully, plus the
median of the last few lag estimates (one noisy estimate should not move the arm's timing).
The lag is added when the value is computed rather than baked into each sample, so a new
lag estimate takes effect at once instead of after the window turns over.

Stability rule: once the window has >= 30 samples, every ``check_every`` samples is a check;
when the loop latency has stayed within the tolerance of the previous check for 3 consecutive
checks, the tracker emits it. The seed's tolerance is 5 ms. On a loaded 2-core machine the p95
of a 100-chunk window wanders by tens of milliseconds (176..220 ms measured in the demo), so a
5 ms rule never fired; yet the compensation acts only through ``k = ceil(L / dt)``, whole
control periods. So once the control period is known (:attr:`LatencyTracker.control_period_ms`,
set by the calibration session from ``control_frequency_hz``) the tolerance is one control
period (never less than 5 ms), and a stable value is emitted again only when it changes ``k``
and differs from the last emitted value by more than that tolerance (hysteresis: a p95 sitting
on a period boundary does not flip ``k`` back and forth). Without a period the seed's 5 ms rule
applies. An explicit latency_compensation_ms turns updates off.
"""

from __future__ import annotations

import math
import statistics
from collections import deque

import numpy as np

WINDOW = 100
MIN_SAMPLES = 30
STABILITY_MS = 5.0
STABLE_CHECKS = 3
CHECK_EVERY = 5
LAG_ESTIMATES_KEPT = 5
PERCENTILE = 95.0


class LatencyTracker:
    """Rolling-window loop-latency learner (see the module docstring).

    ``add`` returns the new latency_compensation_ms when an update is due, else None.
    """

    def __init__(
        self,
        *,
        window: int = WINDOW,
        min_samples: int = MIN_SAMPLES,
        stability_ms: float = STABILITY_MS,
        stable_checks: int = STABLE_CHECKS,
        check_every: int = CHECK_EVERY,
        enabled: bool = True,
        control_period_ms: float | None = None,
    ) -> None:
        if not (1 <= min_samples <= window):
            raise ValueError(f"need 1 <= min_samples <= window, got {min_samples}, {window}")
        if stable_checks < 1 or check_every < 1 or stability_ms < 0:
            raise ValueError("stable_checks and check_every must be >= 1 and stability_ms >= 0")
        self.window = window
        self.min_samples = min_samples
        self.stability_ms = stability_ms
        self.stable_checks = stable_checks
        self.check_every = check_every
        self.enabled = enabled
        #: one control period (ms); None = the seed's fixed ``stability_ms`` rule. Settable live
        #: (a control-rate change), read at each check.
        self.control_period_ms = control_period_ms
        self._samples: deque[float] = deque(maxlen=window)
        self._lags: deque[float] = deque(maxlen=LAG_ESTIMATES_KEPT)
        self._since_check = 0
        self._last_check: float | None = None
        self._stable_run = 0
        self._emitted: float | None = None
        self._emitted_parts: tuple[float, float | None] | None = None  # (p95 obs->publish, lag) of it
        self.n_total = 0

    # -- inputs

    def record_actuation_lag(self, lag_ms: float) -> None:
        """One actuation-lag estimate (ms); non-finite or negative estimates are ignored."""
        if lag_ms is not None and math.isfinite(lag_ms) and lag_ms >= 0:
            self._lags.append(float(lag_ms))

    def add(self, obs_to_publish_ms: float) -> float | None:
        """Record one chunk's observation-to-publish latency; maybe return a new value."""
        if obs_to_publish_ms is None or not math.isfinite(obs_to_publish_ms) or obs_to_publish_ms < 0:
            return None
        self._samples.append(float(obs_to_publish_ms))
        self.n_total += 1
        if not self.enabled or len(self._samples) < self.min_samples:
            return None
        self._since_check += 1
        if self._last_check is not None and self._since_check < self.check_every:
            return None
        return self._check()

    # -- state

    @property
    def actuation_lag_ms(self) -> float | None:
        return statistics.median(self._lags) if self._lags else None

    @property
    def n_samples(self) -> int:
        return len(self._samples)

    @property
    def learned_ms(self) -> float | None:
        """The last value emitted (None before the first update)."""
        return self._emitted

    @property
    def learned_parts(self) -> tuple[float, float | None] | None:
        """The two parts of :attr:`learned_ms` when it was emitted: (p95 observation-to-publish,
        actuation lag or None when no lag was estimated yet)."""
        return self._emitted_parts

    def p95_ms(self) -> float | None:
        """p95 observation-to-publish of the window (None on an empty window)."""
        if not self._samples:
            return None
        return float(np.percentile(np.fromiter(self._samples, dtype=np.float64), PERCENTILE))

    def loop_latency_ms(self) -> float | None:
        """p95 of the window plus the actuation lag (None on an empty window)."""
        p95 = self.p95_ms()
        return None if p95 is None else p95 + (self.actuation_lag_ms or 0.0)

    def state(self) -> str:
        """Short text for diagnostics: "warming 12/30", "stabilising 1/3", "learned 83.2 ms"."""
        if not self.enabled:
            return "explicit (learning off)"
        if self._emitted is not None:
            return f"learned {self._emitted:.1f} ms"
        if len(self._samples) < self.min_samples:
            return f"warming {len(self._samples)}/{self.min_samples}"
        return f"stabilising {self._stable_run}/{self.stable_checks}"

    # -- the rule

    @property
    def tolerance_ms(self) -> float:
        """How far two checks (or a new value and the emitted one) may differ and still count
        as the same latency: one control period when known, never less than ``stability_ms``."""
        period = self.control_period_ms
        if period is None or not math.isfinite(period) or period <= 0:
            return self.stability_ms
        return max(self.stability_ms, float(period))

    def steps(self, latency_ms: float) -> int | None:
        """``k = ceil(latency_ms / dt)``, the rows the node drops for this latency (None
        without a control period)."""
        period = self.control_period_ms
        if period is None or not math.isfinite(period) or period <= 0:
            return None
        return math.ceil(round(latency_ms / period, 9))

    def _check(self) -> float | None:
        self._since_check = 0
        value = self.loop_latency_ms()
        assert value is not None
        tolerance = self.tolerance_ms
        previous, self._last_check = self._last_check, value
        if previous is None or abs(value - previous) > tolerance:
            self._stable_run = 0
            return None
        self._stable_run += 1
        if self._stable_run < self.stable_checks:
            return None
        if self._emitted is not None:
            if abs(value - self._emitted) <= tolerance:
                return None
            if self.steps(value) is not None and self.steps(value) == self.steps(self._emitted):
                return None  # the same k: nothing the node does would change
        self._emitted = round(value, 1)
        lag = self.actuation_lag_ms
        self._emitted_parts = (round(value - (lag or 0.0), 1), None if lag is None else round(lag, 1))
        return self._emitted
