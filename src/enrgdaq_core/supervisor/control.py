"""The control endpoint of a running `daq up`, and the client `daq ctl` uses.

A REP socket answering one msgpack request at a time (`{"cmd": "status"}`, `{"cmd":
"restart", "job": "sensor1"}`, ...). By default it is an ipc socket beside the broker's, in
the per-user runtime directory (mode 0700): only this user on this machine can reach it. A
tcp endpoint is used only when configured (`control = "tcp://..."` in supervisor.toml).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import zmq

from enrgdaq_core.reqrep import Handler, RemoteError, Server
from enrgdaq_core.reqrep import request as _request
from enrgdaq_core.transport import BrokerAddress, CurveKeys, runtime_dir

__all__ = ["COMMANDS", "ControlServer", "default_endpoint", "follow_logs", "request"]

COMMANDS = ("status", "restart", "stop", "start", "run", "logs")
FOLLOW_INTERVAL = 0.5  # s between two `logs` requests of `daq ctl logs -f`


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
        handlers: Mapping[str, Handler] | None = None,
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
