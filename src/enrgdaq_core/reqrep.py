"""Request/reply, once for the project: the client every question goes through, and the server.

A request is one msgpack map whose "cmd" names the command (`{"cmd": "status"}`, `{"cmd":
"restart", "job": "sensor1"}`); a reply is one msgpack map, `{"error": "why"}` when the server
refused. Each command has a schema, a `Request` subclass tagged by its "cmd" with every field
typed and bounded (`msgspec.Meta`), and a server decodes a request straight into it: a handler
only ever sees a valid request, and a request that is not one (not msgpack, several frames, a
wrong type, an unknown field, a number out of range) gets one error line naming the field and
what was expected, and changes nothing.

The broker's control endpoint, the supervisor's control endpoint and every client (`daq ctl`,
the supervisor asking the broker, `wait_for_subscriptions`) use this module, so a timeout, a
refusal and a garbled answer look the same everywhere: `TimeoutError` naming the endpoint,
`RemoteError` with the server's reason. Sockets come from `transport.make_socket` (CURVE).
"""

from __future__ import annotations

import functools
import logging
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgspec
import zmq

from enrgdaq_core.envelope import EnvelopeError, decode_body, encode_body
from enrgdaq_core.transport import CurveKeys, make_socket

__all__ = ["MAX_REQUEST_BYTES", "Handler", "RemoteError", "Request", "Server", "request"]

log = logging.getLogger("enrgdaq.reqrep")

MAX_REQUEST_BYTES = 64 * 1024
"""A request is a few names and numbers; a bigger message is dropped unread (ZMQ_MAXMSGSIZE
disconnects its sender), so no client can make a server allocate without bound."""

_BURST = 100  # requests `serve_pending` answers before it lets its owner's loop go on

Reply = dict[str, Any]
Handler = Callable[[Any], Reply | None]
"""Answers one request (an instance of the schema it is registered for); None defers the
reply (the owner calls `Server.reply` later)."""


class Request(
    msgspec.Struct, tag_field="cmd", kw_only=True, forbid_unknown_fields=True, frozen=True
):
    """The schema of one command: subclass it with the command's name as its tag and its
    fields typed and bounded, `class Logs(Request, tag="logs"): lines: Annotated[int,
    Meta(ge=0)] = 50`. Unknown fields are refused, so a misspelt one is never ignored."""


class _Head(msgspec.Struct):
    """Only the "cmd" of a request (every other field skipped): to name an unknown command."""

    cmd: Any = None


class RemoteError(RuntimeError):
    """The server refused the request (its reason is the message), or its reply was garbled."""


def request(
    endpoint: str,
    body: Request | dict[str, Any],
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


def _tag(schema: type[Request]) -> str:
    """The "cmd" of a schema (its struct tag)."""
    tag = schema.__struct_config__.tag if issubclass(schema, Request) else None
    if not isinstance(tag, str):
        raise TypeError(f"{schema!r} is not a Request subclass with a tag= (its cmd)")
    return tag


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(text: str, limit: int = 300) -> str:
    """An error as one printable line of bounded length (a field name sent by a client may
    hold newlines, escapes or 60 KB)."""
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


_AT = re.compile(r"^(?P<what>.*) - at `\$\.?(?P<field>[^`]*)`$")


def _what_was_wrong(exc: msgspec.ValidationError) -> str:
    """msgspec's "Expected `int`, got `array` - at `$.lines`" as "lines: expected `int`, got
    `array`": the field first, then what was expected."""
    message = str(exc)
    m = _AT.match(message)
    if m is None or not m["field"]:
        return message[:1].lower() + message[1:]
    what = m["what"]
    return f"{m['field']}: {what[:1].lower()}{what[1:]}"


class Server:
    """A bound REP socket that decodes requests into their schemas, dispatches them by "cmd"
    and replies.

    Nothing a client sends can stop it or reach a handler unchecked: a message of several
    frames, one that is not msgpack, not a map, an unknown command or a request its schema
    refuses gets an error reply (one line: which field, what was expected), a message above
    `MAX_REQUEST_BYTES` is dropped unread, and an exception in a handler becomes an error reply
    (exceptions of the `expected` types are refusals, anything else is also logged with its
    traceback). `handlers` maps each command's schema (a `Request` subclass) to its handler;
    `known` is the list of commands an unknown one is told about (default: all). Use `serve()`
    in a thread of its own, or poll `socket` in a loop of your own and call `serve_pending()`
    when it is readable.
    """

    def __init__(
        self,
        endpoint: str,
        handlers: Mapping[type[Request], Handler] | None = None,
        *,
        known: Iterable[str] | None = None,
        expected: tuple[type[BaseException], ...] = (),
        keys: CurveKeys | None = None,
        ctx: zmq.Context | None = None,
        replace_stale: bool = False,
    ) -> None:
        self.endpoint = endpoint
        self.handlers: dict[str, Handler] = {_tag(s): h for s, h in (handlers or {}).items()}
        self.known = tuple(self.handlers if known is None else known)
        self.expected = expected
        schemas = tuple(handlers or {})
        # the tagged union of every schema: one decode picks the struct by "cmd" and checks it
        union = functools.reduce(operator.or_, schemas) if schemas else None
        self._decoder = msgspec.msgpack.Decoder(union) if union is not None else None
        self._sock = make_socket(
            zmq.REP,
            endpoint,
            bind=True,
            keys=keys,
            ctx=ctx,
            replace_stale=replace_stale,
            linger=0,
            maxmsgsize=MAX_REQUEST_BYTES,
        )

    @property
    def socket(self) -> zmq.Socket:
        """For a poller: readable when a request is waiting."""
        return self._sock

    def _parse(self, frames: list[bytes]) -> Request | str:
        """One received message as a valid request, or the one line that says why it is not."""
        got = self._parse_one(frames)
        return _one_line(got) if isinstance(got, str) else got

    def _parse_one(self, frames: list[bytes]) -> Request | str:
        if len(frames) != 1:
            return f"bad request: one msgpack frame expected, got {len(frames)} frames"
        data = frames[0]
        try:
            head = msgspec.msgpack.decode(data, type=_Head)
        except msgspec.ValidationError as exc:  # (a DecodeError too: caught first)
            return f"bad request: {_what_was_wrong(exc)} (a request is a map with a cmd)"
        except (msgspec.DecodeError, RecursionError):
            return "undecodable request (not msgpack, or nested too deep)"
        cmd = head.cmd
        if not isinstance(cmd, str) or cmd not in self.handlers or self._decoder is None:
            return f"unknown command {_short(cmd)} (known: {', '.join(self.known)})"
        try:
            return self._decoder.decode(data)
        except msgspec.ValidationError as exc:
            return f"bad {cmd} request: {_what_was_wrong(exc)}"
        except (msgspec.DecodeError, RecursionError):
            return "undecodable request (not msgpack, or nested too deep)"

    def _take(self) -> Request | str | None:
        """The next message, parsed; None if none is waiting."""
        try:
            frames = self._sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return None
        return self._parse(frames)

    def recv(self) -> Request | None:
        """The next valid request, or None if none is waiting (invalid ones are answered with
        their error on the way, at most `_BURST` of them)."""
        for _ in range(_BURST):
            got = self._take()
            if not isinstance(got, str):
                return got
            self.reply({"error": got})
        return None

    def reply(self, body: Reply) -> None:
        try:
            data = encode_body(body)
        except Exception:  # a handler's bug: the client still gets an answer
            log.exception("%s: unencodable reply", self.endpoint)
            data = encode_body({"error": "the server could not encode its reply"})
        self._sock.send(data)

    def answer(self, req: Request) -> Reply | None:
        """What the handler of `req` answers; None when it defers its reply."""
        cmd = _tag(type(req))
        try:
            return self.handlers[cmd](req)
        except Exception as exc:
            if not isinstance(exc, self.expected):
                log.exception("%s: %r failed", self.endpoint, cmd)
            return {"error": _one_line(str(exc)) or type(exc).__name__}

    def serve_pending(self) -> None:
        """Answer the waiting requests (at most `_BURST`); stop early at one whose reply is
        deferred.

        REP answers one request at a time, so after a deferral the owner must `reply()`
        before calling this again.
        """
        for _ in range(_BURST):
            got = self._take()
            if got is None:
                return
            answer = {"error": got} if isinstance(got, str) else self.answer(got)
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
