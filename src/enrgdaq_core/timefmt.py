"""Time as text: the one time-zone rule of the project.

The rule: **local time**, the clock on the lab's wall, everywhere a time is shown or written
(ENRGDAQ's configs and its users' scripts assume it). Where the text is a record that outlives
the process (runs.json, stats histories, file names), it carries the UTC offset, so the record
stays unambiguous when read in another zone or across a daylight-saving change. Times inside
messages and data files are never text: they are integer ns since the epoch (UTC).

Set TZ (for example `TZ=UTC daq up configs/examples`) to have every piece write UTC instead.
"""

from __future__ import annotations

import datetime as _dt
import time as _time

__all__ = ["clock", "date", "iso", "name_stamp", "parse_period", "stamp", "to_ns"]


def _local(ns: int | None) -> _dt.datetime:
    t = _time.time_ns() if ns is None else ns
    # whole seconds and microseconds apart: a float of ns since 1970 rounds at 0.1 us
    seconds = _dt.datetime.fromtimestamp(t // 1_000_000_000).astimezone()
    return seconds.replace(microsecond=t // 1000 % 1_000_000)


def iso(ns: int | None = None, *, ms: bool = False) -> str:
    """A record's time: `2026-11-25T14:30:05+01:00` (`.123` before the offset with `ms`)."""
    return _local(ns).isoformat(timespec="milliseconds" if ms else "seconds")


def stamp(ns: int | None = None, *, ms: bool = False) -> str:
    """A log line's or a listing's time: `2026-11-25 14:30:05` (`.123` with `ms`)."""
    return _local(ns).isoformat(" ", timespec="milliseconds" if ms else "seconds")[
        : 23 if ms else 19
    ]


def clock(ns: int | None = None, *, ms: bool = False) -> str:
    """A live view's time of day: `14:30:05` (`.123` with `ms`)."""
    return stamp(ns, ms=ms)[11:]


def date(ns: int | None = None) -> str:
    """The date `add_date` puts in names: `2026-11-25`."""
    return _local(ns).strftime("%Y-%m-%d")


def name_stamp(ns: int | None = None) -> str:
    """An opening time in a file name: `20261125T143000+0100`.

    Names sort in time order within one UTC offset (in the hour a daylight-saving change
    repeats, the offset tells the two apart).
    """
    return _local(ns).strftime("%Y%m%dT%H%M%S%z")


def to_ns(moment: _dt.datetime) -> int:
    """ns since the epoch; a naive datetime is local time."""
    if moment.tzinfo is None:
        moment = moment.astimezone()
    epoch = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
    return (moment - epoch) // _dt.timedelta(microseconds=1) * 1000


def parse_period(text: str) -> float:
    """`30s`, `15m`, `1h`, `1d` -> seconds; empty -> 0 (never); ValueError otherwise."""
    text = text.strip()
    if not text:
        return 0.0
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    unit = text[-1].lower()
    number = text[:-1] if unit in units else text
    try:
        value = float(number) * units.get(unit, 1)
    except ValueError:
        raise ValueError(f"expected a period like 30s, 15m, 1h or 1d, got {text!r}") from None
    if not value > 0 or value == float("inf"):  # nan, inf, 0 and negatives
        raise ValueError(f"expected a positive period, got {text!r}")
    return value
