"""Options and error handling shared by every subcommand (one definition, used everywhere)."""

from __future__ import annotations

import logging
import os
import sys
import sysconfig
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Annotated, NoReturn

import typer

from enrgdaq_core.config import ConfigError
from enrgdaq_core.names import BadName, check_name, check_topic
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
DEBUG_ENV = "DAQ_DEBUG"  # set (or `daq --debug`): errors show their traceback


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    typer.echo(f"daq: error: {message}", err=True)
    raise typer.Exit(code)


def debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _ours(filename: str) -> bool:
    """Frames of enrgdaq itself, the standard library or installed packages."""
    import enrgdaq_cli
    import enrgdaq_core

    roots = [Path(m.__file__).parent for m in (enrgdaq_core, enrgdaq_cli) if m.__file__]
    roots += [Path(sysconfig.get_path(k)) for k in ("stdlib", "platstdlib", "purelib", "platlib")]
    path = Path(filename)
    return filename.startswith("<") or any(path.is_relative_to(r) for r in roots)


def _where(tb: TracebackType | None) -> str:
    """` (at FILE:LINE in FUNC)` of the innermost frame in a lab's own code (its job type)."""
    found = ""
    while tb is not None:
        code = tb.tb_frame.f_code
        if not _ours(code.co_filename):
            try:
                name = os.path.relpath(code.co_filename)
            except ValueError:
                name = code.co_filename
            found = f" (at {name}:{tb.tb_lineno} in {code.co_name})"
        tb = tb.tb_next
    return found


def error_line(exc: BaseException) -> str:
    """An error no command turned into a message of its own, as one line: `FILE: reason`
    for a file or device, else `Type: message`; where a lab's code raised it; how to see
    the traceback for what looks like a bug."""
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
        hint = ""
    else:
        message = " ".join(str(exc).split())
        text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
        hint = f"; daq --debug (or {DEBUG_ENV}=1) shows the traceback"
    return f"{text}{_where(exc.__traceback__)}{hint}"


def quiet_stdout() -> None:
    """Our reader went away (`daq tap | head`, quitting `less`): point stdout at /dev/null,
    so the interpreter's final flush of what is buffered cannot fail again."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.__stdout__.fileno())
        os.close(fd)
    except (OSError, AttributeError, ValueError):
        pass


def broker_address(value: str | None) -> BrokerAddress:
    try:
        return BrokerAddress.parse(value)
    except AddressError as exc:
        fail(str(exc), EXIT_USAGE)
    except RuntimeDirError as exc:
        fail(str(exc))


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
    except BrokenPipeError:
        raise  # a ConnectionError too, but no error: the app ends quietly (main.py)
    except (ConnectionError, RuntimeDirError) as exc:
        fail(str(exc))


def setup_logging(level: str = "INFO", name: str | None = None) -> None:
    """Log lines go to stderr: stdout may be carrying the envelope stream."""
    fmt = "%(asctime)s %(levelname)s " + (f"[{name}] " if name else "") + "%(message)s"
    logging.basicConfig(level=getattr(logging, level, logging.INFO), format=fmt, stream=sys.stderr)
