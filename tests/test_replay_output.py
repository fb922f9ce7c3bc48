"""Where `daq replay` writes (enrgdaq_core.replay.replay_output) and Replay.play into it:
in-process, no `daq` process (an in-process broker for the broker case)."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from enrgdaq_core.broker import Broker
from enrgdaq_core.channels import BrokerOutput, RunFileOutput, StreamOutput
from enrgdaq_core.replay import Replay, Selection, replay_output
from enrgdaq_core.runfile import index_path, open_part
from enrgdaq_core.stream import StreamReader
from enrgdaq_core.transport import BrokerAddress, Subscriber
from test_replay import make_envs, write


@pytest.fixture
def rp(tmp_path: Path) -> Replay:
    path = write(tmp_path / "run000005.raw", make_envs(40))
    return Replay([path], Selection())


@pytest.fixture
def broker_addr() -> Iterator[BrokerAddress]:
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix="daqo-", dir="/tmp")  # ipc paths must stay short
    addr = BrokerAddress.parse(f"ipc://{d}/broker")
    b = Broker(addr, name="broker")
    b.bind()
    t = threading.Thread(target=b.run, daemon=True)
    t.start()
    yield addr
    b.stop()
    t.join(10)
    shutil.rmtree(d, ignore_errors=True)


def test_a_pipe_on_stdout_gets_the_stream_with_the_run_and_its_origin(rp: Replay) -> None:
    buf = io.BytesIO()
    out = replay_output(rp, pipe=True, stdout=buf)
    assert isinstance(out, StreamOutput)
    result = rp.play(out)
    assert result.messages == 40
    buf.seek(0)
    reader = StreamReader(buf)
    assert reader.meta.meta["writer"] == "daq replay"
    assert reader.meta.meta["run"] == 5
    assert reader.meta.meta["replay_of"] == [str(rp.parts[0].path)]
    assert len(list(reader)) == 40


def test_dash_forces_the_stream_even_on_a_terminal(rp: Replay) -> None:
    out = replay_output(rp, output="-", pipe=False, stdout=io.BytesIO())
    assert isinstance(out, StreamOutput)


def test_a_terminal_without_output_gets_lines(rp: Replay) -> None:
    assert replay_output(rp, pipe=False) is None
    seen: list[int] = []
    result = rp.play(None, on_record=lambda n, env: seen.append(n))
    assert result.messages == 40 and seen == list(range(40))


def test_a_path_is_a_new_run_file_with_index_and_the_run_settings(
    rp: Replay, tmp_path: Path
) -> None:
    target = tmp_path / "cut.raw"
    out = replay_output(rp, output=str(target), pipe=True)  # -o wins over the pipe
    assert isinstance(out, RunFileOutput)
    rp.play(out, count=10)
    part = open_part(target)
    assert index_path(target).exists()
    assert part.run == 5
    assert part.meta["writer"] == "daq replay"
    assert part.meta["replay_of"] == [str(rp.parts[0].path)]
    source = rp.parts[0].path
    with open(source, "rb") as f:
        original = [r.body for r in open_part(source).reader(f)]
    with open(target, "rb") as f:
        copied = [r.body for r in part.reader(f)]
    assert copied == original[:10]  # the records' bytes as read


def test_an_existing_run_file_is_never_overwritten(rp: Replay, tmp_path: Path) -> None:
    target = tmp_path / "cut.raw"
    target.write_bytes(b"data")
    with pytest.raises(FileExistsError):
        replay_output(rp, output=str(target))
    assert target.read_bytes() == b"data"


def test_no_broker_is_a_connection_error(rp: Replay, tmp_path: Path) -> None:
    addr = BrokerAddress.parse(f"ipc://{tmp_path}/none")
    with pytest.raises(ConnectionError, match="no broker"):
        replay_output(rp, broker=addr, wait=0.2)


def test_a_broker_wins_and_waits_for_the_named_consumer(
    rp: Replay, broker_addr: BrokerAddress
) -> None:
    sub = Subscriber(broker_addr, ["data.a"], mode="lossless")
    try:
        out = replay_output(rp, broker=broker_addr, output="-", wait=10.0, wait_for=["data.a"])
        assert isinstance(out, BrokerOutput)
        result = rp.play(out)  # closes only once the broker has counted every message
        assert result.messages == 40
        got = []
        while len(got) < 20 and (env := sub.recv(10.0)) is not None:
            got.append(env.header.seq)
        assert got == list(range(20))
    finally:
        sub.close()


def test_no_consumer_within_the_wait_is_a_connection_error(
    rp: Replay, broker_addr: BrokerAddress
) -> None:
    with pytest.raises(ConnectionError, match="no consumer subscribed to data.nobody"):
        replay_output(rp, broker=broker_addr, wait=2.0, wait_for=["data.nobody"])
