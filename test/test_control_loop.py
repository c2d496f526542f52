"""The ROS-free control loop on a real ONNX engine: one cycle from offered messages to a
published plan, what subscribers see, the watchdog, and settings updates (user changes pin,
automatic ones respect pins, every change is validated)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest
from _ros_harness import SO100_JOINTS, joint_state, rgb_image, wait_for

from reflex_ros.control import params as P
from reflex_ros.control.embodiment import load_embodiment
from reflex_ros.control.loop import AUTO, INPUT, USER, ControlLoop, LoopSubscriber
from reflex_ros.control.stats import LoopStats, diagnostic_status
from reflex_ros.vocab import DEFAULT_CAMERA_TOPIC

MS = 1_000_000


class Clock:
    """The loop's time source, advanced by the test (stamps and ages are exact)."""

    def __init__(self) -> None:
        self.ns = 1_000_000 * MS

    def __call__(self) -> int:
        return self.ns


class Recorder(LoopSubscriber):
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def on_published(self, event) -> None:
        self.events.append(("published", event))

    def on_skipped(self, reason: str, count: int = 1, detail: str = "") -> None:
        self.events.append(("skipped", reason))

    def on_settings_changed(self, changed, source: str) -> None:
        self.events.append(("settings", (dict(changed), source)))

    def on_measurement(self, stamp_ns: int, positions) -> None:
        self.events.append(("measurement", stamp_ns))

    def on_hold(self, held: bool) -> None:
        self.events.append(("hold", held))


@pytest.fixture()
def loop(tiny_export: Path):
    from reflex_ros.engine.loader import load_engine

    values = {s.name: s.default for s in P.PARAMS}
    values.update(P.embodiment_defaults(load_embodiment("so100")), export_dir=str(tiny_export), execute_steps=3)
    engine = load_engine(tiny_export)
    published: list = []
    clock, recorder, stats = Clock(), Recorder(), LoopStats()
    loop = ControlLoop.build(engine, P.Settings(values), publish=lambda *args: published.append(args), now_ns=clock,
                             logger=logging.getLogger("test_control_loop"), subscribers=[stats, recorder],
                             pinned={"execute_steps"})
    loop.test_clock, loop.test_published, loop.test_recorder, loop.test_stats = clock, published, recorder, stats
    yield loop
    engine.close()


def _offer(loop: ControlLoop, stamp: int, positions=(0.1,) * 6) -> None:
    loop.offer_joint_state(joint_state(stamp, SO100_JOINTS, positions))
    loop.offer_camera(DEFAULT_CAMERA_TOPIC, rgb_image(stamp, 96))


def test_a_cycle_turns_offered_messages_into_a_published_plan(loop) -> None:
    clock = loop.test_clock
    stamp = clock.ns
    _offer(loop, stamp)
    clock.ns += 20 * MS
    event = loop.cycle()
    assert event is not None and loop.test_published and loop.test_published[0][0] is event.plan
    plan = event.plan
    assert plan.skipped_steps == 2 and plan.stamp_ns == stamp + 2 * plan.dt_ns  # so100: 60 ms at 30 Hz
    assert event.observation.observation.images[0].shape == (96, 96, 3)  # native: the engine resizes (d8e175b)
    assert event.obs_to_publish_ms == pytest.approx(20.0)
    assert loop.strategy.executing.plan is plan
    assert [kind for kind, _ in loop.test_recorder.events] == ["measurement", "published"]
    assert loop.test_stats.chunks_published == 1 and len(loop.test_stats.obs_to_publish_ms) == 1
    hold, period = loop.hold_command()
    np.testing.assert_allclose(hold, [0.1] * 6)
    assert period == plan.dt_ns


def test_no_observation_stale_and_a_bad_message(loop) -> None:
    clock, stats = loop.test_clock, loop.test_stats
    assert loop.cycle() is None and stats.no_observation == 1
    _offer(loop, clock.ns)
    clock.ns += 600 * MS  # max_observation_age_ms 500
    assert loop.cycle() is None and stats.stale_observations == 1 and loop.watchdog_stale
    bad = rgb_image(clock.ns, 96)
    bad.encoding = "16UC1"
    loop.offer_camera(DEFAULT_CAMERA_TOPIC, bad)
    assert stats.dropped_messages == 1 and "16UC1" in stats.last_error
    _offer(loop, clock.ns)
    assert loop.cycle() is not None and not loop.watchdog_stale


def test_settings_updates_pin_validate_and_notify(loop) -> None:
    recorder = loop.test_recorder
    # automatic changes never touch what a user pinned (execute_steps was given explicitly)
    update = loop.update_settings({"execute_steps": 7, "nfe": 4}, source=AUTO)
    assert update.pinned == {"execute_steps": 7} and update.applied == {"nfe": 4}
    assert (loop.settings.execute_steps, loop.settings.nfe) == (3, 4)
    # a user's change is applied and pins the name
    assert loop.update_settings({"latency_compensation_ms": 100.0}, source=USER).applied
    assert loop.update_settings({"latency_compensation_ms": 10.0}, source=AUTO).pinned
    assert loop.settings.latency_compensation_ms == 100.0
    # input changes neither pin nor respect pins
    assert loop.update_settings({"instruction": "stack"}, source=INPUT).applied == {"instruction": "stack"}
    assert "instruction" not in loop.pinned
    # every change is validated against the whole table and the engine
    refused = loop.update_settings({"latency_compensation_ms": 1700.0}, source=USER)
    assert refused.applied == {} and "skips 51 steps" in refused.refused
    assert loop.settings.latency_compensation_ms == 100.0
    assert [e for kind, e in recorder.events if kind == "settings"] == [
        ({"nfe": 4}, AUTO), ({"latency_compensation_ms": 100.0}, USER), ({"instruction": "stack"}, INPUT)]


# --------------------------------------------------------------------------- issue 13


def _diagnostics(loop: ControlLoop) -> tuple[str, str, dict]:
    return diagnostic_status("active", loop.test_stats, watchdog_stale=loop.watchdog_stale,
                             engine_info=loop.engine.info, settings=loop.settings, calibration_state="off")


def test_a_rate_change_wakes_the_waiting_loop(loop) -> None:
    """Item 5: 0.1 Hz for a moment then 30 Hz again used to leave the loop asleep on the 0.1 Hz
    deadline (30 s here). The test's clock stands still unless advanced, so the old loop never
    published the second chunk."""
    clock = loop.test_clock
    assert loop.update_settings({"control_frequency_hz": 0.1}, source=USER).applied
    _offer(loop, clock.ns)
    loop.start()
    try:
        wait_for(lambda: len(loop.test_published) == 1, 60, "the first chunk")
        clock.ns += 1500 * MS
        fresh = clock.ns
        _offer(loop, fresh)
        assert loop.update_settings({"control_frequency_hz": 30.0}, source=USER).applied
        wait_for(lambda: len(loop.test_published) == 2, 60, "a chunk right after the rate went back to 30 Hz")
    finally:
        assert loop.stop()
    plan = loop.test_published[1][0]
    assert plan.stamp_ns == fresh + plan.skipped_steps * plan.dt_ns and plan.dt_ns == 33_333_333
    assert loop.test_stats.overruns == 0  # a new schedule, not 15 "missed" 30 Hz ticks


class BusyDevice:
    """The real engine on an accelerator that finishes when the test says so: a hold can then
    arrive while a chunk is being computed."""

    def __init__(self, engine) -> None:
        self.engine, self.info = engine, engine.info
        self.entered, self.proceed = threading.Event(), threading.Event()
        self.calls = 0

    def infer(self, obs, **kwargs):
        self.calls += 1
        result = self.engine.infer(obs, **kwargs)
        self.entered.set()
        assert self.proceed.wait(60)
        return result


def test_hold_publishes_the_commanded_position_and_no_chunk_slips_out(loop) -> None:
    """Item 3: hold at the commanded position (the last chunk as a JTC executes it), and a
    chunk computed while the hold arrived is never published."""
    clock = loop.test_clock
    _offer(loop, clock.ns, positions=(0.1,) * 6)
    clock.ns += 20 * MS
    first = loop.cycle()
    plan, published_ns = first.plan, first.published_ns
    held: list = []
    record = lambda positions, dt_ns: held.append((np.array(positions), dt_ns))  # noqa: E731
    # at the publish instant a JTC is still at the state it started from; after the last point, at it
    np.testing.assert_allclose(loop.commanded_position(published_ns), [0.1] * 6)
    times = plan.point_times_ns()
    # (the integer midpoint can be half a nanosecond early: ~1e-9 rad off the exact mean)
    np.testing.assert_allclose(loop.commanded_position((times[3] + times[4]) // 2),
                               (plan.positions[3] + plan.positions[4]) / 2, atol=1e-6)

    device = BusyDevice(loop.engine)
    loop.engine = device
    _offer(loop, clock.ns, positions=(0.2,) * 6)
    result: list = []
    cycling = threading.Thread(target=lambda: result.append(loop.cycle()))
    cycling.start()
    assert device.entered.wait(60)
    clock.ns = int(times[-1]) + 10 * MS  # the first chunk has run out: the arm is commanded at its last point
    assert loop.set_hold(True, publish_hold=record) is not None
    device.proceed.set()
    cycling.join(60)
    assert result == [None] and len(loop.test_published) == 1  # computed before the hold, never published
    assert len(held) == 1 and held[0][1] == plan.dt_ns
    np.testing.assert_allclose(held[0][0], plan.positions[-1])
    assert loop.cycle() is None and device.calls == 1  # held: no inference at all
    assert ("skipped", "held") in loop.test_recorder.events
    loop.test_stats.held = True  # the node mirrors its latch into the stats
    level, message, values = _diagnostics(loop)
    assert (level, message, values["held"]) == ("WARN", "held by ~/hold: no chunks until released", "true")
    # a second hold holds the same place; release: chunks again
    loop.set_hold(True, publish_hold=record)
    np.testing.assert_allclose(held[1][0], held[0][0])
    loop.set_hold(False)
    loop.test_stats.held = False
    _offer(loop, clock.ns)
    assert loop.cycle() is not None and len(loop.test_published) == 2


def test_a_joint_state_beyond_the_limits_is_refused_naming_joint_and_value(loop) -> None:
    """Item 1: 10 rad (limit 1.87) used to become chunks starting at 9.8 rad, 1e30 chunks at 1e30."""
    clock, stats = loop.test_clock, loop.test_stats
    for value, why in ((10.0, "reads 10, beyond its limits [-1.87, 1.87] by more than 0.1"),
                       (1e30, "position is 1e+30, beyond any joint's range"),
                       (float("nan"), "position is nan"),
                       (-1.98, "reads -1.98, beyond its limits [-1.87, 1.87]")):  # 0.11 beyond: more than 0.1
        loop.offer_joint_state(joint_state(clock.ns, SO100_JOINTS, [value, 0, 0, 0, 0, 0]))
        assert f"/joint_states: joint 'shoulder_pan' {why}" in stats.last_error
    loop.offer_camera(DEFAULT_CAMERA_TOPIC, rgb_image(clock.ns, 96))
    assert stats.state_faults == 4 and loop.assembler.last_state is None
    assert loop.cycle() is None  # nothing reached the model
    level, message, _ = _diagnostics(loop)
    assert level == "ERROR" and message.startswith("joint state refused: /joint_states: joint 'shoulder_pan' reads -1.98")
    # drift within the tolerance: accepted, and the chunk starts inside the limits one step away
    _offer(loop, clock.ns, positions=(1.95, 0, 0, 0, 0, 0))
    plan = loop.cycle().plan
    assert (plan.positions[:, 0] <= 1.87).all() and abs(plan.positions[0, 0] - 1.95) <= 0.1 * plan.skipped_steps + 1e-6


def test_future_stamped_inputs_are_refused_and_the_loop_recovers_at_once(loop) -> None:
    """Item 4: a burst stamped 1 h ahead used to freeze the loop on it (chunks stamped 1 h
    ahead, obs_to_publish -3597090 ms, diagnostics OK)."""
    clock, stats = loop.test_clock, loop.test_stats
    hour = 3_600_000 * MS
    _offer(loop, clock.ns + hour)
    assert stats.refused_stamps == 2 and loop.cycle() is None
    text = stats.last_error
    assert text.startswith(f"{DEFAULT_CAMERA_TOPIC}: header.stamp {(clock.ns + hour) * 1e-9:.3f} s is 3600.000 s "
                           f"ahead of the node clock {clock.ns * 1e-9:.3f} s (max_future_stamp_ms 100)"), text
    level, message, _ = _diagnostics(loop)
    assert level == "WARN" and message == f"inputs refused: {text}"
    _offer(loop, clock.ns)  # sane data: used at once
    event = loop.cycle()
    assert event is not None and event.observation.stamp_ns == clock.ns and event.obs_to_publish_ms >= 0
    # older than the previous message on its topic: refused too
    loop.offer_joint_state(joint_state(clock.ns - 5 * MS, SO100_JOINTS, [0.1] * 6))
    assert stats.refused_stamps == 3 and "is older than the previous message's" in stats.last_error
    # the node's clock going back (a simulator restart) is not "older": new data is used
    clock.ns -= 10_000 * MS
    _offer(loop, clock.ns)
    event = loop.cycle()
    assert event is not None and event.observation.stamp_ns == clock.ns and stats.refused_stamps == 3


def test_diagnostics_name_refused_chunks(loop, nan_export) -> None:
    """Item 7: a model producing NaN had its chunks refused while /diagnostics said OK
    "publishing chunks" (after good chunks) or "waiting for synchronized observations"."""
    from reflex_ros.engine.loader import load_engine

    clock = loop.test_clock
    _offer(loop, clock.ns)
    assert loop.cycle() is not None and _diagnostics(loop)[:2] == ("OK", "publishing chunks")
    good, loop.engine = loop.engine, load_engine(nan_export)
    try:
        _offer(loop, clock.ns + 10 * MS)
        assert loop.cycle() is None and loop.test_stats.refused_chunks == 1
        level, message, values = _diagnostics(loop)
        assert level == "ERROR" and message.startswith("chunks refused: chunk row 0 joint 'shoulder_pan' is nan")
        assert values["refused_chunks"] == "1"
        fresh = LoopStats()  # a model that never produced a number: not "waiting for observations"
        fresh.on_skipped("refused", 1, loop.test_stats.last_error)
        level, message, _ = diagnostic_status("active", fresh, watchdog_stale=False, engine_info=None,
                                              settings=loop.settings, calibration_state="off")
        assert level == "ERROR" and message.startswith("chunks refused:")
    finally:
        loop.engine.close()
        loop.engine = good


def test_hold_and_release_are_told_to_subscribers_and_restart_the_lag_history(loop) -> None:
    """What the arm does while held (a scene reset, a hand moving it) answers no command: the
    live calibration's motion history restarts at the release, the lag estimates stay."""
    from reflex_ros.calibration.live import LiveCalibration
    from reflex_ros.calibration.motion_history import MotionHistory

    live = LiveCalibration.__new__(LiveCalibration)  # only the history matters here
    live.history = MotionHistory()
    loop.subscribers.append(live)
    clock = loop.test_clock
    _offer(loop, clock.ns)
    clock.ns += 20 * MS
    loop.cycle()
    live.history.add_measurement(clock.ns, np.zeros(6))
    loop.set_hold(True, lambda positions, dt_ns: None)
    assert live.history._meas_t  # held: still recording (nothing is decided yet)
    loop.set_hold(False)
    assert [e for e in loop.test_recorder.events if e[0] == "hold"] == [("hold", True), ("hold", False)]
    assert not live.history._meas_t and not live.history._commands
