"""Options and error handling shared by every subcommand (one definition, used everywhere)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, NoReturn

import typer

from enrgdaq_core.config import ConfigError
from enrgdaq_core.names import BadName, check_name, check_topic
from enrgdaq_core.transport import AddressError, BrokerAddress

BrokerOpt = Annotated[
    str | None,
    typer.Option(
        "--broker",
        "-b",
        envvar="DAQ_BROKER",
        help="Broker address: ipc://PATH or tcp://HOST:PORT [default: ipc in the runtime dir].",
        show_default=False,
    ),
]

EXIT_FAILURE = 1
EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    typer.echo(f"daq: error: {message}", err=True)
    raise typer.Exit(code)


def broker_address(value: str | None) -> BrokerAddress:
    try:
        return BrokerAddress.parse(value)
    except AddressError as exc:
        fail(str(exc), EXIT_USAGE)


def checked_name(kind: str, value: str, option: str) -> str:
    """A source or piece name given on the command line (the names rule), or exit 2."""
    try:
        return check_name(kind, value)
    except BadName as exc:
        fail(f"{option}: {exc}", EXIT_USAGE)


def checked_topics(values: list[str] | None, option: str) -> list[str] | None:
    """Topic patterns given on the command line (no NUL, `*` only at the end), or exit 2."""
    try:
        return None if values is None else [check_topic(v) for v in values]
    except BadName as exc:
        fail(f"{option}: {exc}", EXIT_USAGE)


def check_node() -> None:
    """Refuse a DAQ_NODE that is not a valid node name, before any piece stamps it."""
    from enrgdaq_core.envelope import node_name

    try:
        node_name()
    except BadName as exc:
        fail(str(exc), EXIT_USAGE)


@contextmanager
def errors() -> Iterator[None]:
    """Turn the core's expected failures into one clear line and an exit code, not a traceback."""
    try:
        yield
    except ConfigError as exc:
        for issue in exc.issues:
            typer.echo(f"daq: config error: {issue}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    except ConnectionError as exc:
        fail(str(exc))
    except BrokenPipeError:
        # the reader of our stdout went away (`| head`): not an error of ours
        try:
            sys.stdout = None  # type: ignore[assignment]
        finally:
            raise typer.Exit(0) from None


def setup_logging(level: str = "INFO", name: str | None = None) -> None:
    """Log lines go to stderr: stdout may be carrying the envelope stream."""
    fmt = "%(asctime)s %(levelname)s " + (f"[{name}] " if name else "") + "%(message)s"
    logging.basicConfig(level=getattr(logging, level, logging.INFO), format=fmt, stream=sys.stderr)
