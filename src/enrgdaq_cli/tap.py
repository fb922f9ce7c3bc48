"""`daq tap`: watch what flows on the broker."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer

from enrgdaq_cli._common import EXIT_USAGE, BrokerOpt, broker_address, checked_topics, errors, fail

if TYPE_CHECKING:
    from enrgdaq_core.channels import StreamOutput
    from enrgdaq_core.envelope import Envelope

HELP = """Subscribe to topics and show what flows: a line per message (its header and what
it carries: a table's first row, a payload's first bytes), or the envelope stream when stdout
is a pipe (--text: lines into a pipe too; -o -: the stream into a file too).

A monitor by default: it may miss messages when it falls behind, never slows the sources, and
reports what it missed. --lossless makes it a lossless consumer (for recording into a store).
With no broker it says so at once and waits (--timeout bounds the wait: exit 1); with nothing
on its topics for a few seconds it names the topics the broker carries.

Examples:

\b
  daq tap data.sensor1            # one source (never data.sensor10)
  daq tap data. stats.            # every source's data and every piece's stats
  daq tap --text data. | grep sensor1
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
    text: Annotated[
        bool, typer.Option("--text", help="A line per message even into a pipe or file.")
    ] = False,
) -> None:
    from enrgdaq_core.broker_client import START_HINT, BrokerWatch
    from enrgdaq_core.channels import BrokerInput, StreamOutput, stdout_is_pipe
    from enrgdaq_core.signals import stop_on_signals
    from enrgdaq_core.tap import silence_hint
    from enrgdaq_core.tap import tap as run_tap

    topics = checked_topics(topics, "TOPICS")
    if text and output == "-":
        fail("--text and -o - ask for different outputs: choose one", EXIT_USAGE)
    addr = broker_address(address)
    stream = output == "-" or (output is None and not text and stdout_is_pipe())
    stop = stop_on_signals(watch_parent=False)  # a monitor run by hand
    wanted = list(topics or [""])

    def quiet() -> bool:
        done, line = silence_hint(addr, list(topics or []))
        if line is not None:
            _say(line)
        return done

    with errors():
        inp = BrokerInput(addr, wanted, mode="lossless" if lossless else "monitor")
        watch = BrokerWatch(addr, say=_say)
        out = StreamOutput(sys.stdout.buffer) if stream else None
        try:
            result = run_tap(
                inp,
                _stream_sink(out) if out is not None else _line_sink(),
                stop=stop,
                count=count,
                idle_timeout=timeout,
                on_idle=out.flush if out is not None else None,
                on_quiet=quiet,
            )
        finally:
            watch.close()
            if out is not None:
                out.close()
            inp.close()
    problems = result.problems()
    if problems:
        mode = "lossless" if lossless else "monitor mode"
        counts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in problems.items())
        _say(f"{counts} message(s) ({mode})")
    if timeout is not None and not result.seen and not watch.answered.is_set():
        fail(f"no broker answered at {addr.base} within {timeout:g} s ({START_HINT})")


def _say(line: str) -> None:
    typer.echo(f"tap: {line}", err=True)


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
