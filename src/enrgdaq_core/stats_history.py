"""Stats history files: one CSV row per report, for plots and run reports.

`daq stats --record FILE` writes them (and the supervisor may, with the same columns). Plain
CSV so that pandas, a spreadsheet or `grep` read it; every row is flushed at once, so a file
cut short by a crash keeps everything up to its last line.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from enrgdaq_core import timefmt
from enrgdaq_core.envelope import Envelope, Kind
from enrgdaq_core.stats import StatsReport, primary_rate

if TYPE_CHECKING:
    from enrgdaq_core.monitor import Monitor

__all__ = [
    "COLUMNS",
    "HistoryError",
    "Series",
    "StatsRecorder",
    "read_history",
]

COLUMNS = (
    "time",  # ISO 8601, UTC, of the report
    "node",
    "piece",
    "role",
    "status",  # as the recorder saw it: ok, lossy, alert, stale, stopped
    "msgs_in",
    "msgs_out",
    "bytes_in",
    "bytes_out",
    "rows_in",
    "rows_out",
    "rate_in",
    "rate_out",
    "mb_in",
    "mb_out",
    "lost",
    "undecodable",
    "latency_p50_ms",
    "latency_p99_ms",
    "latency_max_ms",
    "queue",
    "restarts",
    "cpu_percent",
    "rss_mb",
    "uptime_s",
)
_NUMERIC = COLUMNS[5:]


def _iso(time_ns: int) -> str:
    return timefmt.iso(time_ns, ms=True)


class StatsRecorder:
    """Appends reports to a CSV history (the header is written once, for a new file)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._f: TextIO = self.path.open("a", newline="")
        self._w = csv.writer(self._f)
        self.rows = 0
        if new:
            self._w.writerow(COLUMNS)
            self._f.flush()

    def write(
        self, report: StatsReport, *, status: str = "ok", restarts: int | None = None
    ) -> None:
        r = report
        values = {
            "time": _iso(r.time_ns),
            "node": r.node,
            "piece": r.piece,
            "role": r.role,
            "status": status,
            "restarts": r.restarts if restarts is None else restarts,
        }
        row = []
        for col in COLUMNS:
            if col in values:
                row.append(values[col])
                continue
            v = getattr(r, col)
            row.append("" if v is None else (round(v, 6) if isinstance(v, float) else v))
        self._w.writerow(row)
        self._f.flush()
        self.rows += 1

    def close(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()

    def follow(self, monitor: Monitor) -> None:
        """Write every stats report `monitor` takes, with the status and restarts it sees."""

        def on_report(env: Envelope, body: Any) -> None:
            if env.header.kind is Kind.STATS:
                view = monitor.get(body.node, body.piece)
                status = view.status(monitor.clock(), monitor.stale_after) if view else "ok"
                self.write(body, status=status, restarts=view.restarts if view else None)

        monitor.listeners.append(on_report)


@dataclass
class Series:
    """One piece's history, column by column (numbers as floats, None where empty)."""

    node: str
    piece: str
    role: str
    time: list[dt.datetime] = field(default_factory=list)
    values: dict[str, list[float | None]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.piece if not self.node else f"{self.piece}@{self.node}"

    def column(self, name: str) -> list[float | None]:
        return self.values.get(name, [None] * len(self.time))

    def rate(self) -> list[float | None]:
        """The watched rate (out for jobs, in for stores and the broker) at each row."""
        rin, rout = self.column("rate_in"), self.column("rate_out")
        return [
            None if a is None and b is None else primary_rate(self.role, a or 0.0, b or 0.0)
            for a, b in zip(rin, rout, strict=True)
        ]


class HistoryError(ValueError):
    """A stats history file that cannot be read (missing, not a history, no rows)."""


def _number(text: str) -> float | None:
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return None


def read_history(path: str | Path) -> list[Series]:
    """Every piece's series from a history file, in the order pieces first appear."""
    path = Path(path)
    try:
        f = path.open(newline="")
    except FileNotFoundError:
        raise HistoryError(f"{path}: file not found") from None
    with f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        missing = [c for c in ("time", "piece") if c not in cols]
        if missing:
            raise HistoryError(
                f"{path}: not a stats history (missing column(s) {', '.join(missing)})"
            )
        numeric = [c for c in cols if c in _NUMERIC]
        series: dict[tuple[str, str], Series] = {}
        for lineno, row in enumerate(_rows(reader), start=2):
            try:
                stamp = dt.datetime.fromisoformat(row["time"])
            except (TypeError, ValueError):
                raise HistoryError(f"{path}:{lineno}: bad time {row.get('time')!r}") from None
            key = (row.get("node") or "", row["piece"] or "")
            s = series.get(key)
            if s is None:
                s = series[key] = Series(key[0], key[1], row.get("role") or "")
                s.values = {c: [] for c in numeric}
            s.time.append(stamp)
            for c in numeric:
                s.values[c].append(_number(row.get(c) or ""))
    return list(series.values())


def _rows(reader: csv.DictReader) -> Iterator[dict[str, str]]:
    for row in reader:
        torn = None in row or any(v is None for v in row.values())
        if row.get("time") and not torn:  # skip a torn last line
            yield row
