"""The request/reply module without processes: a Server in a thread, clients over ipc."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import msgspec
import pytest
import zmq

from enrgdaq_core.reqrep import MAX_REQUEST_BYTES, RemoteError, Request, Server, request
from enrgdaq_core.transport import make_socket


class Echo(Request, tag="echo"):
    x: list[int] = []
    n: Annotated[int, msgspec.Meta(ge=0, le=10)] = 0


class Refuse(Request, tag="refuse"):
    pass


class Boom(Request, tag="boom"):
    pass


class Bad(Request, tag="bad"):
    pass


class Later(Request, tag="later"):
    pass


def _boom(req: Boom) -> dict[str, Any]:
    raise RuntimeError("handler broke")


def _refuse(req: Bad) -> dict[str, Any]:
    raise ValueError("bad value")


def _raw(endpoint: str, frames: list[bytes]) -> list[bytes]:
    """Send these frames as one message on a REQ socket; the reply's frames."""
    sock = make_socket(zmq.REQ, endpoint, linger=0, rcvtimeo=5000)
    try:
        sock.send_multipart(frames)
        return sock.recv_multipart()
    finally:
        sock.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """A Server with a few handlers, answering in a thread until the test ends."""
    endpoint = f"ipc://{tmp_path}/rr.ctl"
    server = Server(
        endpoint,
        {
            Echo: lambda req: {"ok": True, "echo": req},
            Refuse: lambda req: {"error": "not today"},
            Boom: _boom,
            Bad: _refuse,
        },
        expected=(ValueError,),
    )
    stop = threading.Event()
    thread = threading.Thread(target=server.serve, args=(stop.is_set, 0.02), daemon=True)
    thread.start()
    try:
        yield endpoint
    finally:
        stop.set()
        thread.join(5)
        server.close()


def test_round_trip(served: str) -> None:
    assert request(served, {"cmd": "echo", "x": [1, 2]}, timeout=5) == {
        "ok": True,
        "echo": {"cmd": "echo", "x": [1, 2], "n": 0},
    }
    assert request(served, Echo(n=3), timeout=5)["echo"] == {"cmd": "echo", "x": [], "n": 3}


def test_error_reply_raises_remote_error(served: str) -> None:
    with pytest.raises(RemoteError, match="^not today$"):
        request(served, {"cmd": "refuse"}, timeout=5)


def test_unknown_command_names_the_known_ones(served: str) -> None:
    with pytest.raises(RemoteError, match=r"unknown command 'nope' \(known: echo, refuse, "):
        request(served, {"cmd": "nope"}, timeout=5)
    with pytest.raises(RemoteError, match="unknown command None"):
        request(served, {"no": "cmd"}, timeout=5)


def test_handler_exception_is_an_error_reply_and_serving_goes_on(
    served: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("ERROR", logger="enrgdaq.reqrep"):
        with pytest.raises(RemoteError, match="^handler broke$"):
            request(served, {"cmd": "boom"}, timeout=5)
        with pytest.raises(RemoteError, match="^bad value$"):
            request(served, {"cmd": "bad"}, timeout=5)
    # the unexpected one is logged with its traceback, the expected refusal is not
    assert [r.exc_info is not None for r in caplog.records] == [True]
    assert request(served, {"cmd": "echo"}, timeout=5)["ok"] is True


ENC = msgspec.msgpack.encode
HOSTILE: list[tuple[list[bytes], str]] = [
    # (the frames of one message, the error line it must get)
    ([b"\xc1not msgpack"], "undecodable request (not msgpack, or nested too deep)"),
    ([b""], "undecodable request (not msgpack, or nested too deep)"),
    ([ENC({"cmd": "echo"}) + b"\x00"], "undecodable request (not msgpack, or nested too deep)"),
    ([b"\x91" * 50_000 + b"\x01"], "bad request: expected `object`, got `array`"),
    ([b"\x82\xa1x" + b"\x91" * 50_000 + b"\x01" + ENC("cmd") + ENC("echo")], "undecodable"),
    ([b"\x81\xa3cmd" + b"\x91" * 50_000 + b"\x01"], "undecodable request"),
    ([b"\x93\x01\x02\x03"], "bad request: expected `object`, got `array` (a request is a map"),
    ([ENC(5)], "bad request: expected `object`, got `int`"),
    ([ENC({1: 2})], "bad request: expected `str`, got `int`"),
    ([ENC({"cmd": "echo"}), b"more"], "bad request: one msgpack frame expected, got 2 frames"),
    ([ENC({"cmd": "echo"}), b""], "bad request: one msgpack frame expected, got 2 frames"),
    ([b"", b"", b""], "bad request: one msgpack frame expected, got 3 frames"),
    ([ENC({"cmd": 7})], "unknown command 7 (known: echo, "),
    ([ENC({"cmd": "x" * 1000})], "unknown command 'xxxxxxxxxx"),
    ([ENC({"cmd": ["echo"]})], "unknown command ['echo']"),
    ([ENC({"cmd": "echo", "n": [1]})], "bad echo request: n: expected `int`, got `array`"),
    ([ENC({"cmd": "echo", "n": float("inf")})], "bad echo request: n: expected `int`, got `float`"),
    ([ENC({"cmd": "echo", "n": float("nan")})], "bad echo request: n: expected `int`, got `float`"),
    ([ENC({"cmd": "echo", "n": 2**64 - 1})], "bad echo request: n: expected `int` <= 10"),
    ([ENC({"cmd": "echo", "n": -(2**63)})], "bad echo request: n: expected `int` >= 0"),
    ([ENC({"cmd": "echo", "x": [1, "a"]})], "bad echo request: x[1]: expected `int`, got `str`"),
    ([ENC({"cmd": "echo", "y": 1})], "bad echo request: object contains unknown field `y`"),
    ([ENC({"cmd": "echo", "cmd2": b"\x00"})], "bad echo request: object contains unknown field"),
    ([ENC({"cmd": "refuse", "n": 1})], "bad refuse request: object contains unknown field `n`"),
    ([ENC({"cmd": "echo", "a\nb\x1b[2J" + "z" * 60_000: 1})], "bad echo request: object contains"),
]


@pytest.mark.parametrize(("frames", "error"), HOSTILE, ids=range(len(HOSTILE)))
def test_malformed_request_gets_one_error_line_and_serving_goes_on(
    served: str, frames: list[bytes], error: str
) -> None:
    reply = _raw(served, frames)
    assert len(reply) == 1
    answer = msgspec.msgpack.decode(reply[0])
    assert set(answer) == {"error"} and answer["error"].startswith(error), answer
    assert answer["error"].isprintable() and len(answer["error"]) <= 300
    assert request(served, {"cmd": "echo"}, timeout=5)["ok"] is True


def test_an_oversized_request_is_dropped_unread_and_serving_goes_on(served: str) -> None:
    sock = make_socket(zmq.REQ, served, linger=0)
    try:
        sock.send(ENC({"cmd": "echo", "x": [1] * MAX_REQUEST_BYTES}))
        assert not sock.poll(500)  # its sender is disconnected: no answer
    finally:
        sock.close()
    assert request(served, {"cmd": "echo", "x": [1] * 1000}, timeout=5)["ok"] is True


def test_a_handler_only_sees_valid_requests_of_its_schema(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/typed.ctl"
    seen: list[Any] = []
    server = Server(endpoint, {Echo: lambda req: seen.append(req) or {"ok": True}})
    stop = threading.Event()
    thread = threading.Thread(target=server.serve, args=(stop.is_set, 0.02), daemon=True)
    thread.start()
    try:
        for frames, _ in HOSTILE:
            _raw(endpoint, frames)
        request(endpoint, {"cmd": "echo", "n": 10}, timeout=5)
    finally:
        stop.set()
        thread.join(5)
        server.close()
    assert seen == [Echo(n=10)]


def test_a_schema_must_be_a_tagged_request() -> None:
    class Untagged(msgspec.Struct):
        pass

    with pytest.raises(TypeError, match="is not a Request subclass with a tag="):
        Server("inproc://untagged", {Untagged: lambda req: {}})  # type: ignore[dict-item]


def test_timeout_names_the_endpoint_and_what_was_expected(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/nobody.ctl"
    with pytest.raises(TimeoutError, match=f"^no broker answered at {endpoint} \\(start one\\)$"):
        request(endpoint, {"cmd": "status"}, timeout=0.1, expect="broker", hint=" (start one)")


def test_undecodable_reply_is_a_remote_error(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/liar.ctl"
    rep = make_socket(zmq.REP, endpoint, bind=True, linger=0, rcvtimeo=5000)

    def answer() -> None:
        rep.recv()
        rep.send(b"\xc1")

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        with pytest.raises(RemoteError, match=f"undecodable reply from {endpoint}"):
            request(endpoint, {"cmd": "status"}, timeout=5)
    finally:
        thread.join(5)
        rep.close()


def test_deferred_reply(tmp_path: Path) -> None:
    """A handler returning None leaves the reply to the owner; serve_pending stops there."""
    endpoint = f"ipc://{tmp_path}/later.ctl"
    server = Server(endpoint, {Later: lambda req: None})
    got: list[dict[str, Any]] = []
    thread = threading.Thread(
        target=lambda: got.append(request(endpoint, {"cmd": "later"}, timeout=5))
    )
    thread.start()
    try:
        assert server.socket.poll(5000)
        server.serve_pending()
        assert not got
        server.reply({"ok": True, "late": 1})
        thread.join(5)
        assert got == [{"ok": True, "late": 1}]
    finally:
        server.close()


def test_make_socket_applies_options_and_binds_over_a_stale_file(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/stale.ctl"
    (tmp_path / "stale.ctl").write_text("")  # left behind by an owner that died
    sock = make_socket(zmq.REP, endpoint, bind=True, replace_stale=True, sndhwm=7, linger=0)
    try:
        assert (sock.sndhwm, sock.linger) == (7, 0)
        assert sock.last_endpoint.decode() == endpoint
    finally:
        sock.close()
    with pytest.raises(zmq.ZMQError):
        make_socket(zmq.REP, f"ipc://{tmp_path}/no/such/dir/x", bind=True)
