"""Terminal rendering for the CLI (the one core module allowed to import rich)."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.table import Table

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


def envelope_line(env: Envelope, now_ns: int | None = None, *, latency: bool = True) -> str:
    """One readable line for a message: topic, source, seq, shape, size, latency.

    `latency=False` leaves the latency out (a replayed message's age says nothing).
    """
    h = env.header
    now_ns = now_ns or time.time_ns()
    stamp = (
        time.strftime("%H:%M:%S", time.localtime(h.time_ns / 1e9))
        + f".{h.time_ns // 1_000_000 % 1000:03d}"
    )
    lat = (now_ns - h.time_ns) / 1e6 if h.time_ns else 0.0
    shape = ""
    if h.kind is Kind.TABLE:
        try:
            table = env.table()
            shape = f" rows={table.num_rows} cols={table.num_columns}"
        except Exception:
            shape = " (undecodable table)"
    elif h.kind is Kind.RAW:
        shape = " raw"
    line = (
        f"{stamp} {env.topic} {h.kind.value} src={h.source} seq={h.seq}{shape} bytes={env.nbytes}"
    )
    return f"{line} lat={lat:.2f}ms" if latency else line
