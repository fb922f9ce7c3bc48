"""The poll loop of `daq stats --watch/--serve/--record`: keep a Monitor current, redraw, quit.

A plain function over a feed (anything with a pollable `socket` and `poll(timeout)`), an
optional key source and a draw callback, so it is tested without a broker or a terminal;
the CLI only sets up the exporter, the recorder and the rich view, then calls `watch_loop`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, Literal, Protocol

import zmq

__all__ = ["QUIT_KEYS", "TerminalKeys", "WatchEnd", "watch_loop"]

QUIT_KEYS = (b"q", b"\x1b")  # q (either case) or Escape ends a watch
POLL_CAP = 0.25  # seconds: the longest one wait lasts, so a stop flag or the duration acts soon

WatchEnd = Literal["stopped", "duration", "key"]


class _Feed(Protocol):
    @property
    def socket(self) -> Any: ...
    def poll(self, timeout: float = 0.0, limit: int = 10_000) -> int: ...


class _Keys(Protocol):
    fd: int

    def read(self) -> bytes: ...


class _Stop(Protocol):
    def is_set(self) -> bool: ...


class TerminalKeys:
    """Single key presses from a terminal (cbreak: no Enter needed; Ctrl-C still signals).

    `restore()` puts the terminal back as it was; call it in a `finally`.
    """

    def __init__(self, fd: int) -> None:
        import termios
        import tty

        self.fd = fd
        self._saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)

    def read(self) -> bytes:
        try:
            return os.read(self.fd, 64)
        except OSError:
            return b""

    def restore(self) -> None:
        import termios

        termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)


def _quits(pressed: bytes) -> bool:
    low = pressed.lower()
    return any(k in low for k in QUIT_KEYS)


def watch_loop(
    feed: _Feed,
    *,
    stop: _Stop,
    draw: Callable[[], None] | None = None,
    refresh: float = 0.5,
    duration: float | None = None,
    keys: _Keys | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> WatchEnd:
    """Take reports as they arrive until `stop`, `duration` seconds, or q/Escape on `keys`.

    `draw` (the live view) runs every `refresh` seconds; without it the loop only keeps the
    feed's monitor current (for an exporter or a recorder that follow it). Returns why it
    ended.
    """
    poller = zmq.Poller()
    poller.register(feed.socket, zmq.POLLIN)
    if keys is not None:
        poller.register(keys.fd, zmq.POLLIN)
    end = None if duration is None else clock() + duration
    next_draw = clock() + refresh
    while not stop.is_set():
        now = clock()
        if end is not None and now >= end:
            return "duration"
        timeout = min(next_draw - now, POLL_CAP) if draw is not None else POLL_CAP
        try:
            events = dict(poller.poll(max(0, int(timeout * 1000))))
        except zmq.ZMQError:
            continue  # interrupted by a signal: the loop condition decides
        if feed.socket in events:
            feed.poll(0)
        if keys is not None and keys.fd in events and _quits(keys.read()):
            return "key"
        if draw is not None and clock() >= next_draw:
            draw()
            next_draw = clock() + refresh
    return "stopped"
