"""`daq up DIR`: the supervisor (validate everything, start in order, restart, stop in order)."""

from __future__ import annotations

import logging
import sys
from collections import deque
from pathlib import Path
from typing import Annotated, Any

import typer

from enrgdaq_cli._common import error_line, errors, fail

HELP = """Run a whole system from a directory of TOML files: broker, stores, sources.

Every *.toml in DIR is validated first (all errors are reported together, exit code 2); a
supervisor.toml there sets the node name, broker address, out_dir, restart policy,
heartbeat timeout and run settings (every key optional). Then the broker starts, then one
store per backend the sources use, and each source once its stores have subscribed.
Children that die are restarted with backoff; hung ones (no heartbeat) are killed and
restarted. stats.csv and stats_remote.csv are rewritten in out_dir every few seconds, every
stats report is appended to stats_history.csv (for `daq stats plot`), and [stats]
prometheus = ":9464" serves /metrics; each child logs to out_dir/logs/NAME.log. Ctrl-C
stops sources first, then stores (after every end-of-stream), then the broker; a second
Ctrl-C forces.

Control it from another shell with `daq ctl`.

Examples:

\b
  daq up configs/examples
  daq up configs/examples --no-tty > up.log 2>&1
  daq up configs/examples --check  # validate and show the plan, start nothing
  daq up configs/examples --check --import-jobs  # also import custom job types (runs their code)
"""


def _plain_console(name: str, line: str) -> None:
    sys.stderr.write(f"{name} | {line}\n")


class _Recent(logging.Handler):
    """The last few supervisor events and child warnings, shown under the live table."""

    def __init__(self, lines: deque[str]) -> None:
        super().__init__()
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def _setup_logging(plan: Any, *, live: bool, recent: deque[str]) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s [daq up] %(message)s")
    root = logging.getLogger("enrgdaq")
    root.setLevel(logging.INFO)
    plan.log_dir.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(plan.log_dir / "supervisor.log")
    file_handler.setFormatter(fmt)
    root.addHandler(file_handler)
    if live:
        handler: logging.Handler = _Recent(recent)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(fmt)
    root.addHandler(handler)


def _describe_plan(plan: Any) -> None:
    typer.echo(f"{plan.directory}: valid")
    typer.echo(f"  node {plan.node}, broker {plan.address.base}, control {plan.control}")
    typer.echo(f"  out_dir {plan.out_dir}")
    for spec in plan.children:
        typer.echo(f"  {spec.role:6} {spec.name}: {' '.join(spec.daq_args)}")
    for w in plan.warnings:
        typer.echo(f"  warning: {w}")


def up(
    directory: Annotated[
        Path, typer.Argument(metavar="DIR", help="Directory of job and store configs (TOML).")
    ],
    address: Annotated[
        str | None,
        typer.Option(
            "--broker",
            "-b",
            help="Broker address [default: supervisor.toml, DAQ_BROKER, ipc in the runtime dir].",
            show_default=False,
        ),
    ] = None,
    out_dir: Annotated[
        str | None, typer.Option(help="Output directory [default: supervisor.toml or out].")
    ] = None,
    no_tty: Annotated[
        bool, typer.Option("--no-tty", help="Plain log lines, no live table.")
    ] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Validate and print the plan; start nothing. Custom job types (module:Class, "
            "plugins) are not imported: only the keys every job has are checked.",
        ),
    ] = False,
    import_jobs: Annotated[
        bool,
        typer.Option(
            "--import-jobs",
            help="With --check: also import custom job types to check their own keys "
            "(runs their modules' code).",
        ),
    ] = False,
) -> None:
    from enrgdaq_core.config import ConfigError
    from enrgdaq_core.signals import stop_on_signals
    from enrgdaq_core.supervisor.plan import load_plan
    from enrgdaq_core.supervisor.supervisor import Supervisor

    with errors():
        try:
            plan = load_plan(
                directory, broker=address, out_dir=out_dir, import_jobs=import_jobs or not check
            )
        except ConfigError as exc:
            n = len(exc.issues)
            typer.echo(
                f"daq up: {n} problem{'s' if n != 1 else ''} in {directory}; nothing started",
                err=True,
            )
            raise
    if check:
        _describe_plan(plan)
        return
    live = not no_tty and sys.stdout.isatty()
    recent: deque[str] = deque(maxlen=8)
    try:
        _setup_logging(plan, live=live, recent=recent)
    except OSError as exc:
        fail(error_line(exc))  # out_dir not writable, disk full: what and where

    def console(name: str, line: str) -> None:
        if " ERROR " in line or " WARNING " in line or "Traceback" in line:
            recent.append(f"{name} | {line}")

    display: Any = None
    on_tick = None
    if live:
        from rich.console import Group
        from rich.live import Live
        from rich.text import Text

        from enrgdaq_core.render import status_table

        display = Live(auto_refresh=False, transient=False, redirect_stderr=False)

        def on_tick(sup: Supervisor) -> None:
            table = status_table(sup.status(), display.console.width)
            body = Group(table, Text("\n".join(recent), style="dim", overflow="ellipsis"))
            display.update(body, refresh=True)

    sup = Supervisor(plan, console=console if live else _plain_console, on_tick=on_tick)

    stop_on_signals(watch_parent=False, on_stop=sup.request_stop)
    try:
        with errors():  # ConnectionError: another `daq up` here, or the broker never came up
            if display is not None:
                with display:
                    code = sup.run()
            else:
                code = sup.run()
    except OSError as exc:
        fail(error_line(exc))  # out_dir not writable, disk full: what and where
    raise typer.Exit(code)
