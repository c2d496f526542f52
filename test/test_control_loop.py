"""The ROS-free control loop on a real ONNX engine: one cycle from offered messages to a
published plan, what subscribers see, the watchdog, and settings updates (user changes pin,
automatic ones respect pins, every change is validated)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from _ros_harness import SO100_JOINTS, joint_state, rgb_image

from reflex_ros.control import params as P
from reflex_ros.control.embodiment import load_embodiment
from reflex_ros.control.loop import AUTO, INPUT, USER, ControlLoop, LoopSubscriber
from reflex_ros.control.stats import LoopStats
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
