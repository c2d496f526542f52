"""Processes and signals, written once for the runner, the demo, the sim and the node.

* :func:`stop_on_signals`: SIGINT/SIGTERM/SIGHUP set an Event instead of raising, for the
  block (a closed terminal stops things in order, like Ctrl-C).
* :func:`ros_context`: rclpy initialised *without* its own signal handlers (they would
  invalidate the context while our threads still publish) and shut down on exit; the
  signals set the yielded Event, so the process stops its threads first, then rclpy.
* :func:`spin_until`: spin an executor until a condition holds or rclpy shuts down.
* :class:`ChildProcess`: a child in its own session (a terminal's Ctrl-C reaches only the
  parent, which then stops things in order), its output streamed to a file or to a line
  callback, stopped with a signal, then killed if it will not go. With ``lifeline`` the
  child inherits the read end of a pipe whose write end only the parent holds: when the
  parent dies however it dies (SIGKILL included), the child reads EOF
  (:func:`parent_lifeline`) and shuts itself down, so it never outlives its parent.

Top-level imports are stdlib only (``reflex-ros --help`` imports the runner).
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
LIFELINE_ENV = "REFLEX_LIFELINE_FD"  # the inherited pipe's read end, in a ChildProcess(lifeline=True)


@contextmanager
def stop_on_signals(signals: Sequence[int] = SIGNALS) -> Iterator[threading.Event]:
    """An Event set by any of ``signals`` while the block runs (handlers are only installed
    from the main thread; elsewhere the Event is just never set by a signal); the previous
    handlers come back afterwards."""
    stop = threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in signals}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def ros_context(args: Sequence[str] | None = None) -> Iterator[threading.Event]:
    """``rclpy.init`` without rclpy's signal handlers, SIGINT/SIGTERM -> the yielded Event,
    ``rclpy.try_shutdown`` on exit."""
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    rclpy.init(args=list(args) if args is not None else None, signal_handler_options=SignalHandlerOptions.NO)
    try:
        with stop_on_signals() as stop:
            yield stop
    finally:
        rclpy.try_shutdown()


def parent_lifeline(stop: threading.Event) -> threading.Event | None:
    """In a child started by :class:`ChildProcess` with ``lifeline``: watch the inherited pipe
    on a daemon thread; EOF (the parent is gone: killed, crashed, hung up) sets ``stop`` and the
    returned Event. None when this process was not started that way. The variable is removed
    from the environment so the child's own children do not inherit it."""
    text = os.environ.pop(LIFELINE_ENV, "")
    try:
        fd = int(text)
        os.fstat(fd)
    except (ValueError, OSError):
        return None
    gone = threading.Event()

    def watch() -> None:
        try:
            while os.read(fd, 64):  # the parent never writes: only EOF (or an error) ends this
                pass
        except OSError:
            pass
        gone.set()
        stop.set()

    threading.Thread(target=watch, name="reflex-parent-lifeline", daemon=True).start()
    return gone


def make_executor() -> Any:
    """rclpy's EventsExecutor where available (Jazzy+): its C++ event queue dispatches a
    message in a fraction of the single-threaded executor's Python wait-set rebuild, which is
    most of what a 100 Hz joint state + camera stream costs a node. REFLEX_EXECUTOR=single
    selects the classic executor."""
    import os

    from rclpy.executors import SingleThreadedExecutor

    if os.environ.get("REFLEX_EXECUTOR", "events") == "events":
        try:
            from rclpy.experimental import EventsExecutor

            return EventsExecutor()
        except ImportError:
            pass
    return SingleThreadedExecutor()


def spin_until(executor: Any, done: Callable[[], bool], period_s: float = 0.1) -> None:
    """Spin ``executor`` until ``done()`` or rclpy shuts down."""
    import rclpy

    while not done() and rclpy.ok():
        executor.spin_once(timeout_sec=period_s)


class ChildProcess:
    """A child process in its own session; see the module docstring.

    Output goes to ``log_path`` (a file: nothing can block the child) or, line by line, to
    ``on_line`` and :attr:`lines` (the last ``keep_lines``), where :meth:`wait_for_log` finds it.
    """

    def __init__(self, command: Sequence[str], *, env: Mapping[str, str] | None = None,
                 log_path: str | Path | None = None, on_line: Callable[[str], None] | None = None,
                 keep_lines: int = 5000, lifeline: bool = False) -> None:
        self.command = list(command)
        self.lifeline = lifeline
        self._lifeline_fd: int | None = None  # the write end, held (never written) while the child runs
        self.env = dict(env) if env is not None else None
        self.log_path = Path(log_path) if log_path is not None else None
        self._on_line = on_line
        self.lines: collections.deque[str] = collections.deque(maxlen=keep_lines)
        self._lines_cv = threading.Condition()
        self._proc: subprocess.Popen[str] | None = None
        self._log_file: Any = None
        self._reader: threading.Thread | None = None

    def start(self) -> ChildProcess:
        if self._proc is not None:
            raise RuntimeError("already started")
        if self.log_path is not None:
            self._log_file = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()/kill()
            out: Any = self._log_file
        else:
            out = subprocess.PIPE
        env, pass_fds = self.env, ()
        if self.lifeline:
            read_fd, self._lifeline_fd = os.pipe()  # both close-on-exec; pass_fds hands the read end over
            env = {**(env if env is not None else os.environ), LIFELINE_ENV: str(read_fd)}
            pass_fds = (read_fd,)
        try:
            self._proc = subprocess.Popen(self.command, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
                                          bufsize=1, start_new_session=True, pass_fds=pass_fds)
        finally:
            for fd in pass_fds:
                os.close(fd)
        if self.log_path is None:
            self._reader = threading.Thread(target=self._read_output, name="child-log", daemon=True)
            self._reader.start()
        return self

    def _read_output(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for raw in self._proc.stdout:
            line = raw.rstrip("\n")
            with self._lines_cv:
                self.lines.append(line)
                self._lines_cv.notify_all()
            if self._on_line is not None:
                try:
                    self._on_line(line)
                except Exception:  # a broken sink must not stop the log reader
                    pass
        with self._lines_cv:
            self._lines_cv.notify_all()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    @property
    def output_done(self) -> bool:
        """The child has exited and all of its output has been read."""
        return not self.alive and (self._reader is None or not self._reader.is_alive())

    def log(self) -> str:
        """Everything written so far (the log file, or the kept lines)."""
        if self.log_path is not None:
            return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(self.lines)

    def tail(self, n: int = 15) -> str:
        return "\n".join(self.log().splitlines()[-n:])

    def wait_for_log(self, text: str, timeout_s: float = 30.0, start: int = 0) -> str | None:
        """The first line (from index ``start`` of :attr:`lines`) containing ``text``."""
        deadline = time.monotonic() + timeout_s
        with self._lines_cv:
            while True:
                for line in list(self.lines)[start:]:
                    if text in line:
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self._proc is not None and self.output_done):
                    return None
                self._lines_cv.wait(min(remaining, 0.2))

    def wait(self, timeout_s: float) -> int | None:
        """The exit code, or None if it is still running after ``timeout_s``."""
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def send_signal(self, sig: int) -> None:
        if self.alive:
            self._proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0, grace_s: float = 0.0) -> int | None:
        """Wait ``grace_s`` for it to exit by itself, then send ``sig`` and wait ``timeout_s``,
        then SIGKILL. Returns the exit code."""
        if self._proc is None:
            return None
        if self.alive and (grace_s <= 0 or self.wait(grace_s) is None):
            self._proc.send_signal(sig)
            if self.wait(timeout_s) is None:
                self._proc.kill()
                self._proc.wait(timeout=15)
        if self._lifeline_fd is not None and not self.alive:
            os.close(self._lifeline_fd)
            self._lifeline_fd = None
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return self._proc.returncode
