"""Options and error handling shared by every subcommand (one definition, used everywhere)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, NoReturn

import typer

from enrgdaq_core.config import ConfigError
from enrgdaq_core.transport import AddressError, BrokerAddress, RuntimeDirError

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
    except RuntimeDirError as exc:
        fail(str(exc))


@contextmanager
def errors() -> Iterator[None]:
    """Turn the core's expected failures into one clear line and an exit code, not a traceback."""
    try:
        yield
    except ConfigError as exc:
        for issue in exc.issues:
            typer.echo(f"daq: config error: {issue}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    except (ConnectionError, RuntimeDirError) as exc:
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
