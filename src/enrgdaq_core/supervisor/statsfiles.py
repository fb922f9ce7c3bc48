"""`stats.csv` and `stats_remote.csv`: the seed's two files, with our figures after its columns.

Tools written for the seed read these files by column name, so every seed column is present,
first and under the same name; dates are unix milliseconds or `N/A`, booleans `true`/`false`.
Both files are rewritten whole every few seconds (write to a temporary file, then rename), so
a reader never sees half a file.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from enrgdaq_core.atomic import atomic_write

SEED_STATS_COLUMNS = [
    "supervisor",
    "daq_job",
    "is_alive",
    "last_message_in_date",
    "message_in_count",
    "last_message_out_date",
    "message_out_count",
    "message_in_queue_size",
    "message_out_queue_size",
    "last_restart_date",
    "restart_count",
]
STATS_COLUMNS = [
    *SEED_STATS_COLUMNS,
    "role",
    "state",
    "pid",
    "uptime_s",
    "rate_in",
    "rate_out",
    "mb_in",
    "mb_out",
    "rows_in",
    "rows_out",
    "lost",
    "latency_p50_ms",
    "latency_p99_ms",
    "cpu_percent",
    "rss_mb",
    "restart_reasons",
    "last_exit",
]
SEED_REMOTE_COLUMNS = [
    "supervisor",
    "is_alive",
    "last_active",
    "message_in_count",
    "message_in_megabytes",
    "message_out_count",
    "message_out_megabytes",
]
REMOTE_COLUMNS = [*SEED_REMOTE_COLUMNS, "pieces", "lost"]


def date_ms(ns: int | None) -> str:
    return str(ns // 1_000_000) if ns else "N/A"


def boolean(value: bool) -> str:
    return "true" if value else "false"


def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return ""
    return str(round(value, digits))


def stats_row(node: str, piece: Mapping[str, Any]) -> dict[str, str]:
    """One stats.csv row from a supervisor status entry (see Supervisor.status)."""
    r: Mapping[str, Any] = piece.get("report") or {}
    role = piece.get("role", r.get("role", ""))
    queue = int(r.get("queue", 0) or 0)
    reasons = piece.get("restart_reasons") or {}
    return {
        "supervisor": node,
        "daq_job": piece["name"],
        "is_alive": boolean(bool(piece.get("alive"))),
        "last_message_in_date": date_ms(r.get("last_in_ns")),
        "message_in_count": str(r.get("msgs_in", 0)),
        "last_message_out_date": date_ms(r.get("last_out_ns")),
        "message_out_count": str(r.get("msgs_out", 0)),
        "message_in_queue_size": str(queue if role != "job" else 0),
        "message_out_queue_size": str(queue if role == "job" else 0),
        "last_restart_date": date_ms(piece.get("last_restart_ns")),
        "restart_count": str(piece.get("restarts", 0)),
        "role": role,
        "state": piece.get("state", ""),
        "pid": str(piece.get("pid") or ""),
        "uptime_s": _num(piece.get("uptime_s"), 1),
        "rate_in": _num(r.get("rate_in", 0.0)),
        "rate_out": _num(r.get("rate_out", 0.0)),
        "mb_in": _num(r.get("mb_in", 0.0), 6),
        "mb_out": _num(r.get("mb_out", 0.0), 6),
        "rows_in": str(r.get("rows_in", 0)),
        "rows_out": str(r.get("rows_out", 0)),
        "lost": str(r.get("lost", 0)),
        "latency_p50_ms": _num(r.get("latency_p50_ms")),
        "latency_p99_ms": _num(r.get("latency_p99_ms")),
        "cpu_percent": _num(r.get("cpu_percent", 0.0), 1),
        "rss_mb": _num(r.get("rss_mb", 0.0), 1),
        "restart_reasons": ";".join(f"{k}:{v}" for k, v in sorted(reasons.items())),
        "last_exit": piece.get("last_exit", ""),
    }


def remote_rows(
    pieces: Iterable[tuple[str, Mapping[str, Any], bool]],
) -> list[dict[str, str]]:
    """One row per node from (node, report, alive) of every piece seen.

    In/out are what the node's pieces took in and sent out (the broker, which only forwards,
    is left out so nothing is counted twice); a node is alive while any of its pieces is.
    """
    nodes: dict[str, dict[str, Any]] = {}
    for node, r, alive in pieces:
        n = nodes.setdefault(
            node,
            {
                "alive": False,
                "last": 0,
                "in": 0,
                "in_b": 0,
                "out": 0,
                "out_b": 0,
                "n": 0,
                "lost": 0,
            },
        )
        n["alive"] = n["alive"] or alive
        n["n"] += 1
        n["last"] = max(n["last"], int(r.get("time_ns", 0) or 0))
        if r.get("role") == "broker":
            continue
        n["in"] += int(r.get("msgs_in", 0) or 0)
        n["in_b"] += int(r.get("bytes_in", 0) or 0)
        n["out"] += int(r.get("msgs_out", 0) or 0)
        n["out_b"] += int(r.get("bytes_out", 0) or 0)
        n["lost"] += int(r.get("lost", 0) or 0)
    return [
        {
            "supervisor": node,
            "is_alive": boolean(n["alive"]),
            "last_active": date_ms(n["last"]),
            "message_in_count": str(n["in"]),
            "message_in_megabytes": _num(n["in_b"] / 1e6, 6),
            "message_out_count": str(n["out"]),
            "message_out_megabytes": _num(n["out_b"] / 1e6, 6),
            "pieces": str(n["n"]),
            "lost": str(n["lost"]),
        }
        for node, n in sorted(nodes.items())
    ]


def mark_ended(path: Path, state: str) -> None:
    """Rewrite a stats file whose writer is gone: every row not alive, in `state` (if the file
    has a state column). A missing file is left missing."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = list(reader.fieldnames or [])
    except FileNotFoundError:
        return
    for row in rows:
        row["is_alive"] = boolean(False)
        if "state" in row:
            row["state"] = state
    write_csv(path, columns, rows)


def write_csv(path: Path, columns: list[str], rows: Iterable[Mapping[str, str]]) -> None:
    """Replace `path` atomically with a header and `rows`."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: row.get(c, "") for c in columns})
    atomic_write(path, buf.getvalue())
