"""Broker + job + tap + pipes, as real processes."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Procs, write
from enrgdaq_core.channels import BrokerInput
from enrgdaq_core.envelope import Kind
from enrgdaq_core.stream import Record, StreamReader
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


def _first_record_while_running(p: subprocess.Popen, timeout: float = 30) -> Record:
    """The first record on `p`'s stdout, read while `p` keeps running."""
    import select

    ready, _, _ = select.select([p.stdout], [], [], timeout)
    assert ready, "nothing arrived on the pipe"
    rec = next(StreamReader(p.stdout))
    assert p.poll() is None
    return rec


def test_job_pipe_is_flushed_while_the_job_waits(procs: Procs, tmp_path: Path) -> None:
    """A slow source's data reaches the pipe at once, not when an 8 kB buffer fills up."""
    procs.env.pop("PYTHONUNBUFFERED", None)  # as in a user's shell
    cfg = write(tmp_path / "slow.toml", 'daq_job_type = "test"\ninterval_seconds = 600\n')
    job = procs.start("job", "run", str(cfg), "-o", "-", stdout=subprocess.PIPE)
    rec = _first_record_while_running(job)
    assert rec.envelope.kind is Kind.TABLE and rec.envelope.header.seq == 0
    assert procs.stop(job) == 0


def test_tap_pipe_is_flushed_while_idle(
    procs: Procs, broker: BrokerAddress, tmp_path: Path
) -> None:
    from enrgdaq_core.broker_client import wait_for_subscriptions

    procs.env.pop("PYTHONUNBUFFERED", None)
    cfg = write(tmp_path / "slow.toml", 'daq_job_type = "test"\ninterval_seconds = 600\n')
    tap = procs.start(
        "tap", "--lossless", "data.slow", "--broker", broker.base, stdout=subprocess.PIPE
    )
    assert wait_for_subscriptions(broker, ["data.slow"], timeout=20)
    job = procs.start("job", "run", str(cfg), "-o", "broker", "--broker", broker.base)
    rec = _first_record_while_running(tap)
    assert rec.envelope.topic == "data.slow" and rec.envelope.header.seq == 0
    assert procs.stop(job) == 0
    assert procs.stop(tap) == 0


def test_tap_shows_a_line_per_message_on_a_terminal(
    procs: Procs, broker: BrokerAddress, tmp_path: Path
) -> None:
    import os
    import pty
    import re

    cfg = write(tmp_path / "sensor.toml", SENSOR)
    job = procs.start("job", "run", str(cfg), "-o", "broker", "--broker", broker.base)
    leader, follower = pty.openpty()
    try:
        tap = procs.start(
            "tap", "data.sensor1", "--broker", broker.base, "--count", "3", stdout=follower
        )
        os.close(follower)
        follower = -1
        assert tap.wait(30) == 0, tap.stderr.read().decode()
        text = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            text += chunk
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    lines = text.decode().splitlines()
    assert len(lines) == 3
    pattern = (
        r"\d\d:\d\d:\d\d\.\d{3} data\.sensor1 table src=sensor1 seq=(\d+) rows=1 cols=4 "
        r"bytes=\d+ lat=\d+\.\d\dms \| timestamp=\d\d:\d\d:\d\d\.\d{3} "
        r"ch0=[-\d.e+]+ ch1=[-\d.e+]+ ch2=[-\d.e+]+"
    )
    seqs = [int(re.fullmatch(pattern, line).group(1)) for line in lines]
    assert seqs == list(range(seqs[0], seqs[0] + 3))
    assert procs.stop(job) == 0


EXAMPLES = Path(__file__).parent.parent / "configs" / "examples"


def test_examples_run_as_they_are(procs: Procs, tmp_path: Path) -> None:
    """Every job config in configs/examples runs unchanged: two messages and end-of-stream."""
    import tomllib

    from enrgdaq_core.jobs import load_job

    files = {}
    for path in sorted(EXAMPLES.glob("*.toml")):
        data = tomllib.loads(path.read_text())
        if "daq_job_type" in data and not str(data["daq_job_type"]).startswith("DAQJobStore"):
            files[path.name] = path
    assert {"sensor.toml", "digitizer.toml", "metrics.toml", "test.toml"} <= set(files)
    running = {
        name: procs.start(
            "job", "run", str(path), "--count", "2", "-o", "-", stdout=subprocess.PIPE
        )
        for name, path in files.items()
    }
    for name, p in running.items():
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, (name, err.decode())
        envs = [r.envelope for r in StreamReader(io.BytesIO(out))]
        assert [e.kind for e in envs] == [Kind.TABLE, Kind.TABLE, Kind.EOS], name
        job = load_job(files[name])
        assert envs[0].header.source == job.name
        assert envs[0].header.store == job.config.store_config.for_header(), name
        assert envs[0].header.store, f"{name} has no [store_config.*]"


def test_job_heartbeat_on_the_broker(procs: Procs, broker: BrokerAddress, tmp_path: Path) -> None:
    """A running job reports every second on stats.<name>, and once more when it stops."""
    from enrgdaq_core.envelope import decode_body
    from enrgdaq_core.stats import StatsReport

    stats = BrokerInput(broker, ["stats.sensor1"], mode="monitor")
    cfg = write(tmp_path / "sensor.toml", SENSOR)
    job = procs.start("job", "run", str(cfg), "-o", "broker", "--broker", broker.base)
    try:
        env = stats.recv(30)
        assert env is not None and env.kind is Kind.STATS
        report = decode_body(env.payload, StatsReport)
        assert (report.piece, report.role) == ("sensor1", "job")
        assert report.msgs_out > 0 and report.bytes_out > 0 and report.rate_out > 0
        assert procs.stop(job) == 0
        while True:  # the final report follows the stop
            env = stats.recv(30)
            assert env is not None
            final = decode_body(env.payload, StatsReport)
            if final.extra.get("final"):
                break
        assert final.msgs_out >= report.msgs_out
    finally:
        stats.close()


def test_job_stops_when_its_supervisor_dies(tmp_path: Path, daq_env: dict[str, str]) -> None:
    """A child of `daq up` (DAQ_PARENT_PID) that loses its parent to kill -9 ends its run
    properly (end-of-stream, exit) instead of running on as an orphan."""
    import os
    import signal

    from conftest import DAQ, wait_for

    cfg = write(tmp_path / "sensor.toml", SENSOR)
    out = tmp_path / "out.raw"
    launcher = (
        "import os, subprocess, sys, time\n"
        f"env = dict(os.environ, DAQ_PARENT_PID=str(os.getpid()))\n"
        f"p = subprocess.Popen({[*DAQ, 'job', 'run', str(cfg), '-o', str(out)]!r}, env=env)\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", launcher], env=daq_env, stdout=subprocess.PIPE, text=True
    )
    child = int(parent.stdout.readline())
    try:
        wait_for(lambda: out.exists() and out.stat().st_size > 200, 30, what="job output")
        parent.kill()
        parent.wait(10)

        def gone() -> bool:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                return True
            return False

        wait_for(gone, 30, what="the orphaned job to exit")
        with out.open("rb") as f:
            envs = [r.envelope for r in StreamReader(f)]
        assert envs[-1].kind is Kind.EOS
        assert [e.header.seq for e in envs] == list(range(len(envs)))
    finally:
        for pid in (child, parent.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        parent.stdout.close()
