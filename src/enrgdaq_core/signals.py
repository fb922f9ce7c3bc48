"""Stopping on signals: the one signal setup of every `daq` process.

SIGTERM and SIGINT never kill a piece mid-write: they set a `StopFlag` that the piece's loop
checks, so it flushes, sends end-of-stream and closes.

A child of `daq up` (DAQ_PARENT_PID set) also stops when its supervisor dies, and in the
order the supervisor would have stopped it, since nobody else is left to order the stop:
sources at once (each sends end-of-stream), stores once every source they have seen has ended,
the broker once no client is connected any more. The kernel tells each child at once
(PR_SET_PDEATHSIG, SIGHUP); a poll of the parent pid catches what the signal cannot (the
parent died before the child asked for it). The child's output went to the supervisor
through a pipe that is now broken, so it is sent on to the child's own log file
(DAQ_LOG_FILE), where the supervisor wrote it: the last lines are not lost, and no write
to a dead pipe can fail or kill the child.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

__all__ = ["ORPHAN_GRACE_SECONDS", "Role", "StopFlag", "stop_on_signals"]

log = logging.getLogger("enrgdaq.signals")

ORPHAN_GRACE_SECONDS = 10.0  # after the supervisor died: each step of the orderly stop, at most
PARENT_ENV = "DAQ_PARENT_PID"
LOG_FILE_ENV = "DAQ_LOG_FILE"
_PARENT_DEATH_SIGNAL = signal.SIGHUP  # no terminal sends it: children run in their own session
_PR_SET_PDEATHSIG = 1

Role = Literal["source", "store", "broker"]
# Which step of the orphan stop a role is (the supervisor's own order), and what it waits for.
_ORDER: dict[str, int] = {"source": 0, "store": 1, "broker": 2}
_WAITS = {
    "source": "stopping now",
    "store": "stopping once every source it takes has ended",
    "broker": "stopping once no store or other client is connected",
}
_DRAINED = {"store": "every source ended: stopping", "broker": "no client left: stopping"}


class StopFlag:
    """Set by signals or by the caller; `wait()` doubles as an interruptible sleep.

    `on_set` callbacks run at every `set()` (so a second Ctrl-C can force what the first only
    asked for); they run in a signal handler, so they must only set flags or events.
    `orphaned` turns true when the supervisor that started this process died.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal: int | None = None
        self.orphaned = False
        self._callbacks: list[Callable[[], None]] = []

    def set(self, signum: int | None = None) -> None:
        self.signal = signum
        self._event.set()
        for callback in self._callbacks:
            callback()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None) -> bool:
        return self._event.wait(timeout)

    def on_set(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)


def stop_on_signals(
    flag: StopFlag | None = None,
    *,
    watch_parent: bool = True,
    on_stop: Callable[[], None] | None = None,
    role: Role = "source",
    drained: Callable[[], bool] | None = None,
) -> StopFlag:
    """A flag that SIGTERM/SIGINT set (`on_stop` runs at each); returns it.

    `watch_parent`: under `daq up` (DAQ_PARENT_PID set), also stop when the supervisor dies,
    by `role`: a source at once; a store or the broker once `drained()` is true (a store: every
    source it has seen ended; the broker: no client left), waiting at most one
    ORPHAN_GRACE_SECONDS per step before it (a store one, the broker two). Monitors run by
    hand (tap, stats) pass False. Outside the main thread (a command run by a test's thread)
    no handler can be installed: the flag is returned as it is.
    """
    flag = flag or StopFlag()
    if on_stop is not None:
        flag.on_set(on_stop)
    if threading.current_thread() is not threading.main_thread():
        return flag

    def handler(signum: int, _frame: Any) -> None:
        flag.set(signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    parent = os.environ.get(PARENT_ENV, "")
    if watch_parent and parent.isdigit():
        _ParentWatch(flag, int(parent), role, drained).start()
    return flag


class _ParentWatch:
    """Notices the supervisor's death and stops this process in its place in the order."""

    def __init__(
        self, flag: StopFlag, parent: int, role: Role, drained: Callable[[], bool] | None
    ) -> None:
        self.flag = flag
        self.parent = parent
        self.role = role
        self.drained = drained
        self.gone = threading.Event()
        self._redirected = False

    def start(self) -> None:
        signal.signal(_PARENT_DEATH_SIGNAL, self._on_signal)
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, _PARENT_DEATH_SIGNAL)  # the kernel tells us at once
        threading.Thread(target=self._watch, name="parent-watch", daemon=True).start()

    def _parent_gone(self) -> bool:
        return os.getppid() != self.parent

    def _on_signal(self, _signum: int, _frame: Any) -> None:
        # In the main thread, before it logs again: the output goes to the log file first.
        # A SIGHUP while the supervisor lives is someone else's; the poll confirms a death.
        if self._parent_gone():
            self._redirect_output()
            self.gone.set()

    def _redirect_output(self) -> None:
        """Send stdout and stderr (the pipe to the dead supervisor) to the child's log file,
        or to /dev/null if it cannot be opened: a write to the broken pipe would fail."""
        if self._redirected:
            return
        self._redirected = True
        path = os.environ.get(LOG_FILE_ENV)
        if not path:
            return  # not under `daq up` proper: the output is left where it is
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError:
            fd = os.open(os.devnull, os.O_WRONLY)
        for target in (1, 2):
            with contextlib.suppress(OSError):
                os.dup2(fd, target)
        os.close(fd)

    def _watch(self) -> None:
        while not self._parent_gone():
            if self.gone.wait(1.0):
                break
        self._redirect_output()
        self.gone.set()
        self.flag.orphaned = True
        order = _ORDER[self.role] if self.drained is not None else 0
        if self.flag.is_set():
            log.warning("daq up is gone (pid %d) while stopping", self.parent)
        else:
            log.warning("daq up is gone (pid %d): %s", self.parent, _WAITS[self.role])
            self._wait_drained(order * ORPHAN_GRACE_SECONDS)
            self.flag.set(signal.SIGTERM)
        # If the clean stop hangs (on a broker that is gone too), go anyway: nothing of a
        # dead `daq up` may run on forever.
        time.sleep(ORPHAN_GRACE_SECONDS)
        log.warning("the clean stop did not finish in %.0fs: exiting now", ORPHAN_GRACE_SECONDS)
        os._exit(1)

    def _wait_drained(self, grace: float) -> None:
        if not grace or self.drained is None:
            return
        deadline = time.monotonic() + grace
        while not self.flag.is_set():
            try:
                if self.drained():
                    log.info("%s", _DRAINED[self.role])
                    return
            except Exception as exc:  # the piece's own state: never let it stop the stop
                log.warning("cannot tell whether %s is drained (%s)", self.role, exc)
                return
            if time.monotonic() >= deadline:
                log.warning("still not drained after %.0fs: stopping anyway", grace)
                return
            self.flag.wait(0.05)
