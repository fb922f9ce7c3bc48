"""channels: the input `daq store` chooses, stdin read on its own fd, the stream output's
flush cadence, the run file output. In-process, no `daq` process."""

from __future__ import annotations

import io
import os
import pty
import socket
from pathlib import Path

import pytest

from enrgdaq_core.channels import (
    FLUSH_EVERY,
    EndOfInput,
    RunFileOutput,
    StreamInput,
    StreamOutput,
    open_input,
    stdin_is_stream,
    store_source,
)
from enrgdaq_core.envelope import Source
from enrgdaq_core.runfile import index_path, open_part
from enrgdaq_core.stream import StreamWriter
from enrgdaq_core.transport import BrokerAddress


def test_a_pipe_a_file_and_a_socket_are_streams_a_terminal_is_not(tmp_path: Path) -> None:
    r, w = os.pipe()
    f = tmp_path / "s"
    f.write_bytes(b"")
    a, b = socket.socketpair()
    master, slave = pty.openpty()
    fd = os.open(f, os.O_RDONLY)
    try:
        assert stdin_is_stream(r)
        assert stdin_is_stream(fd)
        assert stdin_is_stream(a.fileno())
        assert not stdin_is_stream(slave)
        closed = os.dup(r)
        os.close(closed)
        assert not stdin_is_stream(closed)  # no stdin at all
    finally:
        for x in (r, w, master, slave, fd):
            os.close(x)
        a.close()
        b.close()


def test_store_source_prefers_input_then_topics_then_a_streaming_stdin() -> None:
    r, w = os.pipe()
    master, slave = pty.openpty()
    try:
        assert store_source("run.raw", topics=True, stdin_fd=r) == "run.raw"
        assert store_source("-", topics=False, stdin_fd=slave) == "-"
        assert store_source(None, topics=True, stdin_fd=r) is None  # --from: the broker
        assert store_source(None, topics=False, stdin_fd=r) == "-"
        assert store_source(None, topics=False, stdin_fd=slave) is None
    finally:
        for x in (r, w, master, slave):
            os.close(x)


def test_dash_reads_the_stream_from_a_copy_of_the_stdin_fd() -> None:
    r, w = os.pipe()
    src = Source("s")
    with os.fdopen(w, "wb") as f:
        writer = StreamWriter(f, {"writer": "test"})
        for i in range(3):
            writer.write(src.raw(b"%d" % i))
    try:
        inp = open_input("-", BrokerAddress.parse("ipc:///tmp/unused"), [], stdin_fd=r)
        assert isinstance(inp, StreamInput)
        got = [inp.recv(5.0) for _ in range(3)]
        assert [bytes(e.payload) for e in got] == [b"0", b"1", b"2"]
        with pytest.raises(EndOfInput):
            inp.recv(5.0)
        assert inp.damage is None
        os.fstat(r)  # our fd stays open: the input read a copy of it
    finally:
        os.close(r)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _CountingFile(io.BytesIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def test_a_busy_stream_output_flushes_itself_every_flush_every_seconds() -> None:
    f = _CountingFile()
    clock = _Clock()
    out = StreamOutput(f, clock=clock)
    src = Source("s")
    base = f.flushes
    out.send(src.raw(b"a"))
    clock.now += FLUSH_EVERY / 2
    out.send(src.raw(b"b"))
    assert f.flushes == base  # not yet due
    clock.now += FLUSH_EVERY / 2
    out.send(src.raw(b"c"))
    assert f.flushes == base + 1
    out.send(src.raw(b"d"))
    assert f.flushes == base + 1  # the cadence restarts at each flush
    out.flush()  # a caller about to wait
    clock.now += FLUSH_EVERY * 0.9
    out.send(src.raw(b"e"))
    assert f.flushes == base + 2


def test_run_file_output_writes_a_run_file_with_its_index(tmp_path: Path) -> None:
    target = tmp_path / "run.raw"
    out = RunFileOutput(target, {"run": 3, "writer": "test"})
    src = Source("s", run=3)
    for i in range(5):
        out.send(src.raw(b"%d" % i))
    out.flush()
    out.close()
    part = open_part(target)
    assert part.run == 3 and index_path(target).exists()
    with open(target, "rb") as f:
        assert [bytes(r.envelope.payload) for r in part.reader(f)] == [b"%d" % i for i in range(5)]
    with pytest.raises(FileExistsError):
        RunFileOutput(target, {"run": 3})
