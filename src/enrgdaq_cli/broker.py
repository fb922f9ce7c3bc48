"""`daq broker`: run the pub/sub hub."""

from __future__ import annotations

from typing import Annotated

import typer

from enrgdaq_cli._common import BrokerOpt, broker_address, checked_name, setup_logging

HELP = """Run the pub/sub hub that sources publish to and stores subscribe from.

Lossless by default: a slow store slows the sources, nothing is dropped. Monitors (tap,
stats) use a separate dropping endpoint and never slow anyone down.

Examples:

\b
  daq broker                              # ipc sockets in the per-user runtime dir
  daq broker --broker tcp://0.0.0.0:5550  # tcp: 5550 in, 5551 out, 5552 mon, 5553 ctl, 5554 tel
"""


def broker(
    address: BrokerOpt = None,
    hwm: Annotated[int, typer.Option(help="Messages queued per peer before backpressure.")] = 1000,
    name: Annotated[str, typer.Option(help="Name in stats (stats.<name>).")] = "broker",
) -> None:
    from enrgdaq_core.broker import Broker
    from enrgdaq_core.signals import stop_on_signals

    checked_name("piece", name, "--name")
    setup_logging(name=name)
    addr = broker_address(address)
    b = Broker(addr, name=name, hwm=hwm)
    try:
        b.bind()
    except Exception as exc:  # zmq.ZMQError: address in use, bad interface
        typer.echo(f"daq: error: cannot bind {addr.base}: {exc}", err=True)
        raise typer.Exit(1) from None

    # SIGINT/SIGTERM stop the broker; under `daq up`, if it dies, once no client is left
    stop = stop_on_signals(
        on_stop=b.stop, role="broker", drained=lambda: not b.state.snapshot()["subscribers"]
    )
    typer.echo(
        f"broker {name} listening: in {addr.inbound}  out {addr.outbound}  "
        f"mon {addr.monitor}  ctl {addr.control}  tel {addr.telemetry}",
        err=True,
    )
    b.run()
    if stop.orphaned:  # the last one out of a dead `daq up`: end its run as aborted
        from enrgdaq_core.supervisor.orphan import record_aborted

        record_aborted()
    typer.echo(f"broker {name} stopped", err=True)
