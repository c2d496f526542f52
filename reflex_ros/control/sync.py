"""Approximate-time synchronisation of N camera streams and the joint state, without ROS.

message_filters is not available from pip, and its ApproximateTime policy emits a callback
per matched set, which a control loop would then have to queue. A loop only ever wants the
newest consistent observation, so this keeps a small sorted buffer per stream and answers
"what is the newest set whose stamps lie within ``slop``?" on demand.

Payloads are opaque: the observation assembler buffers raw messages here and decodes only
the members of the set it uses. Thread-safe: the executor thread adds, the control loop
thread asks.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SyncedSet:
    """One message per stream, all stamps within the slop.

    stamp_ns: the newest member stamp (the time at which the whole observation existed);
        chunks are stamped from it.
    """

    stamp_ns: int
    stamps_ns: dict[str, int]
    payloads: dict[str, Any]

    @property
    def spread_ns(self) -> int:
        return max(self.stamps_ns.values()) - min(self.stamps_ns.values())


class _Stream:
    """Stamp-sorted bounded buffer (arrivals may be out of order across transports)."""

    __slots__ = ("capacity", "stamps", "payloads")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"stream capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.stamps: list[int] = []
        self.payloads: list[Any] = []

    def add(self, stamp_ns: int, payload: Any) -> None:
        i = bisect.bisect_left(self.stamps, stamp_ns)
        if i < len(self.stamps) and self.stamps[i] == stamp_ns:
            self.payloads[i] = payload  # same stamp again: keep the latest copy
            return
        self.stamps.insert(i, stamp_ns)
        self.payloads.insert(i, payload)
        if len(self.stamps) > self.capacity:  # drop the oldest
            del self.stamps[0]
            del self.payloads[0]

    def closest(self, stamp_ns: int) -> int:
        """Index of the stamp closest to ``stamp_ns`` (buffer must be non-empty)."""
        i = bisect.bisect_left(self.stamps, stamp_ns)
        if i == 0:
            return 0
        if i == len(self.stamps):
            return i - 1
        return i if self.stamps[i] - stamp_ns < stamp_ns - self.stamps[i - 1] else i - 1


class ApproximateTimeSync:
    """Newest approximately-synchronised set over named streams.

    ``capacity`` is messages kept per stream: an int for all, or a mapping per stream (a
    500 Hz joint state needs a deeper buffer than a 15 Hz camera to still hold the sample
    that matches a frame arriving 50 ms late).
    """

    def __init__(self, streams: Iterable[str], capacity: int | Mapping[str, int] = 16) -> None:
        names = list(streams)
        if not names:
            raise ValueError("ApproximateTimeSync needs at least one stream")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate stream names: {names}")
        caps = {n: capacity for n in names} if isinstance(capacity, int) else dict(capacity)
        missing = [n for n in names if n not in caps]
        if missing:
            raise ValueError(f"no capacity given for streams {missing}")
        self._streams = {n: _Stream(int(caps[n])) for n in names}
        self._lock = threading.Lock()

    @property
    def streams(self) -> list[str]:
        return list(self._streams)

    def add(self, stream: str, stamp_ns: int, payload: Any) -> None:
        buf = self._streams.get(stream)
        if buf is None:
            raise KeyError(f"unknown stream {stream!r}; streams are {list(self._streams)}")
        with self._lock:
            buf.add(int(stamp_ns), payload)

    def discard(self, stream: str, stamp_ns: int) -> bool:
        """Drop the message with this stamp (a payload that failed to decode); True if found."""
        buf = self._streams[stream]
        with self._lock:
            i = bisect.bisect_left(buf.stamps, stamp_ns)
            if i < len(buf.stamps) and buf.stamps[i] == stamp_ns:
                del buf.stamps[i]
                del buf.payloads[i]
                return True
        return False

    def evict_newer_than(self, stamp_ns: int) -> int:
        """Drop every message stamped after ``stamp_ns`` (stamps that now lie in the future,
        e.g. after the node's clock went back); returns how many. Without this the newest set
        would stay the one from the future, and the loop would freeze on it."""
        dropped = 0
        with self._lock:
            for buf in self._streams.values():
                i = bisect.bisect_right(buf.stamps, stamp_ns)
                dropped += len(buf.stamps) - i
                del buf.stamps[i:]
                del buf.payloads[i:]
        return dropped

    def clear(self) -> None:
        with self._lock:
            for buf in self._streams.values():
                buf.stamps.clear()
                buf.payloads.clear()

    def newest_stamp_ns(self, stream: str) -> int | None:
        with self._lock:
            stamps = self._streams[stream].stamps
            return stamps[-1] if stamps else None

    def latest_synced(self, slop_ns: int) -> SyncedSet | None:
        """The newest set whose stamps span at most ``slop_ns``.

        "Newest" means the freshest oldest member (the set's weakest link); ties go to the
        tighter set, so a 100 Hz joint state is matched to the sample closest to a frame,
        not the latest one the slop allows. Every buffered message is tried as the pivot;
        every other stream contributes its message closest to the pivot. Pivots are walked
        newest-first per stream and a walk stops once a set around the pivot can no longer
        beat the best found (its oldest member is at most the pivot), so the usual cost is a
        few bisections.
        """
        with self._lock:
            if any(not buf.stamps for buf in self._streams.values()):
                return None
            best: tuple[int, int, int, dict[str, int]] | None = None  # (oldest, -spread, newest, indices)
            # No set can contain a message newer than (oldest stream's newest) + slop, so a
            # fast stream's recent messages are skipped without trying them.
            ceiling = min(buf.stamps[-1] for buf in self._streams.values()) + slop_ns
            for pivot_name, pivot in self._streams.items():
                top = bisect.bisect_right(pivot.stamps, ceiling)
                for p in range(top - 1, -1, -1):
                    p_stamp = pivot.stamps[p]
                    if best is not None and p_stamp < best[0]:
                        break
                    chosen = {pivot_name: p}
                    lo = hi = p_stamp
                    for name, buf in self._streams.items():
                        if name == pivot_name:
                            continue
                        i = buf.closest(p_stamp)
                        chosen[name] = i
                        s = buf.stamps[i]
                        lo, hi = min(lo, s), max(hi, s)
                    if hi - lo > slop_ns:
                        continue
                    key = (lo, lo - hi, hi, chosen)
                    if best is None or key[:2] > best[:2]:
                        best = key
            if best is None:
                return None
            indices = best[3]
            return SyncedSet(
                stamp_ns=best[2],
                stamps_ns={n: self._streams[n].stamps[i] for n, i in indices.items()},
                payloads={n: self._streams[n].payloads[i] for n, i in indices.items()},
            )
