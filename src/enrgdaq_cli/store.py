"""`daq store BACKEND`: one store process (the backends of `enrgdaq_core.store_config`)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from enrgdaq_cli._common import (
    BrokerOpt,
    broker_address,
    checked_name,
    checked_topics,
    errors,
    fail,
    setup_logging,
)
from enrgdaq_core.stores import names as store_names
from enrgdaq_core.stores import process_names

# A choice, so `daq store <TAB>` offers the backends and a typo is refused by the parser;
# an in-process backend (memory) passes it and is refused with the reason by build_backend.
BackendName = StrEnum("BackendName", {n: n for n in store_names()})

_PROCESS_BACKENDS = ", ".join(process_names()[:-1]) + " or " + process_names()[-1]
_IN_PROCESS = ", ".join(n for n in store_names() if n not in process_names())
_IN_PROCESS_NOTE = (
    f" ({_IN_PROCESS}: in-process only, for tests and notebooks)" if _IN_PROCESS else ""
)
SHORT_HELP = f"Store data into {_PROCESS_BACKENDS}."

HELP = f"""Store data from the broker or from stdin into one backend:
{_PROCESS_BACKENDS}{_IN_PROCESS_NOTE}.

Where data goes comes from the source's [store_config.BACKEND] settings in each message;
-o (a file, a table, a key) and -O KEY=VALUE override them. Rows are written in batches
(--flush-rows / --flush-seconds); Ctrl-C, SIGTERM and end-of-stream flush and close.
File names, layouts and crash behaviour per backend: docs/stores.md.

Examples:

\b
  daq store csv --from data.sensor1 -o sensor.csv
  daq job run configs/examples/sensor.toml -o - | daq store hdf5 -o sensor.h5
  daq replay run42.raw | daq store root -O compression_level=9
  daq store csv --from data.sensor1 -O use_zstd=true -O rotate=1h -O add_date=true
  daq store mysql --from data. -O host=127.0.0.1 -O database=test --table readings
  daq store csv --config configs/examples/store_csv.toml   # a seed-style store config
"""


def store(
    backend: Annotated[
        BackendName,
        typer.Argument(
            metavar="BACKEND", help=f"{_PROCESS_BACKENDS}{_IN_PROCESS_NOTE}.", show_default=False
        ),
    ],
    topics: Annotated[
        list[str] | None,
        typer.Option(
            "--from",
            "-f",
            help="Topic to store (repeat). Default: every data. topic "
            "whose messages name this backend.",
            show_default=False,
        ),
    ] = None,
    input_: Annotated[
        str | None,
        typer.Option(
            "--input",
            "-i",
            help="`-` (stdin) or a stream file [default: stdin when "
            "it is a pipe, else the broker].",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            "--table",
            "--key",
            help="Destination: file path "
            "(placeholders {source} {run} {date}), SQL table, or Redis key.",
            show_default=False,
        ),
    ] = None,
    options: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            "-O",
            help="KEY=VALUE store option or store_config setting (repeat).",
            show_default=False,
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Store TOML (seed style accepted).")
    ] = None,
    out_dir: Annotated[str | None, typer.Option(help="Directory for relative file paths.")] = None,
    flush_rows: Annotated[int | None, typer.Option(help="Write after this many rows.")] = None,
    flush_seconds: Annotated[
        float | None, typer.Option(help="Write rows at most this old (s).")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Name in stats [default: store-BACKEND].")
    ] = None,
    exit_on_eos: Annotated[
        bool,
        typer.Option(
            help="Exit once every source seen, and each --from data.SOURCE, has sent end-of-stream."
        ),
    ] = False,
    state: Annotated[
        Path | None,
        typer.Option(
            help="File keeping the last sequence number written per source, so a restarted "
            "store counts exactly what it missed (daq up sets it).",
            show_default=False,
        ),
    ] = None,
    address: BrokerOpt = None,
) -> None:
    from enrgdaq_core.broker_client import BrokerWatch
    from enrgdaq_core.channels import open_input, store_source
    from enrgdaq_core.signals import stop_on_signals
    from enrgdaq_core.stores.options import build_backend, parse_assignments
    from enrgdaq_core.stores.runner import StoreRunner
    from enrgdaq_core.transport import TelemetryPublisher

    topics = checked_topics(topics, "--from")
    if name is not None:
        checked_name("piece", name, "--name")
    with errors():
        flags = {"out_dir": out_dir, "flush_rows": flush_rows, "flush_seconds": flush_seconds}
        be, overrides = build_backend(
            backend.value,
            config_file=config,
            assignments=parse_assignments(options or []),
            flags=flags,
        )
        piece = name or f"store-{backend.value}"
        setup_logging(be.options.verbosity, piece)
        be.check()
        addr = broker_address(address)
        source = store_source(input_, topics=bool(topics))
        inp = open_input(source, addr, list(topics or ["data."]))
        telemetry = TelemetryPublisher(addr)
        runner = StoreRunner(
            be,
            state_file=state,
            name=piece,
            settings_override=overrides,
            destination=output,
            telemetry=telemetry,
            require_target=source is None and not topics,
        )
        watch = BrokerWatch(addr) if source in (None, "broker") else None  # says it waits
        # under `daq up`, if it dies: drain until every source seen has ended, then stop
        stop = stop_on_signals(role="store", drained=lambda: not runner.open_sources)
        try:
            if exit_on_eos:
                runner.expect_sources(list(topics or []))
            result = runner.run(inp, stop, exit_on_eos=exit_on_eos)
        finally:
            if watch is not None:
                watch.close()
            inp.close()
            telemetry.close()
        if result.damage is not None:
            fail(f"input damaged: {result.damage} (everything before it was stored)")
        if result.failed_rows:
            fail(f"{result.failed_rows} rows could not be written (see the log above)")
