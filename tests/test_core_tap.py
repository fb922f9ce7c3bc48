"""The tap loop (enrgdaq_core.tap) without a broker or a process: a fake input and clock."""

from __future__ import annotations

import threading

from enrgdaq_core.envelope import Envelope, Header, Kind, Source
from enrgdaq_core.tap import TapResult, tap


class FakeInput:
    """Returns the scripted items in order (None: a wait that ended empty), then None."""

    def __init__(self, items: list[Envelope | None]) -> None:
        self.items = list(items)
        self.waits: list[float | None] = []

    def recv(self, timeout: float | None = None) -> Envelope | None:
        self.waits.append(timeout)
        return self.items.pop(0) if self.items else None


class FakeClock:
    def __init__(self, step: float = 0.0) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def _env(source: str, seq: int, kind: Kind = Kind.RAW) -> Envelope:
    h = Header(kind=kind, source=source, seq=seq, time_ns=1, epoch=7)
    return Envelope(f"data.{source}", h, b"x")


def _collect() -> tuple[list[tuple[Envelope, int]], object]:
    got: list[tuple[Envelope, int]] = []
    return got, lambda env, gap: got.append((env, gap))


def test_hands_on_every_message_and_stops_at_count() -> None:
    src = Source("s")
    envs = [src.raw(b"%d" % i) for i in range(5)]
    got, sink = _collect()
    result = tap(FakeInput(envs), sink, stop=threading.Event(), count=3)
    assert result == TapResult(seen=3, missed=0)
    assert [e for e, _ in got] == envs[:3]
    assert [g for _, g in got] == [0, 0, 0]


def test_counts_gaps_per_message_and_in_total() -> None:
    items = [_env("a", 0), _env("a", 3), _env("b", 0), _env("a", 4), _env("b", 2)]
    got, sink = _collect()
    result = tap(FakeInput(items), sink, stop=threading.Event(), count=5)
    assert [g for _, g in got] == [0, 2, 0, 0, 1]
    assert result.missed == 3 and result.seen == 5


def test_stats_reports_are_not_sequence_checked() -> None:
    items = [_env("p", 0, Kind.STATS), _env("p", 9, Kind.STATS)]
    got, sink = _collect()
    result = tap(FakeInput(items), sink, stop=threading.Event(), count=2)
    assert [g for _, g in got] == [0, 0] and result.missed == 0


def test_idle_waits_call_on_idle_and_the_idle_timeout_ends_it() -> None:
    idle: list[int] = []
    clock = FakeClock(step=0.3)
    inp = FakeInput([_env("a", 0), None, _env("a", 1)])
    got, sink = _collect()
    result = tap(
        inp,
        sink,
        stop=threading.Event(),
        idle_timeout=1.0,
        on_idle=lambda: idle.append(1),
        poll=0.2,
        clock=clock,
    )
    assert result.seen == 2
    assert len(idle) >= 3  # one empty wait between the messages, then until the timeout
    assert clock.now > 1.0
    assert set(inp.waits) == {0.2}


def test_a_set_stop_flag_ends_it_before_any_wait() -> None:
    stop = threading.Event()
    stop.set()
    inp = FakeInput([_env("a", 0)])
    result = tap(inp, lambda env, gap: None, stop=stop)
    assert result.seen == 0 and inp.waits == []


def test_the_stop_flag_ends_it_between_messages() -> None:
    stop = threading.Event()
    got: list[Envelope] = []

    def sink(env: Envelope, gap: int) -> None:
        got.append(env)
        if len(got) == 2:
            stop.set()

    tap(FakeInput([_env("a", i) for i in range(10)]), sink, stop=stop)
    assert len(got) == 2


def test_on_quiet_is_asked_while_nothing_came_until_it_is_done() -> None:
    """A tap that sees nothing asks every `quiet_after` seconds until on_quiet says done."""
    asked: list[float] = []
    clock = FakeClock(step=0.5)
    answers = iter([False, True, True])

    def quiet() -> bool:
        asked.append(clock.now)
        return next(answers)

    result = tap(
        FakeInput([]),
        lambda env, gap: None,
        stop=threading.Event(),
        idle_timeout=20.0,
        on_quiet=quiet,
        quiet_after=3.0,
        clock=clock,
    )
    assert result.seen == 0
    assert len(asked) == 2  # not asked again once done
    assert 3.0 <= asked[0] < 4.0 and asked[1] - asked[0] >= 3.0


def test_on_quiet_is_never_asked_once_a_message_came() -> None:
    asked: list[int] = []
    clock = FakeClock(step=0.5)
    result = tap(
        FakeInput([_env("a", 0)]),
        lambda env, gap: None,
        stop=threading.Event(),
        idle_timeout=10.0,
        on_quiet=lambda: asked.append(1) or False,
        quiet_after=1.0,
        clock=clock,
    )
    assert result.seen == 1 and asked == []
