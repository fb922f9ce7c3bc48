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
