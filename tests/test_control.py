"""The supervisor's control endpoint without processes: binding, and `logs -f`'s follow loop."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from enrgdaq_core.reqrep import RemoteError
from enrgdaq_core.supervisor.control import (
    ControlServer,
    LogsRequest,
    PingRequest,
    follow_logs,
)


@pytest.fixture
def log_server(tmp_path: Path) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A control server whose `logs` hands out one chunk per request, then a refusal."""
    endpoint = f"ipc://{tmp_path}/t.sup"
    chunks = iter([("", 10), ("a\n", 12), ("", 12), ("b\nc\n", 16)])
    seen: list[dict[str, Any]] = []

    def logs(req: LogsRequest) -> dict[str, Any]:
        seen.append(req)
        try:
            text, offset = next(chunks)
        except StopIteration:
            return {"error": "no piece named 'x'"}
        return {"ok": True, "text": text, "offset": offset}

    server = ControlServer(endpoint, {LogsRequest: logs})
    stop = threading.Event()
    thread = threading.Thread(target=server.serve, args=(stop.is_set, 0.02), daemon=True)
    thread.start()
    try:
        yield endpoint, seen
    finally:
        stop.set()
        thread.join(5)
        server.close()


def test_follow_logs_yields_new_text_from_the_last_offset(
    log_server: tuple[str, list[dict[str, Any]]],
) -> None:
    endpoint, seen = log_server
    naps: list[float] = []
    follow = follow_logs(endpoint, "x", 7, interval=0.25, sleep=naps.append)
    assert [next(follow), next(follow)] == ["a\n", "b\nc\n"]  # empty answers are skipped
    assert [r.offset for r in seen] == [7, 10, 12, 12]
    assert {r.job for r in seen} == {"x"} and naps == [0.25] * 4
    with pytest.raises(RemoteError, match="no piece named 'x'"):
        next(follow)


def test_a_live_control_socket_is_not_stolen_a_dead_one_is(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/s.sup"
    live = ControlServer(endpoint, {PingRequest: lambda req: {"ok": True}})
    stop = threading.Event()
    thread = threading.Thread(target=live.serve, args=(stop.is_set, 0.02), daemon=True)
    thread.start()
    try:
        with pytest.raises(ConnectionError, match="another `daq up` is already running"):
            ControlServer(endpoint)
    finally:
        stop.set()
        thread.join(5)
    live.socket.close(linger=0)  # dies without removing its socket file
    assert (tmp_path / "s.sup").exists()
    again = ControlServer(endpoint)  # nobody answers the ping: the file is stale
    again.close()
    assert not (tmp_path / "s.sup").exists()
