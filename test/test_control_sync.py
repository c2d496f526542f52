"""Approximate-time sync: newest consistent set, slop honoured, bounded buffers, threads."""

from __future__ import annotations

import threading

import pytest

from reflex_ros.control.sync import ApproximateTimeSync

MS = 1_000_000


def test_nothing_until_every_stream_has_data() -> None:
    sync = ApproximateTimeSync(["cam", "joints"])
    sync.add("cam", 100 * MS, "c100")
    assert sync.latest_synced(10 * MS) is None
    sync.add("joints", 101 * MS, "j101")
    got = sync.latest_synced(10 * MS)
    assert got is not None and got.payloads == {"cam": "c100", "joints": "j101"}
    assert got.stamp_ns == 101 * MS and got.spread_ns == 1 * MS


def test_newest_set_within_slop_wins() -> None:
    sync = ApproximateTimeSync(["cam0", "cam1", "joints"], capacity={"cam0": 8, "cam1": 8, "joints": 64})
    for t in range(0, 300, 10):  # joints at 100 Hz
        sync.add("joints", t * MS, f"j{t}")
    for t in (0, 66, 133, 200):  # cam0 at 15 Hz
        sync.add("cam0", t * MS, f"a{t}")
    for t in (5, 72, 139, 260):  # cam1 offset; its newest frame has no cam0 partner
        sync.add("cam1", t * MS, f"b{t}")
    got = sync.latest_synced(10 * MS)
    assert got is not None
    assert got.payloads["cam0"] == "a133" and got.payloads["cam1"] == "b139"
    assert got.payloads["joints"] in ("j130", "j140")
    assert got.spread_ns <= 10 * MS
    # a tighter slop excludes the 6 ms camera offset; the 5 ms pair at t=0..5 qualifies
    tight = sync.latest_synced(5 * MS)
    assert tight is not None and tight.payloads["cam0"] == "a0" and tight.payloads["cam1"] == "b5"
    assert sync.latest_synced(1 * MS) is None


def test_out_of_order_arrivals_and_capacity() -> None:
    sync = ApproximateTimeSync(["cam", "joints"], capacity=3)
    for t in (30, 10, 20, 40):
        sync.add("cam", t * MS, t)
    sync.add("joints", 11 * MS, "old")
    # cam 10 was evicted (capacity 3 keeps 20, 30, 40): no partner for joints@11 within 5 ms
    assert sync.latest_synced(5 * MS) is None
    sync.add("joints", 39 * MS, "new")
    got = sync.latest_synced(5 * MS)
    assert got.payloads == {"cam": 40, "joints": "new"} and got.stamps_ns["cam"] == 40 * MS
    assert sync.newest_stamp_ns("cam") == 40 * MS


def test_duplicate_stamp_replaces_and_clear_empties() -> None:
    sync = ApproximateTimeSync(["a"])
    sync.add("a", 5, "first")
    sync.add("a", 5, "second")
    assert sync.latest_synced(0).payloads["a"] == "second"
    sync.clear()
    assert sync.latest_synced(0) is None and sync.newest_stamp_ns("a") is None


def test_bad_construction_and_unknown_stream() -> None:
    with pytest.raises(ValueError, match="at least one"):
        ApproximateTimeSync([])
    with pytest.raises(ValueError, match="duplicate"):
        ApproximateTimeSync(["a", "a"])
    with pytest.raises(ValueError, match=r"\['b'\]"):
        ApproximateTimeSync(["a", "b"], capacity={"a": 2})
    sync = ApproximateTimeSync(["a"])
    with pytest.raises(KeyError, match="'zzz'.*'a'"):
        sync.add("zzz", 0, None)


def test_concurrent_add_and_query_stay_consistent() -> None:
    sync = ApproximateTimeSync(["cam", "joints"], capacity={"cam": 8, "joints": 32})
    stop = threading.Event()
    errors: list[str] = []

    def producer(stream: str, period: int) -> None:
        t = 0
        while not stop.is_set() and t < 40_000:
            sync.add(stream, t, (stream, t))
            t += period

    def consumer() -> None:
        while not stop.is_set():
            got = sync.latest_synced(3)
            if got is not None:
                for name, (stream, t) in got.payloads.items():
                    if stream != name or got.stamps_ns[name] != t:
                        errors.append(f"{name}: payload {stream}@{t} vs stamp {got.stamps_ns[name]}")
                if got.spread_ns > 3:
                    errors.append(f"spread {got.spread_ns}")

    threads = [threading.Thread(target=producer, args=("cam", 7)),
               threading.Thread(target=producer, args=("joints", 2)),
               threading.Thread(target=consumer)]
    for th in threads:
        th.start()
    threads[0].join(timeout=60)
    threads[1].join(timeout=60)
    stop.set()
    threads[2].join(timeout=60)
    assert not errors, errors[:5]
    assert sync.latest_synced(3) is not None
