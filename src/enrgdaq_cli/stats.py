"""`daq stats`: what every piece is doing (snapshot, --json, --watch, --serve, --record, plot)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from enrgdaq_cli._common import (
    EXIT_USAGE,
    BrokerOpt,
    broker_address,
    errors,
    fail,
)

HELP = """Show every piece seen on the broker: node, piece, status, rates, latency, lost
messages, restarts.

A monitor consumer: it listens on the broker's dropping endpoint, so watching never slows the
experiment, even over a slow link. A piece that stops reporting is shown stale after
--stale seconds (never dropped); one whose loss count grows is shown lossy.

Examples:

\b
  daq stats                       # one table
  daq stats --json | jq '.pieces[] | {piece, rate, lost}'
  daq stats --watch               # live table; q or Ctrl-C quits
  daq stats --broker tcp://daq01:5550 --watch --sort rate
  daq stats --serve :9464         # Prometheus /metrics
  daq stats --record stats.csv    # a history for plots
  daq stats plot stats.csv -o rates.png
"""

app = typer.Typer(help=HELP, invoke_without_command=True, no_args_is_help=False)


@app.callback(invoke_without_command=True)
def stats(
    ctx: typer.Context,
    address: BrokerOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable snapshot.")] = False,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Live table, updated in place (q quits).")
    ] = False,
    serve: Annotated[
        str | None,
        typer.Option(
            help="Serve Prometheus /metrics on [HOST]:PORT (`:9464` is every interface).",
            show_default=False,
        ),
    ] = None,
    record: Annotated[
        Path | None,
        typer.Option(help="Append every report to this CSV history.", show_default=False),
    ] = None,
    wait: Annotated[float, typer.Option(help="Seconds to listen for a snapshot.")] = 1.5,
    stale: Annotated[
        float, typer.Option(help="Seconds without a report before a piece is stale.")
    ] = 5.0,
    sort: Annotated[str, typer.Option(help="Order: name, rate, lost, latency or age.")] = "name",
    refresh: Annotated[float, typer.Option(help="Seconds between redraws of --watch.")] = 0.5,
    duration: Annotated[
        float | None,
        typer.Option(help="Stop --watch/--serve/--record after this many seconds."),
    ] = None,
) -> None:
    if ctx.invoked_subcommand is not None:
        return
    from enrgdaq_core.monitor import SORT_KEYS

    if sort not in SORT_KEYS:
        fail(f"--sort {sort!r}: expected one of {', '.join(SORT_KEYS)}", EXIT_USAGE)
    if json_out and watch:
        fail("--json and --watch do not mix (use --json for scripts, --watch for people)", 2)
    addr = broker_address(address)
    with errors():
        if not (watch or serve or record):
            _snapshot(addr, json_out=json_out, wait=wait, stale=stale, sort=sort)
            return
        _run(
            addr,
            watch=watch,
            serve=serve,
            record=record,
            stale=stale,
            sort=sort,
            refresh=refresh,
            duration=duration,
        )


def _snapshot(addr: Any, *, json_out: bool, wait: float, stale: float, sort: str) -> None:
    from enrgdaq_core.broker_client import START_HINT, query
    from enrgdaq_core.monitor import collect

    try:
        query(addr, "status", timeout=2.0)
    except TimeoutError:
        fail(f"no broker answers at {addr.base} ({START_HINT})")
    monitor = collect(addr, wait, stale_after=stale)
    if json_out:
        import json

        snap = monitor.snapshot(sort)
        snap["broker"] = addr.base
        typer.echo(json.dumps(snap, indent=2, default=str))
        return
    from enrgdaq_core.render import print_stats

    print_stats(monitor, sort=sort, broker=addr.base)


def _run(
    addr: Any,
    *,
    watch: bool,
    serve: str | None,
    record: Path | None,
    stale: float,
    sort: str,
    refresh: float,
    duration: float | None,
) -> None:
    from enrgdaq_core.monitor import Monitor, StatsFeed
    from enrgdaq_core.signals import stop_on_signals
    from enrgdaq_core.watch import TerminalKeys, watch_loop

    monitor = Monitor(stale_after=stale)
    feed = StatsFeed(addr, monitor)
    exporter = None
    recorder = None
    keys: TerminalKeys | None = None
    live = None
    draw = None
    stop = stop_on_signals(watch_parent=False)  # a monitor run by hand
    try:
        if serve is not None:
            from enrgdaq_core.prometheus import serve as start_exporter

            try:
                exporter = start_exporter(monitor, serve)
            except ValueError as exc:
                fail(str(exc), EXIT_USAGE)
            except OSError as exc:
                fail(f"cannot serve on {serve}: {exc}")
            typer.echo(f"serving metrics on {exporter.url}", err=True)
        if record is not None:
            from enrgdaq_core.stats_history import StatsRecorder

            try:
                recorder = StatsRecorder(record)
            except OSError as exc:
                fail(f"cannot write {record}: {exc}")
            recorder.follow(monitor)
            typer.echo(f"recording stats to {record}", err=True)
        if watch:
            from rich.console import Console
            from rich.live import Live

            from enrgdaq_core.render import stats_view

            if sys.stdin.isatty():
                keys = TerminalKeys(sys.stdin.fileno())
            console = Console()

            def view() -> Any:
                width = max(80, console.width)
                hint = "q quits" if keys is not None else "Ctrl-C quits"
                return stats_view(monitor, sort=sort, broker=addr.base, width=width, hint=hint)

            live = Live(view(), console=console, auto_refresh=False, transient=False)
            live.start()

            def draw() -> None:
                live.update(view(), refresh=True)

        elif serve is None:
            typer.echo("recording; Ctrl-C stops", err=True)
        watch_loop(feed, stop=stop, draw=draw, refresh=refresh, duration=duration, keys=keys)
    finally:
        if live is not None:
            live.stop()
        if keys is not None:
            keys.restore()
        if exporter is not None:
            exporter.close()
        if recorder is not None:
            recorder.close()
        feed.close()


PLOT_HELP = """Draw throughput, latency and loss over time from a stats history (one written by
`daq stats --record FILE`, or the supervisor's out/stats_history.csv) into a PNG for the
run report.

Example:

  daq stats plot stats.csv -o rates.png --title "run 42"
"""


@app.command("plot", help=PLOT_HELP)
def plot(
    history: Annotated[Path, typer.Argument(help="Stats history CSV.", show_default=False)],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Image to write (.png, .svg, .pdf).")
    ] = Path("stats.png"),
    title: Annotated[str | None, typer.Option(help="Figure title.", show_default=False)] = None,
    piece: Annotated[
        list[str] | None,
        typer.Option(help="Only these pieces (shell patterns; repeat).", show_default=False),
    ] = None,
) -> None:
    from enrgdaq_core.plot import plot_history
    from enrgdaq_core.stats_history import HistoryError

    try:
        path = plot_history(history, output, title=title, pieces=piece)
    except HistoryError as exc:
        fail(str(exc))
    typer.echo(f"wrote {path}", err=True)
