"""`daq job run | list | new`: run one source job from TOML, list types, write a starter config."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from enrgdaq_cli._common import EXIT_USAGE, BrokerOpt, broker_address, errors, fail, setup_logging

app = typer.Typer(help="Run source jobs and write their configs.", no_args_is_help=True)

RUN_HELP = """Run one source job from a TOML file until Ctrl-C (or --count messages).

Publishes to the broker, or writes the envelope stream to stdout with -o - (the default when
stdout is a pipe; a file, `> job.log`, is a log and gets no stream unless -o - asks). With no
broker it says so at once and waits --wait seconds. On SIGINT/SIGTERM it sends end-of-stream
and exits 0.

Examples:

\b
  daq job run configs/examples/sensor.toml
  daq job run configs/examples/sensor.toml -o - | daq store csv -o sensor.csv
  daq job run configs/examples/digitizer.toml --count 1000 -o run.raw
"""


@app.command("run", help=RUN_HELP)
def run(
    file: Annotated[Path, typer.Argument(help="Job config (TOML).", show_default=False)],
    output: Annotated[
        str | None,
        typer.Option(
            "-o",
            "--output",
            help="`-` for stdout, `broker`, or a file path [default: broker, or - into a pipe].",
            show_default=False,
        ),
    ] = None,
    address: BrokerOpt = None,
    name: Annotated[str | None, typer.Option(help="Source name [default: config or stem].")] = None,
    run_number: Annotated[int, typer.Option("--run", help="Run number stamped on data.")] = 0,
    count: Annotated[
        int | None,
        typer.Option(min=1, help="Stop after this many data messages.", show_default=False),
    ] = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for the broker.")] = 10.0,
    broker_queue_mb: Annotated[
        float | None,
        typer.Option(
            min=0.001,
            help="MiB held while the broker is away, then dropped and counted "
            "[default: the config's broker_queue_mb].",
            show_default=False,
        ),
    ] = None,
) -> None:
    from enrgdaq_core.broker_client import claim
    from enrgdaq_core.channels import BrokerOutput, open_output, stdout_is_pipe
    from enrgdaq_core.jobs import load_job
    from enrgdaq_core.jobs.runtime import run_job
    from enrgdaq_core.signals import stop_on_signals
    from enrgdaq_core.transport import TelemetryPublisher

    with errors():
        job = load_job(file, name=name)
        setup_logging(job.config.verbosity, job.name)
        addr = broker_address(address)
        job.broker = addr
        target = output if output is not None else ("-" if stdout_is_pipe() else "broker")
        stop = stop_on_signals()
        run_number = run_number or int(os.environ.get("DAQ_RUN", "0"))
        meta = {"writer": "daq job run", "source": job.name, "run": run_number}
        try:
            queue_mb = broker_queue_mb or job.config.broker_queue_mb
            out = open_output(
                target, addr, meta=meta, wait=wait, interrupt=stop.is_set, queue_mb=queue_mb
            )
        except FileExistsError:
            fail(
                f"{target} exists: choose a new file (run files are never overwritten)", EXIT_USAGE
            )
        if isinstance(out, BrokerOutput):
            try:  # before the first message: one name, one publisher per broker
                claim(out.address, job.name)
            except ConnectionError:
                out.close()
                raise
        telemetry = TelemetryPublisher(addr)
        try:
            run_job(job, out, stop=stop, telemetry=telemetry, run=run_number, max_messages=count)
        finally:
            out.close()
            telemetry.close()


@app.command("list")
def list_types(
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show every job type with its config keys and defaults.

    Example: daq job list
    """
    from enrgdaq_core.jobs import names, resolve
    from enrgdaq_core.jobs.describe import describe

    types = {n: describe(resolve(n)) for n in names()}
    if json_out:
        import json

        typer.echo(json.dumps(types, indent=2, default=str))
        return
    from enrgdaq_core.render import job_types_table

    job_types_table(types)


@app.command("new")
def new(
    type_name: Annotated[str, typer.Argument(metavar="TYPE", help="Job type (see daq job list).")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="File to write [default: stdout].")
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Write a starting config for TYPE with every key at its default.

    Example: daq job new sensor -o sensor.toml && daq job run sensor.toml
    """
    from enrgdaq_core.jobs import resolve
    from enrgdaq_core.jobs.describe import starter_toml

    try:
        cls = resolve(type_name)
    except LookupError as exc:
        fail(str(exc), EXIT_USAGE)
    text = starter_toml(cls, type_name)
    if output is None:
        typer.echo(text, nl=False)
        return
    if output.exists() and not force:
        fail(f"{output} exists (use --force to overwrite)", EXIT_USAGE)
    output.write_text(text)
    typer.echo(f"wrote {output}", err=True)
