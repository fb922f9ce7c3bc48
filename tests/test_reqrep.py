"""The request/reply module without processes: a Server in a thread, clients over ipc."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from enrgdaq_core.reqrep import RemoteError, Server, request
from enrgdaq_core.transport import make_socket


def _boom(req: dict[str, Any]) -> dict[str, Any]:
    raise RuntimeError("handler broke")


def _refuse(req: dict[str, Any]) -> dict[str, Any]:
    raise ValueError("bad value")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """A Server with a few handlers, answering in a thread until the test ends."""
    endpoint = f"ipc://{tmp_path}/rr.ctl"
    server = Server(
        endpoint,
        {
            "echo": lambda req: {"ok": True, "echo": req},
            "refuse": lambda req: {"error": "not today"},
            "boom": _boom,
            "bad": _refuse,
            "garble": lambda req: {"ok": True, "n": 1},
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
        "echo": {"cmd": "echo", "x": [1, 2]},
    }


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


def test_malformed_request_is_answered_and_serving_goes_on(served: str) -> None:
    for garbage in (b"\xc1not msgpack", b"\x93\x01\x02\x03"):  # invalid; a list, not a dict
        sock = make_socket(zmq.REQ, served, linger=0, rcvtimeo=5000)
        try:
            sock.send(garbage)
            assert sock.recv() == b"\x81\xa5error\xb3undecodable request"
        finally:
            sock.close()
    assert request(served, {"cmd": "echo"}, timeout=5)["ok"] is True


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
    server = Server(endpoint, {"later": lambda req: None})
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
