"""`daq up` with real processes: ordered start and stop, kill -9 recovery with exact gap counts,
hung children, refused configs, a kill -9 of the supervisor itself. No orphans after any test."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from _supervision import (
    FAST_SUPERVISOR,
    SENSOR_JOB,
    TEST_JOB,
    Up,
    Witness,
    csv_rows,
    raw_records,
    stats_csv,
)
from _supervision import config_dir as make_config_dir
from conftest import Procs, wait_for, write
from enrgdaq_core.envelope import Kind

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SENSOR = (
    SENSOR_JOB
    + """
[store_config.csv]
file_path = "sensor1.csv"

[store_config.raw]
file_path = "sensor1.raw"
"""
)


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    return make_config_dir(tmp_path, {"sensor.toml": SENSOR, "test.toml": TEST_JOB})


@pytest.fixture
def up(procs: Procs, runtime_dir: Path) -> Iterator[list[Up]]:
    """Started `daq up`s; each is stopped and proven to leave no process behind."""
    started: list[Up] = []
    yield started
    for u in started:
        u.finish()


def _start(up: list[Up], procs: Procs, directory: Path, runtime_dir: Path) -> Up:
    u = Up(procs, directory, runtime_dir)
    up.append(u)
    return u


def _stored(out: Path) -> dict[str, object]:
    raw = [e for e in raw_records(out.glob("sensor1*.raw")) if e.header.source == "sensor1"]
    return {
        "csv": csv_rows(out.glob("sensor1*.csv")),
        "raw": raw,
        "raw_rows": sum(1 for e in raw if e.kind is Kind.TABLE),
    }


def test_start_in_order_and_stop_in_order_losing_nothing(
    procs: Procs, runtime_dir: Path, config_dir: Path, up: list[Up]
) -> None:
    u = _start(up, procs, config_dir, runtime_dir)
    u.wait_flowing()
    st = u.status()
    assert st is not None and st["run"]["run"] == 1 and st["phase"] == "running"
    assert u.stop(signal.SIGINT) == 0
    out = u.out
    text = u.output()
    # sources stop first, then the stores (after every end-of-stream), then the broker
    order = [text.index(f"INFO [daq up] {n}: exit 0") for n in ("sensor1", "store-csv", "broker")]
    assert order == sorted(order), text[-3000:]
    stats = stats_csv(out)
    sent = {n: int(stats[n]["message_out_count"]) for n in ("sensor1", "test")}
    assert all(sent.values())
    stored = _stored(out)
    assert stored["csv"] == sent["sensor1"]
    assert csv_rows(out.glob("test*.csv")) == sent["test"]
    # the raw store keeps whole envelopes: every sequence number, from 0, then end-of-stream
    raw = stored["raw"]
    assert [e.header.seq for e in raw] == list(range(sent["sensor1"] + 1))  # type: ignore[attr-defined]
    assert raw[-1].kind is Kind.EOS  # type: ignore[index]
    for store in ("store-csv", "store-raw"):
        assert stats[store]["lost"] == "0"
        assert stats[store]["is_alive"] == "false"
    runs = json.loads((out / "runs.json").read_text())["runs"]
    assert [r["run"] for r in runs] == [1] and runs[0]["stop_ns"] > runs[0]["start_ns"]
    assert runs[0]["ended"] == "stopped"
    configs = out / "run000001" / "configs"
    assert sorted(p.name for p in configs.iterdir()) == [
        "sensor.toml",
        "supervisor.toml",
        "test.toml",
    ]
    assert (configs / "sensor.toml").read_text() == SENSOR
    from enrgdaq_core.runfile import open_part

    meta = open_part(next(out.glob("sensor1*.raw"))).meta
    assert meta["config"]["files"]["sensor.toml"] == SENSOR
    import csv

    with open(out / "stats_remote.csv", newline="") as f:
        (node,) = list(csv.DictReader(f))
    assert node["supervisor"] == st["node"] and node["is_alive"] == "false"
    assert int(node["message_out_count"]) >= sent["sensor1"] + sent["test"]
    for name in ("broker", "store-csv", "store-raw", "sensor1", "test", "supervisor"):
        assert (out / "logs" / f"{name}.log").stat().st_size > 0


@pytest.mark.parametrize("victim", ["sensor1", "store-csv", "broker"])
def test_kill_9_is_recovered_and_the_gap_counted_exactly(
    procs: Procs, runtime_dir: Path, config_dir: Path, up: list[Up], victim: str
) -> None:
    u = _start(up, procs, config_dir, runtime_dir)
    u.wait_flowing()
    witness = Witness(u.address, ["data.sensor1", "data.test"])
    try:
        wait_for(lambda: witness.count("sensor1") >= 20, 20, what="data before the kill")
        old = u.piece(victim)["pid"]
        os.kill(old, signal.SIGKILL)

        def recovered(pieces: dict) -> bool:
            p = pieces[victim]
            r = pieces["store-csv"]["report"]
            return (
                p["restarts"] == 1
                and p["state"] == "running"
                and p["pid"] != old
                and p["report"] is not None
                and p["report"]["pid"] == p["pid"]
                and r is not None
                and r["pid"] == pieces["store-csv"]["pid"]
            )

        u.wait(recovered, 60, f"{victim} restarted and reporting")
        assert u.piece(victim)["restart_reasons"] == {"crashed": 1}
        after = witness.count("sensor1")
        wait_for(lambda: witness.count("sensor1") >= after + 20, 20, what="data after recovery")
        assert u.stop(signal.SIGINT) == 0
    finally:
        witness.stop()
    sent = witness.sent("sensor1")
    sent_test = witness.sent("test")
    stored = _stored(u.out)
    stored_test = csv_rows(u.out.glob("test*.csv"))
    stats = stats_csv(u.out)
    lost = {s: int(stats[s]["lost"]) for s in ("store-csv", "store-raw")}
    # what is missing in each store is exactly what that store reports lost (the csv store
    # takes both sources, the raw store sensor1 only)
    missing_csv = sent - stored["csv"] + sent_test - stored_test
    assert missing_csv == lost["store-csv"], (sent, stored["csv"], sent_test, stored_test, lost)
    assert sent - stored["raw_rows"] == lost["store-raw"], (sent, stored["raw_rows"], lost)
    # and, seq by seq in the raw store: every missing number is counted, nothing else is
    raw = [e for e in stored["raw"] if e.kind is Kind.TABLE]  # type: ignore[attr-defined]
    have = {(e.header.epoch, e.header.seq) for e in raw}
    missing = 0
    for epoch, seqs in witness.seen["sensor1"].items():
        top = witness.eos["sensor1"].get(epoch, max(seqs) + 1)
        missing += sum(1 for s in range(top) if (epoch, s) not in have)
    assert missing == lost["store-raw"]
    if victim == "sensor1":
        assert lost == {"store-csv": 0, "store-raw": 0}
        assert len(witness.seen["sensor1"]) == 2  # two incarnations of the source
    elif victim == "store-csv":
        assert lost["store-csv"] > 0 and lost["store-raw"] == 0
    # a broker restart loses what it held (often nothing: sources queue while it is away)


def test_hung_job_is_detected_and_restarted(
    procs: Procs, runtime_dir: Path, config_dir: Path, up: list[Up]
) -> None:
    write(config_dir / "supervisor.toml", FAST_SUPERVISOR.format(heartbeat=3.0))
    u = _start(up, procs, config_dir, runtime_dir)
    u.wait_flowing()
    old = u.piece("sensor1")["pid"]
    os.kill(old, signal.SIGSTOP)
    try:
        u.wait(
            lambda p: p["sensor1"]["restarts"] == 1 and p["sensor1"]["state"] == "running",
            30,
            "the stopped sensor1 to be restarted",
        )
    finally:
        try:
            os.kill(old, signal.SIGCONT)
        except ProcessLookupError:
            pass
    p = u.piece("sensor1")
    assert p["restart_reasons"] == {"hung": 1} and p["pid"] != old
    assert not psutil.pid_exists(old) or psutil.Process(old).status() == psutil.STATUS_ZOMBIE
    assert "sensor1: no heartbeat for" in u.output()
    u.wait(
        lambda p: p["sensor1"]["report"] and p["sensor1"]["report"]["pid"] == p["sensor1"]["pid"],
        30,
        "the new sensor1 to report",
    )
    # the other pieces were not touched
    st = u.status()
    assert st is not None
    assert {p["name"]: p["restarts"] for p in st["pieces"] if p["name"] != "sensor1"} == {
        "broker": 0,
        "store-csv": 0,
        "store-raw": 0,
        "test": 0,
    }
    assert u.stop(signal.SIGINT) == 0


def test_bad_config_directory_is_refused_with_all_errors(procs: Procs, tmp_path: Path) -> None:
    d = tmp_path / "bad"
    d.mkdir()
    write(d / "a.toml", 'daq_job_type = "sensor"\nintervall_seconds = 1\n')
    write(d / "b.toml", 'daq_job_type = "DAQJobStoreFoo"\n')
    write(d / "c.toml", 'daq_job_type = "sensor"\nname = "c"\n[store_config.csv]\nfile_pat = 1\n')
    write(d / "supervisor.toml", "[restart]\nmax_delay = 0\n")
    p = procs.run("up", str(d), "--no-tty", timeout=60)
    assert p.returncode == 2
    err = p.stderr.decode().splitlines()
    assert err[0] == f"daq up: 4 problems in {d}; nothing started"
    assert (
        f"daq: config error: {d}/supervisor.toml: restart.max_delay: expected a number > 0, got 0"
        in err
    )
    assert (
        f"daq: config error: {d}/b.toml: daq_job_type: unknown store type 'DAQJobStoreFoo' "
        "(known: DAQJobStoreCSV, DAQJobStoreROOT, DAQJobStoreHDF5, DAQJobStoreMySQL, "
        "DAQJobStoreRedis, DAQJobStoreRaw)"
    ) in err
    assert any(
        line.startswith(f"daq: config error: {d}/a.toml: intervall_seconds: ") for line in err
    )
    assert any(
        line.startswith(f"daq: config error: {d}/c.toml: store_config.csv.file_pat: ")
        for line in err
    )
    assert len(err) == 5
    assert not (tmp_path / "out").exists()  # nothing started, nothing written


def test_kill_9_of_the_supervisor_leaves_no_orphans(
    procs: Procs, runtime_dir: Path, config_dir: Path, up: list[Up]
) -> None:
    u = _start(up, procs, config_dir, runtime_dir)
    u.wait_flowing()
    u.track()
    children = set(u.pids)
    assert len(children) == 5  # broker, two stores, two sources
    os.kill(u.p.pid, signal.SIGKILL)
    u.p.wait(10)
    t0 = time.monotonic()
    u.assert_no_orphans(timeout=20)
    assert time.monotonic() - t0 < 20
    # they stopped cleanly: the stores flushed what they had, the files read back
    assert csv_rows(u.out.glob("sensor1*.csv")) > 0
    assert any(e.kind is Kind.TABLE for e in raw_records(u.out.glob("sensor1*.raw")))


def test_second_ctrl_c_forces(
    procs: Procs, runtime_dir: Path, config_dir: Path, up: list[Up]
) -> None:
    u = _start(up, procs, config_dir, runtime_dir)
    u.wait_flowing()
    u.track()
    u.p.send_signal(signal.SIGINT)
    wait_for(lambda: "stopping: sources" in u.output(), 10, what="the ordered stop to begin")
    assert u.stop(signal.SIGINT) == 1
    assert "forced stop" in u.output()
    u.assert_no_orphans()


def test_live_table_on_a_terminal(procs: Procs, runtime_dir: Path, config_dir: Path) -> None:
    import pty
    import threading

    master, slave = pty.openpty()
    p = procs.start("up", str(config_dir), stdout=slave, stderr=slave)
    os.close(slave)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    threading.Thread(target=read, daemon=True).start()
    try:
        wait_for(
            lambda: b"running" in b"".join(chunks) and b"store-csv" in b"".join(chunks),
            60,
            what="the live table",
        )
        children = wait_for(
            lambda: c if len(c := psutil.Process(p.pid).children()) == 5 else None,
            60,
            what="broker, two stores, two sources",
        )
        p.send_signal(signal.SIGINT)
        assert p.wait(60) == 0
        assert not [c for c in children if c.is_running() and c.status() != "zombie"]
    finally:
        if p.poll() is None:
            p.kill()
        os.close(master)
    text = b"".join(chunks).decode(errors="replace")
    assert "piece" in text and "sensor1" in text and "stopped" in text
    assert "sensor1 | " not in text  # child lines go to the log files, not over the table
    assert "INFO" in text  # the latest supervisor events under the table
