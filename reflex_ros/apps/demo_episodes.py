"""Episodes of the pick task through ROS, driven from the demo process.

One episode, in the order that keeps the previous episode out of the next one:

1. ``~/hold`` on the policy node (std_srvs/SetBool true): it publishes a hold and no chunk
   until released; a chunk still being computed is dropped, never sent;
2. wait for that hold trajectory to reach the monitor, so it cannot arrive at the sim after
   the reset and drag the arm back to the old pose;
3. ``~/reset_episode`` on the sim (arm home, cube at the seed's pose, its executor and delay
   line emptied);
4. wait until a joint state *and* a camera frame stamped after the reset have arrived, so the
   policy's first observation of the episode shows the new scene;
5. release the hold: the node's chunk strategy was reset by the hold, so the first chunk is
   planned from the observed state;
6. watch the sim's ``~/episode`` until the task's latched success, or ``timeout_s`` of sim
   time since the reset.

Success is the sim's (the cube lifted above the package's success height, within reach of the
gripper, held for the task's hold time), read from its ground truth; the policy never sees it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from reflex_ros.control.stamps import stamp_to_ns

SERVICE_TIMEOUT_S = 30.0
HOLD_ECHO_TIMEOUT_S = 3.0
FRESH_INPUT_TIMEOUT_S = 30.0


class EpisodeError(RuntimeError):
    """The episode could not be run (a service missing or refusing): names what and why."""


@dataclass(frozen=True)
class EpisodeResult:
    """One episode's outcome, from the sim's ground truth."""

    index: int
    seed: int
    success: bool
    time_s: float  # sim time from the reset to the latched success, or to the end (timeout)
    cube_xy: tuple[float, float]
    max_lift_m: float  # highest the cube's centre rose above where it was placed
    start_ns: int  # the reset's stamp (ROS/sim time): marks the episode on plots and in bags
    release_ns: int  # the newest input stamp when the hold was released: the policy's turn
    end_ns: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class EpisodeDriver:
    """Runs episodes with the monitor's node (its executor thread answers the futures)."""

    def __init__(self, monitor: Any, *, policy_node: str, sim_node: str) -> None:
        from std_srvs.srv import SetBool

        from reflex_ros.srv import ResetEpisode

        self._monitor = monitor
        self._SetBool, self._ResetEpisode = SetBool, ResetEpisode
        self._hold = monitor.node.create_client(SetBool, f"{policy_node}/hold")
        self._reset = monitor.node.create_client(ResetEpisode, f"{sim_node}/reset_episode")
        self.results: list[EpisodeResult] = []

    def _call(self, client: Any, request: Any, what: str, stop: threading.Event) -> Any:
        deadline = time.monotonic() + SERVICE_TIMEOUT_S
        while not client.service_is_ready():
            if stop.is_set():
                raise EpisodeError("interrupted")
            if time.monotonic() > deadline:
                raise EpisodeError(f"{what}: service {client.srv_name} not available after {SERVICE_TIMEOUT_S:.0f} s")
            time.sleep(0.05)
        future = client.call_async(request)
        while not future.done():
            if stop.is_set():
                raise EpisodeError("interrupted")
            if time.monotonic() > deadline:
                raise EpisodeError(f"{what}: no answer from {client.srv_name} within {SERVICE_TIMEOUT_S:.0f} s")
            time.sleep(0.01)
        return future.result()

    def hold(self, on: bool, stop: threading.Event) -> None:
        response = self._call(self._hold, self._SetBool.Request(data=on), "hold" if on else "release", stop)
        if not response.success:
            raise EpisodeError(f"the policy node refused ~/hold {on}: {response.message}")

    def run(
        self,
        index: int,
        seed: int,
        timeout_s: float,
        stop: threading.Event,
        alive: Callable[[], bool],
        on_status: Callable[[float, float], None] | None = None,
    ) -> EpisodeResult | None:
        """One episode (module docstring); None when interrupted or a process died."""
        monitor = self._monitor
        trajectories = monitor.trajectory_count()
        self.hold(True, stop)
        _wait(lambda: monitor.trajectory_count() > trajectories, HOLD_ECHO_TIMEOUT_S, stop, alive)
        response = self._call(self._reset, self._ResetEpisode.Request(seed=seed), f"reset to seed {seed}", stop)
        if not response.success:
            raise EpisodeError(f"the sim refused the reset to seed {seed}: {response.message}")
        if not _wait(lambda: monitor.episode_statuses(seed), FRESH_INPUT_TIMEOUT_S, stop, alive):
            return None
        start_ns = stamp_to_ns(monitor.episode_statuses(seed)[0].header.stamp)
        if not _wait(lambda: min(monitor.input_stamps_ns()) > start_ns, FRESH_INPUT_TIMEOUT_S, stop, alive):
            return None
        self.hold(False, stop)
        release_ns = max(monitor.input_stamps_ns())
        while True:
            statuses = monitor.episode_statuses(seed)
            latest = statuses[-1]
            if on_status is not None:
                on_status(latest.time_s, timeout_s)
            if latest.success or latest.time_s >= timeout_s:
                break
            if stop.is_set() or not alive():
                return None
            stop.wait(0.05)
        z0 = statuses[0].cube_position[2]
        result = EpisodeResult(
            index=index, seed=seed, success=bool(latest.success), time_s=round(float(latest.time_s), 2),
            cube_xy=(float(response.cube_xy[0]), float(response.cube_xy[1])),
            max_lift_m=round(max(float(m.cube_position[2]) - z0 for m in statuses), 4),
            start_ns=start_ns, release_ns=release_ns, end_ns=stamp_to_ns(latest.header.stamp),
        )
        self.results.append(result)
        return result


def _wait(condition: Callable[[], Any], timeout_s: float, stop: threading.Event, alive: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if stop.is_set() or not alive() or time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def format_result(r: EpisodeResult) -> str:
    outcome = f"success in {r.time_s:.1f} s" if r.success else f"FAIL (cube rose {100 * r.max_lift_m:.1f} cm in {r.time_s:.0f} s)"
    return f"episode {r.index + 1} seed {r.seed}: cube at ({r.cube_xy[0]:.3f}, {r.cube_xy[1]:.3f}) m, {outcome}"


def success_line(results: list[EpisodeResult]) -> str:
    """The measurement's headline: ``success K/N``."""
    k = sum(r.success for r in results)
    return f"success {k}/{len(results)}"
