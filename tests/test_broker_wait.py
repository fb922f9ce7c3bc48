"""A command that waits for a broker says so at once, with the address and how to start one:
a store and a tap wait (and say when it comes), a job waits --wait seconds, a tap with
--timeout gives up with one line and exit 1. Real processes, no broker at first."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import Procs, start_broker, wait_for, write
from enrgdaq_core.transport import BrokerAddress

pytestmark = pytest.mark.e2e

HINT = "start one with `daq broker` or `daq up`"
SENSOR = 'daq_job_type = "sensor"\nname = "sensor1"\ninterval_seconds = 0.05\nchannels = 2\n'


def _base(runtime_dir: Path) -> str:
    return f"ipc://{runtime_dir}/broker"


def _said(path: Path, text: str, timeout: float = 20) -> str:
    """Wait until the process's stderr (a file) holds `text`; its content."""
    return wait_for(
        lambda: (t := path.read_text(errors="replace")) and text in t and t,
        timeout,
        what=repr(text),
    )


def test_store_says_it_waits_and_when_the_broker_comes(
    procs: Procs, tmp_path: Path, runtime_dir: Path
) -> None:
    err = tmp_path / "store.err"
    with err.open("wb") as f:
        store = procs.start(
            "store", "csv", "--from", "data.sensor1", "-o", str(tmp_path / "s.csv"), stderr=f
        )
    waiting = f"waiting for the broker at {_base(runtime_dir)}; {HINT}"
    text = _said(err, waiting)
    assert text.count(waiting) == 1 and "WARNING [store-csv]" in text
    addr, broker = start_broker(procs, _base(runtime_dir))
    _said(err, f"the broker at {addr.base} answered")
    cfg = write(tmp_path / "s.toml", SENSOR)
    job = procs.start("job", "run", str(cfg), "-o", "broker", "--count", "5")
    assert job.wait(60) == 0
    wait_for(lambda: (tmp_path / "s.csv").exists(), 30, what="rows stored")
    assert procs.stop(store) == 0
    assert procs.stop(broker) == 0
    assert "Traceback" not in err.read_text()


def test_job_says_it_waits_and_goes_on_when_the_broker_comes(
    procs: Procs, tmp_path: Path, runtime_dir: Path
) -> None:
    cfg = write(tmp_path / "s.toml", SENSOR)
    err = tmp_path / "job.err"
    with err.open("wb") as f:
        job = procs.start(
            "job", "run", str(cfg), "-o", "broker", "--count", "3", "--wait", "120", stderr=f
        )
    _said(err, f"WARNING [sensor1] waiting for the broker at {_base(runtime_dir)}; {HINT}")
    assert job.poll() is None
    _, broker = start_broker(procs, _base(runtime_dir))
    assert job.wait(60) == 0, err.read_text()
    assert procs.stop(broker) == 0


def test_job_without_a_broker_says_so_before_it_gives_up(
    procs: Procs, tmp_path: Path, runtime_dir: Path
) -> None:
    cfg = write(tmp_path / "s.toml", SENSOR)
    p = procs.run("job", "run", str(cfg), "-o", "broker", "--wait", "2")
    lines = p.stderr.decode().splitlines()
    assert p.returncode == 1
    assert lines[0].endswith(
        f"WARNING [sensor1] waiting for the broker at {_base(runtime_dir)}; {HINT}"
    )
    assert lines[-1] == (f"daq: error: no broker at {_base(runtime_dir)}.in after 2 s ({HINT})")


def test_tap_without_a_broker_says_so_and_fails_after_its_timeout(
    procs: Procs, runtime_dir: Path
) -> None:
    p = procs.run("tap", "data.sensor1", "--timeout", "2", "--text")
    assert p.returncode == 1
    assert p.stdout == b""
    assert p.stderr.decode().splitlines() == [
        f"tap: waiting for the broker at {_base(runtime_dir)}; {HINT}",
        f"daq: error: no broker answered at {_base(runtime_dir)} within 2 s ({HINT})",
    ]


def test_tap_waits_for_the_broker_then_shows_data(
    procs: Procs, tmp_path: Path, runtime_dir: Path
) -> None:
    err = tmp_path / "tap.err"
    with err.open("wb") as f:
        tap = procs.start(
            "tap", "data.sensor1", "--count", "2", "--text", stdout=subprocess.PIPE, stderr=f
        )
    _said(err, f"tap: waiting for the broker at {_base(runtime_dir)}; {HINT}")
    addr, broker = start_broker(procs, _base(runtime_dir))
    _said(err, f"tap: the broker at {addr.base} answered")
    cfg = write(tmp_path / "s.toml", SENSOR)
    job = procs.start("job", "run", str(cfg), "-o", "broker")
    out, _ = tap.communicate(timeout=60)
    assert tap.returncode == 0, err.read_text()
    lines = out.decode().splitlines()
    assert len(lines) == 2 and all("data.sensor1 table src=sensor1" in x for x in lines)
    assert procs.stop(job) == 0
    assert procs.stop(broker) == 0


def test_a_running_broker_gets_no_waiting_line(
    procs: Procs, broker: BrokerAddress, tmp_path: Path
) -> None:
    cfg = write(tmp_path / "s.toml", SENSOR)
    p = procs.run("job", "run", str(cfg), "-o", "broker", "--broker", broker.base, "--count", "2")
    assert p.returncode == 0
    assert "waiting for the broker" not in p.stderr.decode()
