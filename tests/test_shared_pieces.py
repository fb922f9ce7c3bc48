"""The shared small pieces: one backoff rule, one atomic file replacement."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from enrgdaq_core.atomic import atomic_write
from enrgdaq_core.backoff import Backoff


def test_backoff_doubles_to_the_cap_and_resets():
    b = Backoff(0.5, 3.0)
    assert b.current == 0.5
    assert [b.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    b.reset()
    assert b.next_delay() == 0.5


def test_backoff_resets_after_a_long_healthy_attempt():
    b = Backoff(1.0, 30.0, reset_after=10.0)
    assert [b.next_delay(1.0) for _ in range(3)] == [1.0, 2.0, 4.0]
    assert b.next_delay(ran_for=11.0) == 1.0


def test_backoff_never_overflows():
    b = Backoff(1.0, 5.0)
    for _ in range(2000):
        b.next_delay()
    assert b.next_delay() == 5.0


def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path: Path):
    path = tmp_path / "sub" / "state.json"
    atomic_write(path, "first")
    atomic_write(path, b"second")
    assert path.read_text() == "second"
    assert sorted(os.listdir(path.parent)) == ["state.json"]


def test_atomic_write_failure_keeps_the_previous_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    path = tmp_path / "runs.json"
    atomic_write(path, "old")

    def crash(_src: object, _dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        atomic_write(path, "new")
    assert path.read_text() == "old"


@pytest.fixture
def plus_three(monkeypatch: pytest.MonkeyPatch):
    """A local zone of UTC+03:00 (POSIX TZ strings count west of Greenwich)."""
    import time

    monkeypatch.setenv("TZ", "XYZ-3")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_times_are_local_and_records_carry_the_offset(plus_three):
    import datetime as dt

    from enrgdaq_core import timefmt

    ns = 1_764_685_805_123_456_789  # 2025-12-02 14:30:05.123 UTC
    assert timefmt.iso(ns) == "2025-12-02T17:30:05+03:00"
    assert timefmt.iso(ns, ms=True) == "2025-12-02T17:30:05.123+03:00"
    assert timefmt.stamp(ns) == "2025-12-02 17:30:05"
    assert timefmt.stamp(ns, ms=True) == "2025-12-02 17:30:05.123"
    assert timefmt.clock(ns, ms=True) == "17:30:05.123"
    assert timefmt.date(ns) == "2025-12-02"
    assert timefmt.name_stamp(ns) == "20251202T173005+0300"
    # a record reads back to the same instant, and a naive time is local
    assert timefmt.to_ns(dt.datetime.fromisoformat(timefmt.iso(ns, ms=True))) == ns // 10**6 * 10**6
    assert timefmt.to_ns(dt.datetime(2025, 12, 2, 17, 30, 5)) == ns // 10**9 * 10**9


def test_millisecond_digits_are_exact_at_a_second_boundary():
    from enrgdaq_core import timefmt

    ns = 1_764_685_805_999_999_999  # a float of this rounds up to the next second
    assert timefmt.clock(ns, ms=True).endswith(":05.999")


def test_signals_set_the_stop_flag_and_run_on_stop_at_each_signal():
    import os
    import signal
    import threading

    from enrgdaq_core.signals import StopFlag, stop_on_signals

    calls: list[int] = []
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        flag = stop_on_signals(watch_parent=False, on_stop=lambda: calls.append(1))
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.wait(5) and flag.signal == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C reaches on_stop again (force)
        flag.wait(0)
        assert calls == [1, 1]
    finally:
        signal.signal(signal.SIGTERM, before[0])
        signal.signal(signal.SIGINT, before[1])

    # a command run from a test's thread cannot install handlers: it still gets a flag
    out: list[StopFlag] = []
    t = threading.Thread(target=lambda: out.append(stop_on_signals(watch_parent=False)))
    t.start()
    t.join(5)
    assert isinstance(out[0], StopFlag) and not out[0].is_set()
