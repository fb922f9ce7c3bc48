"""`daq tap`: watch what flows on the broker."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer

from enrgdaq_cli._common import BrokerOpt, broker_address, checked_topics, errors

if TYPE_CHECKING:
    from enrgdaq_core.channels import StreamOutput
    from enrgdaq_core.envelope import Envelope

HELP = """Subscribe to topics and show what flows: a line per message on a terminal, the
envelope stream when stdout is a pipe.

A monitor by default: it may miss messages when it falls behind, never slows the sources, and
reports what it missed. --lossless makes it a lossless consumer (for recording into a store).

Examples:

\b
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
    from enrgdaq_core.signals import stop_on_signals
    from enrgdaq_core.tap import tap as run_tap

    topics = checked_topics(topics, "TOPICS")
    addr = broker_address(address)
    stream = output == "-" or (output is None and stdout_is_pipe())
    stop = stop_on_signals(watch_parent=False)  # a monitor run by hand
    with errors():
        inp = BrokerInput(addr, topics or [""], mode="lossless" if lossless else "monitor")
        out = StreamOutput(sys.stdout.buffer) if stream else None
        try:
            result = run_tap(
                inp,
                _stream_sink(out) if out is not None else _line_sink(),
                stop=stop,
                count=count,
                idle_timeout=timeout,
                on_idle=out.flush if out is not None else None,
            )
        finally:
            if out is not None:
                out.close()
            inp.close()
    problems = result.problems()
    if problems:
        mode = "lossless" if lossless else "monitor mode"
        counts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in problems.items())
        typer.echo(f"tap: {counts} message(s) ({mode})", err=True)


def _stream_sink(out: StreamOutput) -> Callable[[Envelope, int], None]:
    return lambda env, _gap: out.send(env)


def _line_sink() -> Callable[[Envelope, int], None]:
    from enrgdaq_core.render import envelope_line
    from enrgdaq_core.tap import DUPLICATE

    def sink(env: Envelope, gap: int) -> None:
        line = envelope_line(env)
        if gap == DUPLICATE:
            line += "  [duplicate]"
        elif gap:
            line += f"  [missed {gap}]"
        typer.echo(line)

    return sink
