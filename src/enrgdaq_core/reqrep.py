"""Request/reply, once for the project: the client every question goes through, and the server.

A request is one msgpack dict with a "cmd" key (`{"cmd": "status"}`, `{"cmd": "restart",
"job": "sensor1"}`); a reply is one msgpack dict, `{"error": "why"}` when the server refused.
The broker's control endpoint, the supervisor's control endpoint and every client (`daq ctl`,
the supervisor asking the broker, `wait_for_subscriptions`) use this module, so a timeout, a
refusal and a garbled answer look the same everywhere: `TimeoutError` naming the endpoint,
`RemoteError` with the server's reason. Sockets come from `transport.make_socket` (CURVE).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import zmq

from enrgdaq_core.envelope import EnvelopeError, decode_body, encode_body
from enrgdaq_core.transport import CurveKeys, make_socket

__all__ = ["Handler", "RemoteError", "Server", "request"]

log = logging.getLogger("enrgdaq.reqrep")

Handler = Callable[[dict[str, Any]], dict[str, Any] | None]
"""Answers one request; None defers the reply (the owner calls `Server.reply` later)."""


class RemoteError(RuntimeError):
    """The server refused the request (its reason is the message), or its reply was garbled."""


def request(
    endpoint: str,
    body: dict[str, Any],
    *,
    timeout: float,
    keys: CurveKeys | None = None,
    expect: str = "server",
    hint: str = "",
    ctx: zmq.Context | None = None,
) -> dict[str, Any]:
    """Send one request and wait up to `timeout` seconds for its reply.

    A fresh REQ socket per request: after a timeout a REQ socket is stuck waiting for the
    reply it will never get, so reusing one would break every later request. `expect` names
    what should answer at `endpoint` ("broker", "`daq up`") and `hint` says how to get one,
    both for the TimeoutError message.
    """
    sock = make_socket(zmq.REQ, endpoint, keys=keys, ctx=ctx, linger=0)
    try:
        sock.send(encode_body(body))
        if not sock.poll(max(0, int(timeout * 1000))):
            raise TimeoutError(f"no {expect} answered at {endpoint}{hint}")
        data = sock.recv()
    finally:
        sock.close(linger=0)
    try:
        answer = decode_body(data, dict)
    except EnvelopeError:
        raise RemoteError(f"undecodable reply from {endpoint}") from None
    if answer.get("error"):
        raise RemoteError(str(answer["error"]))
    return answer


class Server:
    """A bound REP socket that decodes requests, dispatches them by "cmd" and replies.

    Nothing a client sends can stop it: an undecodable request gets `{"error": "undecodable
    request"}`, an unknown command an error naming the known ones, and an exception in a
    handler becomes an error reply (exceptions of the `expected` types are refusals, anything
    else is also logged with its traceback). Use `serve()` in a thread of its own, or poll
    `socket` in a loop of your own and call `serve_pending()` when it is readable.
    """

    def __init__(
        self,
        endpoint: str,
        handlers: Mapping[str, Handler] | None = None,
        *,
        known: Iterable[str] | None = None,
        expected: tuple[type[BaseException], ...] = (),
        keys: CurveKeys | None = None,
        ctx: zmq.Context | None = None,
        replace_stale: bool = False,
    ) -> None:
        self.endpoint = endpoint
        self.handlers: dict[str, Handler] = dict(handlers or {})
        self.known = tuple(self.handlers if known is None else known)
        self.expected = expected
        self._sock = make_socket(
            zmq.REP,
            endpoint,
            bind=True,
            keys=keys,
            ctx=ctx,
            replace_stale=replace_stale,
            linger=0,
        )

    @property
    def socket(self) -> zmq.Socket:
        """For a poller: readable when a request is waiting."""
        return self._sock

    def recv(self) -> dict[str, Any] | None:
        """The next request, or None if none is waiting (or it was not a request: answered)."""
        try:
            data = self._sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            return None
        try:
            return decode_body(data, dict)
        except EnvelopeError:
            self.reply({"error": "undecodable request"})
            return None

    def reply(self, body: dict[str, Any]) -> None:
        self._sock.send(encode_body(body))

    def answer(self, req: dict[str, Any]) -> dict[str, Any] | None:
        """What the handler of `req["cmd"]` answers; None when it defers its reply."""
        cmd = req.get("cmd")
        handler = self.handlers.get(cmd) if isinstance(cmd, str) else None
        if handler is None:
            return {"error": f"unknown command {cmd!r} (known: {', '.join(self.known)})"}
        try:
            return handler(req)
        except Exception as exc:
            if not isinstance(exc, self.expected):
                log.exception("%s: %r failed", self.endpoint, cmd)
            return {"error": str(exc) or type(exc).__name__}

    def serve_pending(self) -> None:
        """Answer every waiting request; stop early at one whose reply is deferred.

        REP answers one request at a time, so after a deferral the owner must `reply()`
        before calling this again.
        """
        while True:
            req = self.recv()
            if req is None:
                return
            answer = self.answer(req)
            if answer is None:
                return
            self.reply(answer)

    def serve(self, stop: Callable[[], bool] | None = None, poll: float = 0.1) -> None:
        """Answer requests until `stop()` is true or the context is terminated.

        For handlers that never defer (a deferred reply would never be sent here).
        """
        try:
            while stop is None or not stop():
                if self._sock.poll(int(poll * 1000)):
                    self.serve_pending()
        except zmq.ContextTerminated:
            pass

    def close(self) -> None:
        self._sock.close(linger=0)
