"""The stats poll loop (enrgdaq_core.watch) without a broker, a terminal or a process."""

from __future__ import annotations

import os
import pty
import termios
import threading
from collections.abc import Iterator

import pytest
import zmq

from enrgdaq_core.watch import TerminalKeys, watch_loop


class FakeFeed:
    """A StatsFeed stand-in: its socket is one end of an inproc PAIR; poll() drains it."""

    def __init__(self, ctx: zmq.Context) -> None:
        self.socket = ctx.socket(zmq.PAIR)
        self.socket.bind("inproc://feed")
        self.sender = ctx.socket(zmq.PAIR)
        self.sender.connect("inproc://feed")
        self.received: list[bytes] = []
        self.polls = 0

    def poll(self, timeout: float = 0.0, limit: int = 10_000) -> int:
        self.polls += 1
        n = 0
        while self.socket.poll(0):
            self.received.append(self.socket.recv())
            n += 1
        return n

    def close(self) -> None:
        self.socket.close(0)
        self.sender.close(0)


class PipeKeys:
    """Key presses written into a pipe (what TerminalKeys reads from a tty)."""

    def __init__(self) -> None:
        self.fd, self.w = os.pipe()

    def press(self, data: bytes) -> None:
        os.write(self.w, data)

    def read(self) -> bytes:
        return os.read(self.fd, 64)

    def close(self) -> None:
        os.close(self.fd)
        os.close(self.w)


class FakeClock:
    """Advances `step` seconds on every reading: waits computed from it are short or zero."""

    def __init__(self, step: float) -> None:
        self.now = 100.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@pytest.fixture
def feed() -> Iterator[FakeFeed]:
    ctx = zmq.Context()
    f = FakeFeed(ctx)
    yield f
    f.close()
    ctx.term()


def test_ends_after_the_duration_and_redraws_at_the_refresh_interval(feed: FakeFeed) -> None:
    draws: list[float] = []
    clock = FakeClock(step=0.5)  # every wait it computes is already over: no real waiting
    end = watch_loop(
        feed,
        stop=threading.Event(),
        draw=lambda: draws.append(clock.now),
        refresh=0.5,
        duration=30.0,
        clock=clock,
    )
    assert end == "duration"
    assert 10 <= len(draws) <= 60  # 30 s of fake time, a draw each 0.5 s at most
    gaps = [b - a for a, b in zip(draws, draws[1:], strict=False)]
    assert all(g >= 0.5 - 1e-9 for g in gaps)


def test_takes_what_arrives_on_the_feed(feed: FakeFeed) -> None:
    for i in range(3):
        feed.sender.send(b"report %d" % i)
    stop = threading.Event()
    clock = FakeClock(step=0.01)

    def draw() -> None:
        if len(feed.received) == 3:
            stop.set()

    end = watch_loop(feed, stop=stop, draw=draw, refresh=0.0, duration=60.0, clock=clock)
    assert end == "stopped"
    assert feed.received == [b"report 0", b"report 1", b"report 2"]


def test_no_draw_without_a_view_and_no_feed_poll_without_a_report(feed: FakeFeed) -> None:
    end = watch_loop(feed, stop=threading.Event(), duration=0.5, clock=FakeClock(step=0.3))
    assert end == "duration"
    assert feed.polls == 0


@pytest.mark.parametrize("key", [b"q", b"Q", b"\x1b", b"xq"])
def test_q_or_escape_quits(feed: FakeFeed, key: bytes) -> None:
    keys = PipeKeys()
    try:
        keys.press(b"a")  # another key is read and ignored
        stop = threading.Event()
        timer = threading.Timer(0.2, keys.press, (key,))
        timer.start()
        end = watch_loop(feed, stop=stop, keys=keys, duration=30.0)
        timer.join()
    finally:
        keys.close()
    assert end == "key"


def test_a_stop_flag_set_from_elsewhere_ends_it_within_a_poll(feed: FakeFeed) -> None:
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    assert watch_loop(feed, stop=stop, duration=30.0) == "stopped"


def test_terminal_keys_set_cbreak_and_restore_the_terminal() -> None:
    master, slave = pty.openpty()
    try:
        before = termios.tcgetattr(slave)
        keys = TerminalKeys(slave)
        during = termios.tcgetattr(slave)
        assert not during[3] & termios.ICANON  # no Enter needed
        assert during[3] & termios.ISIG  # Ctrl-C still signals
        os.write(master, b"q")
        assert keys.read() == b"q"
        keys.restore()
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)
