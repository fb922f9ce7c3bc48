"""The control endpoint of a running `daq up`, and the client `daq ctl` uses.

A REP socket answering one msgpack request at a time (`{"cmd": "status"}`, `{"cmd":
"restart", "job": "sensor1"}`, ...). By default it is an ipc socket beside the broker's, in
the per-user runtime directory (mode 0700): only this user on this machine can reach it. A
tcp endpoint is used only when configured (`control = "tcp://..."` in supervisor.toml).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import msgspec
import zmq

from enrgdaq_core.envelope import decode_body, encode_body
from enrgdaq_core.transport import BrokerAddress, runtime_dir

COMMANDS = ("status", "restart", "stop", "start", "run", "logs")


class ControlError(RuntimeError):
    """The supervisor refused a request (unknown job, bad command): the message says why."""


def default_endpoint(address: BrokerAddress) -> str:
    """The control socket that belongs to a broker address: `ipc://DIR/broker.sup`."""
    if address.base.startswith("ipc://"):
        return address.base + ".sup"
    port = address.inbound.rsplit(":", 1)[-1]
    return f"ipc://{runtime_dir()}/supervisor-{port}.sup"


def _ipc_path(endpoint: str) -> str | None:
    return endpoint[len("ipc://") :] if endpoint.startswith("ipc://") else None


class ControlServer:
    """The supervisor's side: bind, then `recv()` when the socket polls readable."""

    def __init__(self, endpoint: str, *, ctx: zmq.Context | None = None) -> None:
        self.endpoint = endpoint
        self._sock = (ctx or zmq.Context.instance()).socket(zmq.REP)
        self._sock.linger = 0
        path = _ipc_path(endpoint)
        if path and os.path.exists(path):
            try:
                request(endpoint, "ping", timeout=0.5)
            except (TimeoutError, ControlError):
                os.unlink(path)  # left by a supervisor that died
            else:
                self._sock.close()
                raise ConnectionError(f"another `daq up` is already running at {endpoint}")
        try:
            self._sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self._sock.close()
            raise ConnectionError(f"cannot bind the control endpoint {endpoint}: {exc}") from None

    @property
    def socket(self) -> zmq.Socket:
        return self._sock

    def recv(self) -> dict[str, Any] | None:
        """The next request, or None if none is waiting (or it was not a request)."""
        try:
            data = self._sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            return None
        try:
            req = decode_body(data, dict)
        except Exception:
            self.reply({"error": "undecodable request"})
            return None
        return req

    def reply(self, body: dict[str, Any]) -> None:
        self._sock.send(encode_body(body))

    def close(self) -> None:
        self._sock.close(linger=0)
        path = _ipc_path(self.endpoint)
        if path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def request(endpoint: str, cmd: str, *, timeout: float = 5.0, **args: Any) -> dict[str, Any]:
    """Ask a running supervisor; TimeoutError when none answers, ControlError when it refuses."""
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.linger = 0
    try:
        sock.connect(endpoint)
        sock.send(encode_body({"cmd": cmd, **args}))
        if not sock.poll(int(timeout * 1000)):
            raise TimeoutError(f"no `daq up` answered at {endpoint} (is one running?)")
        answer = msgspec.msgpack.decode(sock.recv())
    finally:
        sock.close()
    if isinstance(answer, dict) and answer.get("error"):
        raise ControlError(str(answer["error"]))
    return answer
