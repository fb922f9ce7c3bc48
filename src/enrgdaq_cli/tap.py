"""`daq tap`: watch what flows on the broker."""

from __future__ import annotations

import sys
import time
from typing import Annotated

import typer

from enrgdaq_cli._common import BrokerOpt, broker_address, errors, stop_on_signals

HELP = """Subscribe to topics and show what flows: a line per message on a terminal, the
envelope stream when stdout is a pipe.

A monitor by default: it may miss messages when it falls behind, never slows the sources, and
reports what it missed. --lossless makes it a lossless consumer (for recording into a store).

Examples:

  daq tap data.sensor1            # one source (never data.sensor10)

  daq tap data. stats.            # every source's data and every piece's stats

  daq tap --lossless data.digi | daq store raw -o run.raw
"""


def tap(
    topics: Annotated[
        list[str] | None, typer.Argument(help="Topics: exact, `prefix.`, or `prefix*`.")
    ] = None,
    address: BrokerOpt = None,
    lossless: Annotated[bool, typer.Option(help="Lossless consumer (backpressure).")] = False,
    count: Annotated[
        int | None, typer.Option(help="Exit after this many messages.", show_default=False)
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Exit after this many idle seconds.", show_default=False)
    ] = None,
    output: Annotated[
        str | None, typer.Option("-o", "--output", help="`-` forces the stream on stdout.")
    ] = None,
) -> None:
    from enrgdaq_core.channels import BrokerInput, StreamOutput, stdout_is_pipe
    from enrgdaq_core.envelope import Kind
    from enrgdaq_core.stats import SequenceTracker

    addr = broker_address(address)
    stream = output == "-" or (output is None and stdout_is_pipe())
    inp = BrokerInput(addr, topics or [""], mode="lossless" if lossless else "monitor")
    out = StreamOutput(sys.stdout.buffer) if stream else None
    seqs = SequenceTracker()
    seen = 0
    stop = stop_on_signals()
    if not stream:
        from enrgdaq_core.render import envelope_line
    last = flushed = time.monotonic()
    with errors():
        try:
            while not stop.is_set() and (count is None or seen < count):
                env = inp.recv(0.2)
                if out is not None and (env is None or time.monotonic() - flushed >= 0.1):
                    out.flush()  # a pipe reader must not wait for a full buffer
                    flushed = time.monotonic()
                if env is None:
                    if timeout is not None and time.monotonic() - last > timeout:
                        break
                    continue
                last = time.monotonic()
                seen += 1
                gap = seqs.observe(env.header) if env.kind is not Kind.STATS else 0
                if out is not None:
                    out.send(env)
                else:
                    line = envelope_line(env)
                    if gap:
                        line += f"  [missed {gap}]"
                    typer.echo(line)
        finally:
            if out is not None:
                out.close()
            inp.close()
    if seqs.total_lost:
        typer.echo(f"tap: missed {seqs.total_lost} message(s) (monitor mode)", err=True)
