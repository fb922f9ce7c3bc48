"""Broker + job + tap + pipes, as real processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Procs, write
from enrgdaq_core.channels import BrokerInput
from enrgdaq_core.envelope import Kind
from enrgdaq_core.stream import StreamReader
from enrgdaq_core.transport import BrokerAddress

pytestmark = pytest.mark.e2e

SENSOR = """
daq_job_type = "sensor"
name = "sensor1"
interval_seconds = 0.02
channels = 3

[store_config.csv]
file_path = "sensor.csv"
"""


def test_job_to_pipe_decodes(procs: Procs, tmp_path: Path) -> None:
    cfg = write(tmp_path / "sensor.toml", SENSOR)
    p = procs.run("job", "run", str(cfg), "-o", "-", "--count", "5")
    assert p.returncode == 0, p.stderr.decode()
    import io

    records = list(StreamReader(io.BytesIO(p.stdout)))
    kinds = [r.envelope.kind for r in records]
    assert kinds == [Kind.TABLE] * 5 + [Kind.EOS]
    assert [r.envelope.header.seq for r in records] == list(range(6))
    table = records[0].envelope.table()
    assert table.column_names == ["timestamp", "ch0", "ch1", "ch2"]
    assert records[0].envelope.header.store == {"csv": {"file_path": "sensor.csv"}}


def test_job_pipe_into_reader_process(procs: Procs, tmp_path: Path) -> None:
    """A real OS pipe between two processes: `daq job run -o - | python decoder`."""
    cfg = write(tmp_path / "sensor.toml", SENSOR)
    job = procs.start("job", "run", str(cfg), "--count", "20", stdout=subprocess.PIPE)
    decoder = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys;from enrgdaq_core.stream import StreamReader;"
            "print(sum(r.envelope.header.rows for r in StreamReader(sys.stdin.buffer)))",
        ],
        stdin=job.stdout,
        capture_output=True,
        timeout=60,
    )
    job.stdout.close()
    assert job.wait(30) == 0
    assert decoder.stdout.strip() == b"20"


def test_broker_job_tap(procs: Procs, broker: BrokerAddress, tmp_path: Path) -> None:
    cfg = write(tmp_path / "sensor.toml", SENSOR)
    inp = BrokerInput(broker, ["data.sensor1"])
    job = procs.start("job", "run", str(cfg), "-o", "broker", "--broker", broker.base)
    tap = procs.start(
        "tap",
        "data.sensor1",
        "--broker",
        broker.base,
        "--count",
        "5",
        "-o",
        "-",
        stdout=subprocess.PIPE,
    )
    out, _ = tap.communicate(timeout=30)
    import io

    envs = [r.envelope for r in StreamReader(io.BytesIO(out))]
    assert len(envs) == 5 and all(e.header.source == "sensor1" for e in envs)
    got = []
    while len(got) < 10:
        env = inp.recv(10)
        assert env is not None
        got.append(env.header.seq)
    assert got == list(range(got[0], got[0] + 10))
    assert procs.stop(job) == 0
    # end of stream after SIGTERM
    while True:
        env = inp.recv(10)
        assert env is not None
        if env.kind is Kind.EOS:
            break
    inp.close()
