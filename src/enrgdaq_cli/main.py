"""The `daq` app: registers one module per subcommand.

Kept cheap to import: `daq --help` must not load pyarrow, uproot or h5py, so subcommand
modules import heavy parts of the core inside their functions.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from enrgdaq_cli import _common, broker, ctl, job, replay, stats, store, tap, up
from enrgdaq_cli._common import DEBUG_ENV, EXIT_FAILURE, debug, error_line, quiet_stdout


class _Daq(TyperGroup):
    """The root command: a reader that goes away ends every command quietly, exit 0.

    Caught here, inside the command line parser, which would otherwise exit 1 on EPIPE.
    """

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            quiet_stdout()
            raise typer.Exit(0) from None


app = typer.Typer(
    name="daq",
    cls=_Daq,
    help="enrgdaq: composable data-acquisition commands (broker, jobs, stores, stats, replay).",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"daq (enrgdaq) {version('enrgdaq')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            from enrgdaq_core import __version__

            typer.echo(f"daq (enrgdaq) {__version__}")
        raise typer.Exit(0)


@app.callback()
def _options(
    debug_flag: Annotated[
        bool,
        typer.Option(
            "--debug",
            help=f"Show the traceback of an error (or set {DEBUG_ENV}=1; daq up passes it on).",
        ),
    ] = False,
    _show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    if debug_flag:
        os.environ[DEBUG_ENV] = "1"  # the processes `daq up` starts inherit it
    _common.check_node()  # a bad DAQ_NODE: one line, before any piece starts


app.command("broker", help=broker.HELP, short_help="Run the pub/sub hub (XSUB in, XPUB out).")(
    broker.broker
)
app.add_typer(job.app, name="job", short_help="Run a source job; list job types; write a config.")
app.command("store", help=store.HELP, short_help=store.SHORT_HELP)(store.store)
app.command("tap", help=tap.HELP, short_help="Show what flows on the broker (or pipe it on).")(
    tap.tap
)
app.command("replay", help=replay.HELP, short_help="Play raw run files back; --info summarises.")(
    replay.replay
)
app.add_typer(
    stats.app, name="stats", short_help="Rates, latency, loss of every piece; --watch, --serve."
)
app.command("up", help=up.HELP, short_help="Run a whole system from a directory of configs.")(up.up)
app.add_typer(ctl.app, name="ctl", short_help="Control a running daq up: status, restart, logs.")


def run() -> None:
    """The `daq` entry point: every error is one line (the traceback with --debug)."""
    try:
        try:
            app()
        except SystemExit:
            if sys.stdout is not None:
                sys.stdout.flush()  # here, not at exit, where a closed pipe cannot be caught
            raise
    except BrokenPipeError:
        quiet_stdout()
        sys.exit(0)
    except Exception as exc:
        if debug():
            raise
        typer.echo(f"daq: error: {error_line(exc)}", err=True)
        sys.exit(EXIT_FAILURE)


if __name__ == "__main__":
    run()
