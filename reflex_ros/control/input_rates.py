"""Per-input delivery: the received rate and the age of the newest message, per topic.

The observation assembler records every camera frame and joint state as it is offered
(:meth:`InputRates.received`, O(1)) and every one it accepted with its stamp
(:meth:`InputRates.accepted`). The node reports them in /diagnostics once a second
(:func:`input_report`): ``input <topic> rate_hz`` (messages received over the last
:data:`WINDOW_S` seconds), ``input <topic> age_ms`` (node clock minus the newest accepted
stamp) and ``input <topic> received``.

A starving input shows as WARN *before* the watchdog pauses inference: an input is starving
when its newest message is older than half of ``max_observation_age_ms``, or when its rate
means messages arrive further apart than that (a 1 Hz camera against a 500 ms watchdog is
WARN at every tick, not only at the ticks that happen to fall into a gap). ROS-free.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

WINDOW_S = 2.0
_KEEP = 1024  # arrivals kept per topic: a 500 Hz joint state over the whole window


class _Input:
    __slots__ = ("arrivals", "newest_stamp_ns", "n_received", "first_ns")

    def __init__(self) -> None:
        self.arrivals: collections.deque[int] = collections.deque(maxlen=_KEEP)
        self.newest_stamp_ns: int | None = None
        self.n_received = 0
        self.first_ns: int | None = None


class InputRates:
    """See the module docstring. ``received`` / ``accepted`` from the executor thread (or a
    bag reader); the report from anywhere (deque appends are atomic; readers take a copy)."""

    def __init__(self, topics: Iterable[str]) -> None:
        self._inputs = {t: _Input() for t in topics}

    @property
    def topics(self) -> list[str]:
        return list(self._inputs)

    def received(self, topic: str, arrival_ns: int) -> None:
        entry = self._inputs[topic]
        entry.arrivals.append(int(arrival_ns))
        entry.n_received += 1
        if entry.first_ns is None:
            entry.first_ns = int(arrival_ns)

    def accepted(self, topic: str, stamp_ns: int) -> None:
        entry = self._inputs[topic]
        if entry.newest_stamp_ns is None or stamp_ns > entry.newest_stamp_ns:
            entry.newest_stamp_ns = int(stamp_ns)

    def rate_hz(self, topic: str, now_ns: int, window_s: float = WINDOW_S) -> float:
        """Messages received per second over the last ``window_s`` (or since the first one)."""
        entry = self._inputs[topic]
        if entry.first_ns is None:
            return 0.0
        span_ns = min(int(window_s * 1e9), int(now_ns) - entry.first_ns)
        if span_ns <= 0:
            return 0.0
        start = int(now_ns) - span_ns
        n = sum(1 for t in list(entry.arrivals) if t > start)
        return n * 1e9 / span_ns

    def age_ms(self, topic: str, now_ns: int) -> float | None:
        """Node clock minus the newest accepted stamp (None before the first one)."""
        stamp = self._inputs[topic].newest_stamp_ns
        return None if stamp is None else (int(now_ns) - stamp) * 1e-6

    def received_count(self, topic: str) -> int:
        return self._inputs[topic].n_received


def input_report(rates: InputRates, now_ns: int, max_observation_age_ms: float
                 ) -> tuple[list[str], dict[str, str]]:
    """(problems, diagnostic values): one line per starving input, and per input its rate,
    the newest message's age and the count received."""
    limit_ms = 0.5 * float(max_observation_age_ms)
    problems: list[str] = []
    values: dict[str, str] = {}
    for topic in rates.topics:
        rate = rates.rate_hz(topic, now_ns)
        age = rates.age_ms(topic, now_ns)
        values[f"input {topic} rate_hz"] = f"{rate:.1f}"
        values[f"input {topic} age_ms"] = "n/a" if age is None else f"{age:.0f}"
        values[f"input {topic} received"] = str(rates.received_count(topic))
        if age is None:
            problems.append(f"{topic}: no message yet")
        elif age > limit_ms:
            problems.append(f"{topic}: newest message {age:.0f} ms old at {rate:.1f} Hz (the watchdog pauses "
                            f"at {max_observation_age_ms:g} ms)")
        elif rate > 0 and 1000.0 / rate > limit_ms:
            problems.append(f"{topic}: {rate:.1f} Hz, messages ~{1000.0 / rate:.0f} ms apart (the watchdog pauses "
                            f"at {max_observation_age_ms:g} ms)")
    return problems, values


__all__ = ["WINDOW_S", "InputRates", "input_report"]
