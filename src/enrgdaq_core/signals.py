"""Stopping on signals: the one signal setup of every `daq` process.

SIGTERM and SIGINT never kill a piece mid-write: they set a `StopFlag` that the piece's loop
checks, so it flushes, sends end-of-stream and closes. A child of `daq up` also stops when
its supervisor dies (a kill -9 of the supervisor must leave no orphans).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["ORPHAN_GRACE_SECONDS", "StopFlag", "stop_on_signals"]

log = logging.getLogger("enrgdaq.signals")

ORPHAN_GRACE_SECONDS = 10.0  # after the supervisor died, the longest a clean stop may take


class StopFlag:
    """Set by signals or by the caller; `wait()` doubles as an interruptible sleep.

    `on_set` callbacks run at every `set()` (so a second Ctrl-C can force what the first only
    asked for); they run in a signal handler, so they must only set flags or events.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal: int | None = None
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
) -> StopFlag:
    """A flag that SIGTERM/SIGINT set (`on_stop` runs at each); returns it.

    `watch_parent`: under `daq up` (DAQ_PARENT_PID set), also stop when the supervisor dies.
    Monitors run by hand (tap, stats) pass False. Outside the main thread (a command run by a
    test's thread) no handler can be installed: the flag is returned as it is.
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
    if watch_parent:
        _watch_parent(flag)
    return flag


def _watch_parent(flag: StopFlag) -> None:
    """Stop when the supervisor that started us is gone (a kill -9 must leave no orphans)."""
    parent = os.environ.get("DAQ_PARENT_PID")
    if not parent:
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: the kernel tells us at once
    except (OSError, AttributeError):
        pass
    pid = int(parent)

    def watch() -> None:
        while not flag.wait(1.0):
            if os.getppid() != pid:
                flag.set(signal.SIGTERM)
        # Stopping. If the supervisor is gone, the clean stop may hang (waiting for a broker
        # that died with it): give it time, then go anyway, so nothing runs on forever.
        # (Checked after the wait: right at the parent's death, getppid() may lag.)
        time.sleep(ORPHAN_GRACE_SECONDS)
        if os.getppid() != pid:
            log.warning("supervisor gone and the clean stop did not finish: exiting now")
            os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
