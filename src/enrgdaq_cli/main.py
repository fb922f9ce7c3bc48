"""The `daq` app: registers one module per subcommand.

Kept cheap to import: `daq --help` must not load pyarrow, uproot or h5py, so subcommand
modules import heavy parts of the core inside their functions.
"""

from __future__ import annotations

import typer

from enrgdaq_cli import _common, broker, ctl, job, replay, stats, store, tap, up

app = typer.Typer(
    name="daq",
    help="enrgdaq: composable data-acquisition commands (broker, jobs, stores, stats, replay).",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _every_command() -> None:
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
    try:
        app()
    except BrokenPipeError:
        # Our reader went away (`daq tap | head`): not an error. Point stdout at /dev/null so
        # the interpreter's final flush does not raise again.
        import os
        import sys

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)


if __name__ == "__main__":
    run()
