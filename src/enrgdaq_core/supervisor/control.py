"""The control endpoint of a running `daq up`: its protocol, its server, the client `daq ctl` uses.

A REP socket answering one msgpack request at a time (`{"cmd": "status"}`, `{"cmd":
"restart", "job": "sensor1"}`, ...). Every command's fields are typed and bounded by its
schema below (`reqrep.Request`); a request that does not fit is refused with one line and
changes nothing. By default it is an ipc socket beside the broker's, in the per-user runtime
directory (mode 0700): only this user on this machine can reach it. A tcp endpoint is used
only when configured (`control = "tcp://..."` in supervisor.toml).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Annotated, Any, Literal

import msgspec
import zmq

from enrgdaq_core.reqrep import Handler, RemoteError, Request, Server
from enrgdaq_core.reqrep import request as _request
from enrgdaq_core.transport import BrokerAddress, CurveKeys, runtime_dir

__all__ = [
    "COMMANDS",
    "MAX_LOG_LINES",
    "ControlServer",
    "LogsRequest",
    "PingRequest",
    "RestartRequest",
    "RunRequest",
    "StartRequest",
    "StatusRequest",
    "StopRequest",
    "default_endpoint",
    "follow_logs",
    "request",
]

FOLLOW_INTERVAL = 0.5  # s between two `logs` requests of `daq ctl logs -f`
MAX_LOG_LINES = 100_000
_MAX_OFFSET = 2**62  # a log offset in bytes: far beyond any file, well inside every int type

PieceName = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class PingRequest(Request, tag="ping"):
    """Is a supervisor there? (a second `daq up` asks before it takes the socket)."""


class StatusRequest(Request, tag="status"):
    """Every piece, its state and last report, the run (`daq ctl status`)."""


class RestartRequest(Request, tag="restart"):
    """Stop a piece and start it again (counted as a restart, reason `requested`)."""

    job: PieceName


class StopRequest(Request, tag="stop"):
    """Stop a piece and keep it stopped until `start`."""

    job: PieceName


class StartRequest(Request, tag="start"):
    """Start a stopped piece."""

    job: PieceName


class RunRequest(Request, tag="run"):
    """`show` the current and past runs, or close this run and start the `next`."""

    action: Literal["show", "next"] = "show"


class LogsRequest(Request, tag="logs"):
    """The last `lines` lines of a piece's log, or (with `offset`) what follows that byte."""

    job: PieceName
    offset: Annotated[int, msgspec.Meta(ge=0, le=_MAX_OFFSET)] | None = None
    lines: Annotated[int, msgspec.Meta(ge=0, le=MAX_LOG_LINES)] = 50


COMMANDS = ("status", "restart", "stop", "start", "run", "logs")
"""What `daq ctl` can ask (the unknown-command error lists them; `ping` is for `daq up`)."""


def default_endpoint(address: BrokerAddress) -> str:
    """The control socket that belongs to a broker address: `ipc://DIR/broker.sup`."""
    if address.base.startswith("ipc://"):
        return address.base + ".sup"
    port = address.inbound.rsplit(":", 1)[-1]
    return f"ipc://{runtime_dir()}/supervisor-{port}.sup"


def _ipc_path(endpoint: str) -> str | None:
    return endpoint[len("ipc://") :] if endpoint.startswith("ipc://") else None


class ControlServer(Server):
    """The supervisor's side: a `reqrep.Server` that refuses to steal a live supervisor's
    socket, and removes its ipc socket file when it closes."""

    def __init__(
        self,
        endpoint: str,
        handlers: Mapping[type[Request], Handler] | None = None,
        *,
        expected: tuple[type[BaseException], ...] = (),
        keys: CurveKeys | None = None,
        ctx: zmq.Context | None = None,
    ) -> None:
        path = _ipc_path(endpoint)
        stale = False
        if path and os.path.exists(path):
            try:
                request(endpoint, "ping", timeout=0.5)
            except (TimeoutError, RemoteError):
                stale = True  # left by a supervisor that died
            else:
                raise ConnectionError(f"another `daq up` is already running at {endpoint}")
        try:
            super().__init__(
                endpoint,
                handlers,
                known=COMMANDS,
                expected=expected,
                keys=keys,
                ctx=ctx,
                replace_stale=stale,
            )
        except zmq.ZMQError as exc:
            raise ConnectionError(f"cannot bind the control endpoint {endpoint}: {exc}") from None

    def close(self) -> None:
        super().close()
        path = _ipc_path(self.endpoint)
        if path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def request(
    endpoint: str,
    cmd: str,
    *,
    timeout: float = 5.0,
    keys: CurveKeys | None = None,
    **args: Any,
) -> dict[str, Any]:
    """Ask a running supervisor; TimeoutError when none answers, RemoteError when it refuses."""
    return _request(
        endpoint,
        {"cmd": cmd, **args},
        timeout=timeout,
        keys=keys,
        expect="`daq up`",
        hint=" (is one running?)",
    )


def follow_logs(
    endpoint: str,
    job: str,
    offset: int,
    *,
    timeout: float = 5.0,
    interval: float = FOLLOW_INTERVAL,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[str]:
    """The text appended to one piece's log from `offset` on, as it grows (`logs -f`).

    Never ends by itself (the caller stops iterating, or Ctrl-C); raises like `request`.
    A rotated log starts over at the beginning of the new file (the supervisor sees to it).
    """
    while True:
        sleep(interval)
        answer = request(endpoint, "logs", timeout=timeout, job=job, offset=offset)
        offset = answer.get("offset", offset)
        text = answer.get("text", "")
        if text:
            yield text
