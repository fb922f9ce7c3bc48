"""`daq ctl`: talk to a running `daq up` over its control endpoint."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from enrgdaq_cli._common import BrokerOpt, broker_address, checked_name, errors, fail

app = typer.Typer(
    help="""Control a running `daq up`: status, restart/stop/start a piece, next run, logs.

The supervisor's control endpoint is found from the broker address (--broker, DAQ_BROKER or
the default), or given with --control (DAQ_CONTROL).

Examples:

\b
  daq ctl status
  daq ctl restart sensor1
  daq ctl run next
  daq ctl logs store-csv -f
""",
    no_args_is_help=True,
)

ControlOpt = Annotated[
    str | None,
    typer.Option(
        "--control",
        envvar="DAQ_CONTROL",
        help="Control endpoint of the supervisor [default: beside the broker's sockets].",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
TimeoutOpt = Annotated[float, typer.Option(help="Seconds to wait for an answer.")]
JobArg = Annotated[str, typer.Argument(metavar="JOB", help="Piece name (see daq ctl status).")]


def _endpoint(control: str | None, address: str | None) -> str:
    if control:
        return control
    from enrgdaq_core.supervisor.control import default_endpoint

    with errors():  # a runtime directory that is not private: one line
        return default_endpoint(broker_address(address))


def _ask(endpoint: str, cmd: str, timeout: float, **args: Any) -> dict[str, Any]:
    from enrgdaq_core.reqrep import RemoteError
    from enrgdaq_core.supervisor.control import request

    try:
        return request(endpoint, cmd, timeout=timeout, **args)
    except (TimeoutError, RemoteError) as exc:
        fail(str(exc))


def _say(answer: dict[str, Any], json_out: bool) -> None:
    if json_out:
        typer.echo(json.dumps(answer, default=str))
    else:
        typer.echo(answer.get("message", "ok"))


@app.command("status")
def status(
    control: ControlOpt = None,
    address: BrokerOpt = None,
    json_out: JsonOpt = False,
    timeout: TimeoutOpt = 5.0,
) -> None:
    """Every piece: state, pid, uptime, restarts, rates, loss, heartbeat age.

    Example: daq ctl status --json | jq '.pieces[] | {name, state, restarts}'
    """
    answer = _ask(_endpoint(control, address), "status", timeout)
    if json_out:
        typer.echo(json.dumps(answer, default=str))
        return
    from rich.console import Console

    from enrgdaq_core.render import status_table

    console = Console()
    console.print(status_table(answer, console.width))


def _piece_command(
    cmd: str, job: str, control: str | None, address: str | None, *, j: bool, t: float
) -> None:
    checked_name("piece", job, "JOB")
    _say(_ask(_endpoint(control, address), cmd, t, job=job), j)


def _register_piece_command(cmd: str, doc: str) -> None:
    """`daq ctl restart|stop|start JOB`: the same options, one request each."""

    def command(
        job: JobArg,
        control: ControlOpt = None,
        address: BrokerOpt = None,
        json_out: JsonOpt = False,
        timeout: TimeoutOpt = 5.0,
    ) -> None:
        _piece_command(cmd, job, control, address, j=json_out, t=timeout)

    app.command(cmd, help=doc)(command)


for _cmd, _doc in (
    ("restart", "Restart one piece now (SIGTERM, then start again; counted as a restart)."),
    ("stop", "Stop one piece and keep it stopped (until `daq ctl start`)."),
    ("start", "Start a stopped piece."),
):
    _register_piece_command(_cmd, _doc)


@app.command("run")
def run(
    action: Annotated[str, typer.Argument(help="next: close this run, start the next; show.")],
    control: ControlOpt = None,
    address: BrokerOpt = None,
    json_out: JsonOpt = False,
    timeout: TimeoutOpt = 30.0,
) -> None:
    """Close the current run and start the next number (`next`), or show the runs (`show`).

    Example: daq ctl run next
    """
    if action not in ("next", "show"):
        fail(f"unknown run action {action!r} (expected next or show)", 2)
    answer = _ask(_endpoint(control, address), "run", timeout, action=action)
    if json_out or action == "next":
        _say(answer, json_out)
        return
    current = answer.get("run") or {}
    typer.echo(f"current run: {current.get('run', '-')} (started {current.get('start', '-')})")
    for r in answer.get("runs", []):
        how = " (aborted: daq up died)" if r.get("ended") == "aborted" else ""
        typer.echo(
            f"  run {r.get('run')}: {r.get('start', '')} .. {r.get('stop') or 'running'}{how}"
        )


@app.command("logs")
def logs(
    job: JobArg,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.")
    ] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", help="Lines to show first.")] = 50,
    control: ControlOpt = None,
    address: BrokerOpt = None,
    json_out: JsonOpt = False,
    timeout: TimeoutOpt = 5.0,
) -> None:
    """Show the end of one piece's log; -f follows it (Ctrl-C to stop).

    Example: daq ctl logs sensor1 -f
    """
    checked_name("piece", job, "JOB")
    endpoint = _endpoint(control, address)
    answer = _ask(endpoint, "logs", timeout, job=job, lines=lines)
    if json_out and not follow:
        typer.echo(json.dumps(answer))
        return
    sys.stdout.write(answer.get("text", ""))
    sys.stdout.flush()
    if not follow:
        return
    from enrgdaq_core.reqrep import RemoteError
    from enrgdaq_core.supervisor.control import follow_logs

    try:
        for text in follow_logs(endpoint, job, answer.get("offset", 0), timeout=timeout):
            sys.stdout.write(text)
            sys.stdout.flush()
    except (TimeoutError, RemoteError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass
