"""Terminal rendering for the CLI (the one core module allowed to import rich).

Internal: the design is that subcommands share their rendering here rather than import each
other; a lab reads the same data as plain values (`Monitor.snapshot`, `jobs.describe`).
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.table import Table

from enrgdaq_core import timefmt
from enrgdaq_core.envelope import Envelope, Kind

_err = Console(stderr=True)
_out = Console()


def job_types_table(types: dict[str, dict[str, Any]]) -> None:
    for name, info in types.items():
        aliases = f" (aliases: {', '.join(info['aliases'])})" if info["aliases"] else ""
        table = Table(
            title=f"[bold]{name}[/]{aliases}: {info['description']}", title_justify="left"
        )
        table.add_column("key")
        table.add_column("type")
        table.add_column("default")
        for key, k in info["keys"].items():
            default = "(required)" if k["required"] else repr(k["default"])
            table.add_row(key, k["type"], default)
        _out.print(table)


VALUES_WIDTH = 120  # characters of values at most on one message line


def envelope_line(
    env: Envelope, now_ns: int | None = None, *, latency: bool = True, values: bool = True
) -> str:
    """One readable line for a message: topic, source, seq, shape, size, latency, then
    (`values`) what it carries: a table's first row, a raw payload's first bytes, a control
    body's fields, at most VALUES_WIDTH characters.

    `latency=False` leaves the latency out (a replayed message's age says nothing).
    """
    h = env.header
    now_ns = now_ns or time.time_ns()
    stamp = timefmt.clock(h.time_ns, ms=True)
    lat = (now_ns - h.time_ns) / 1e6 if h.time_ns else 0.0
    shape = ""
    shown: list[str] = []
    if h.kind is Kind.TABLE:
        try:
            table = env.table()
            shape = f" rows={table.num_rows} cols={table.num_columns}"
            if values and table.num_rows:
                shown = _first_row(table)
                if table.num_rows > 1:
                    shown.insert(0, "first row:")
        except Exception:
            shape = " (undecodable table)"
    elif h.kind is Kind.RAW:
        shape = " raw"
        if values and env.nbytes:
            head = bytes(memoryview(env.payload)[:16])
            shown = [head.hex(" ") + (" ..." if env.nbytes > 16 else "")]
    elif values and h.kind is not Kind.EOS:
        shown = _body_fields(env.payload)
    line = (
        f"{stamp} {env.topic} {h.kind.value} src={h.source} seq={h.seq}{shape} bytes={env.nbytes}"
    )
    if latency:
        line += f" lat={lat:.2f}ms"
    return f"{line} | {_bounded(shown)}" if shown else line


def _bounded(items: list[str], width: int = VALUES_WIDTH) -> str:
    text = ""
    for item in items:
        candidate = f"{text} {item}" if text else item
        if len(candidate) > width:
            return (text + " ...") if text else item[: width - 4] + " ..."
        text = candidate
    return text


def _short(value: Any, width: int = 24) -> str:
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, str):
        text = repr(value)
    elif isinstance(value, bytes):
        text = value[:8].hex() + ("..." if len(value) > 8 else "")
    elif value is None:
        text = "null"
    else:
        text = str(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _first_row(table: Any) -> list[str]:
    """`name=value` of a table's first row; lists as their first few items and length."""
    import pyarrow as pa

    out: list[str] = []
    row = table.slice(0, 1)
    for field, column in zip(table.schema, row.columns, strict=True):
        kind = field.type
        scalar = column[0]
        if not scalar.is_valid:
            text = "null"
        elif pa.types.is_timestamp(kind):
            ns = column.cast(pa.timestamp("ns", tz=kind.tz)).cast(pa.int64())[0].as_py()
            text = timefmt.clock(ns, ms=True)
        elif (
            pa.types.is_list(kind)
            or pa.types.is_large_list(kind)
            or (pa.types.is_fixed_size_list(kind))
        ):
            items = scalar.values
            first = ",".join(_short(v, 10) for v in items.slice(0, 4).to_pylist())
            text = f"[{first}{',...' if len(items) > 4 else ''}]({len(items)})"
        else:
            text = _short(scalar.as_py())
        out.append(f"{field.name}={text}")
    return out


def _body_fields(payload: bytes | memoryview) -> list[str]:
    """`key=value` of a control message's (stats, log, alert, run) top-level fields."""
    import msgspec

    try:
        body = msgspec.msgpack.decode(payload)
    except (msgspec.DecodeError, ValueError):
        return ["(undecodable body)"]
    if not isinstance(body, dict):
        return [_short(body)]
    return [
        f"{k}={_short(v)}" for k, v in body.items() if not isinstance(v, (dict, list)) and v != ""
    ]


# -- daq stats: the snapshot and watch tables -------------------------------------------------

STATUS_STYLE = {
    "ok": "green",
    "lossy": "bold red",
    "alert": "bold magenta",
    "stale": "bold yellow",
    "stopped": "dim",
}
_ROW_STYLE = {"lossy": "red", "alert": "magenta", "stale": "yellow", "stopped": "dim"}
_FIXED = 8 + 6 + 6 + 5 + 6 + 6 + 6 + 3  # every column but the piece's
_GAPS = 8 * 2
_BAD_FROM = 100  # terminal width from which the table shows the `bad` column
_BAD = 5


def _bad(report: Any) -> int:
    """A piece's messages wrong in ways other than loss (docs/metrics.md "Loss, exactly")."""
    return report.undecodable + report.duplicates + report.jumps + report.out_of_epoch


def compact(value: float | None) -> str:
    """A number in at most 5 characters: 0, 7.25, 123, 12.3k, 4.56M."""
    if value is None:
        return "-"
    v = float(value)
    if v == 0:
        return "0"
    if v < 0:
        return "-" + compact(-v)[:4]
    if v >= 1e4:
        x = v
        for suffix in "kMGTPE":
            x /= 1000
            text = f"{x:.3g}"
            if "e" not in text and float(text) < 1000:
                return text + suffix
        return f"{v:.0e}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 1:
        return f"{v:.3g}"
    if v >= 0.01:
        return f"{v:.2f}"
    return "<0.01"


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def stats_table(
    pieces: list[Any],
    now: float,
    *,
    stale_after: float,
    width: int = 80,
    show_node: bool | None = None,
) -> Table:
    """One row per piece (monitor.PieceView): status, rates, latency, loss, restarts.

    Fits `width` columns (80 at least): the piece column takes what the figures leave.
    """
    nodes = {p.node for p in pieces if p.node}
    if show_node is None:
        show_node = len(nodes) > 1
    bad = width >= _BAD_FROM
    name_width = max(8, width - _FIXED - _GAPS - 1 - (_BAD + 2 if bad else 0))
    table = Table(box=None, padding=(0, 1), pad_edge=False, header_style="bold underline")
    table.add_column("piece", no_wrap=True, overflow="ellipsis", max_width=name_width)
    table.add_column("status", no_wrap=True, width=8)
    for name, w in (
        ("in/s", 6),
        ("out/s", 6),
        ("MB/s", 5),
        ("p50ms", 6),
        ("p99ms", 6),
        ("lost", 6),
        *((("bad", _BAD),) if bad else ()),
        ("rst", 3),
    ):
        table.add_column(name, justify="right", no_wrap=True, width=w, overflow="ellipsis")
    for p in pieces:
        status = p.status(now, stale_after)
        r = p.report
        label = f"{p.node}:{p.piece}" if show_node and p.node else p.piece
        age = _age(p.age(now)) if p.reported else "?"
        shown = status if status != "stale" else f"stale {age}"
        if not p.reported:  # known by name only: no figures to show
            table.add_row(label, f"[{STATUS_STYLE[status]}]{shown}[/]", *["-"] * (8 if bad else 7))
            continue
        table.add_row(
            label,
            f"[{STATUS_STYLE[status]}]{shown}[/]",
            compact(r.rate_in),
            compact(r.rate_out),
            compact(max(r.mb_in, r.mb_out)),
            compact(r.latency_p50_ms),
            compact(r.latency_p99_ms),
            compact(r.lost),
            *((compact(_bad(r)),) if bad else ()),
            compact(p.restarts),
            style=_ROW_STYLE.get(status),
        )
    return table


def stats_view(
    monitor: Any,
    *,
    sort: str = "name",
    broker: str = "",
    width: int = 80,
    hint: str = "",
    max_alerts: int = 5,
) -> Any:
    """The whole watch screen: a title line, the table, active alerts, totals."""
    from rich.console import Group
    from rich.text import Text

    now = monitor.clock()
    pieces = monitor.pieces(sort, now=now)
    nodes = sorted({p.node for p in pieces if p.node})
    totals = monitor.totals(now)
    head = Text(no_wrap=True, overflow="ellipsis")
    head.append("daq stats", style="bold")
    head.append(f"  {timefmt.clock()}")
    if len(nodes) == 1:
        head.append(f"  node {nodes[0]}")
    head.append(f"  {totals.pieces} piece{'s' if totals.pieces != 1 else ''}")
    if broker:
        head.append(f"  {broker}", style="dim")
    parts: list[Any] = [head]
    if pieces:
        parts.append(stats_table(pieces, now, stale_after=monitor.stale_after, width=width))
    else:
        parts.append(Text("waiting for stats reports...", style="dim"))
    alerts = monitor.alerts()
    for a in alerts[:max_alerts]:
        where = f"{a.piece}@{a.node}" if a.node and len(nodes) > 1 else a.piece
        line = Text(no_wrap=True, overflow="ellipsis")
        line.append(f"! {a.severity:<8}", style="bold magenta")
        line.append(f" {where}: {a.message} ({a.name})")
        parts.append(line)
    if len(alerts) > max_alerts:
        parts.append(Text(f"  ... and {len(alerts) - max_alerts} more alerts", style="magenta"))
    foot = Text(no_wrap=True, overflow="ellipsis", style="dim")
    bad = {k: v for k, v in totals.by_status.items() if v and k != "ok"}
    odd = {
        "undecodable": totals.undecodable,
        "duplicates": totals.duplicates,
        "jumps": totals.jumps,
        "out of epoch": totals.out_of_epoch,
    }
    odd_text = "  ".join(f"{k} {v}" for k, v in odd.items() if v)
    foot.append(
        f"lost {totals.lost}  missed reports {totals.missed_reports}"
        + (f"  bad: {odd_text}" if odd_text else "")
        + "".join(f"  {k} {v}" for k, v in bad.items())
    )
    if hint:
        foot.append(f"   {hint}")
    parts.append(foot)
    return Group(*parts)


def print_stats(monitor: Any, *, sort: str = "name", broker: str = "") -> None:
    """The one-shot `daq stats` table on stdout (fits the terminal, 80 columns or more)."""
    width = max(80, _out.width)
    _out.print(stats_view(monitor, sort=sort, broker=broker, width=width))


# -- daq up / daq ctl status: the supervisor's table -------------------------------------


def _fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def status_table(status: dict[str, Any], width: int = 80) -> Any:
    """The status of a `daq up` as a rich table (also the live view of `daq up`).

    Fits 80 columns; rows written and the last exit are added on wider terminals.
    """
    from rich import box

    wide = width >= 110
    run = status.get("run") or {}
    title = (
        f"{status.get('node', '')}  run {run.get('run', '-')}  {status.get('phase', '')}  "
        f"broker {status.get('broker', '')}"
    )
    table = Table(
        title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1)
    )
    columns = [
        ("piece", "left"),
        ("state", "left"),
        ("pid", "right"),
        ("up", "right"),
        ("rst", "right"),
        ("in/s", "right"),
        ("out/s", "right"),
        ("lost", "right"),
        ("p99ms", "right"),
        ("beat", "right"),
    ]
    if wide:
        columns += [("rows", "right"), ("last exit", "left")]
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    styles = {"running": "green", "backoff": "yellow", "failed": "bold red", "stopping": "yellow"}
    for p in status.get("pieces", []):
        r = p.get("report") or {}
        state = p.get("state", "")
        lost = int(r.get("lost", 0) or 0)
        cells = [
            p["name"],
            f"[{styles.get(state, 'dim')}]{state}[/]",
            str(p.get("pid") or "-"),
            _fmt_age(p.get("uptime_s")) if p.get("alive") else "-",
            str(p.get("restarts", 0)),
            compact(r.get("rate_in")),
            compact(r.get("rate_out")),
            f"[bold red]{lost}[/]" if lost else "0",
            compact(r.get("latency_p99_ms")),
            _fmt_age(p.get("heartbeat_age_s")),
        ]
        if wide:
            cells += [compact(r.get("rows_out")), p.get("last_exit", "")]
        table.add_row(*cells)
    return table
