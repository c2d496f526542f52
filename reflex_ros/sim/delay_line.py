"""The actuators' delay: a bus and servo lag between the trajectory executor and the motors.

The sim node pushes the executor's command through it at every physics step; the delay is
what the policy node's auto-calibrator has to discover from the joint states. ROS-free.
"""

from __future__ import annotations

import collections

import numpy as np


class CommandDelayLine:
    """Delays commands by ``delay_ns``: the output at t is the input pushed for t - delay.

    Inputs are pushed once per physics step, so the output is exact when the delay is a
    multiple of the step and otherwise lags by less than one step (zero-order hold).
    Before any input is old enough, the output is ``initial``.
    """

    def __init__(self, delay_ns: int, initial: np.ndarray) -> None:
        if delay_ns < 0:
            raise ValueError(f"actuation delay must be >= 0 ns, got {delay_ns}")
        self.delay_ns = int(delay_ns)
        self._current = np.asarray(initial, dtype=np.float64).copy()
        self._pending: collections.deque[tuple[int, np.ndarray]] = collections.deque()

    def push(self, t_ns: int, command: np.ndarray) -> None:
        """Record the command computed for time ``t_ns`` (times must not decrease)."""
        self._pending.append((int(t_ns), np.asarray(command, dtype=np.float64).copy()))

    def reset(self, command: np.ndarray) -> None:
        """Forget the commands in flight and output ``command`` from now on (an episode reset:
        what was sent to the old pose must not reach the arm at the new one)."""
        self._pending.clear()
        self._current = np.asarray(command, dtype=np.float64).copy()

    def output(self, t_ns: int) -> np.ndarray:
        """The command that reaches the actuators at ``t_ns``."""
        due_ns = t_ns - self.delay_ns
        while self._pending and self._pending[0][0] <= due_ns:
            self._current = self._pending.popleft()[1]
        return self._current.copy()
