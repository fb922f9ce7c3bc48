"""What every file store shares, on csv, root and hdf5 as real processes: names, rotation,
clean stops on signals, the stats heartbeat."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import pytest
import uproot

from _store_data import (
    chunks,
    envelopes,
    expected_columns,
    feed,
    run_store,
    sample_table,
    source,
    stream_bytes,
    write_stream,
)
from conftest import Procs
from enrgdaq_core.envelope import Kind, Source, decode_body
from enrgdaq_core.stats import StatsReport
from enrgdaq_core.stores.paths import date_string
from enrgdaq_core.transport import BrokerAddress, Subscriber

pytestmark = pytest.mark.e2e

EXT = {"csv": ".csv", "root": ".root", "hdf5": ".h5"}
BACKENDS = list(EXT)


def read_i64(backend: str, path: Path, name: str) -> np.ndarray:
    """The i64 column of one file, with the backend's standard reader."""
    if backend == "csv":
        return pd.read_csv(path)["i64"].to_numpy()
    if backend == "root":
        with uproot.open(path) as f:
            return f[name]["i64"].array(library="np")
    with h5py.File(path, "r") as f:
        return f[name]["i64"][: f[name].attrs["rows"]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_rotation_by_size_names_sort_in_time_order(
    procs: Procs, tmp_path: Path, backend: str
) -> None:
    src = source("rot", backend, file_path=f"rot{EXT[backend]}", rotate_mb=0.02)
    tables = [sample_table(s, n) for s, n in chunks(3000, [100])]
    run_store(
        procs, backend, write_stream(tmp_path / "in.daq", envelopes(src, tables)),
        "--flush-rows", "300",
    )  # fmt: skip
    files = sorted(p for p in tmp_path.glob(f"rot_*{EXT[backend]}"))
    assert len(files) >= 3
    for p in files:  # rot_<local opening time with its UTC offset>[_partNNN].ext
        stamp = p.name[len("rot_") :].split("_part")[0].removesuffix(EXT[backend])
        assert time.strptime(stamp, "%Y%m%dT%H%M%S%z")
    # sorted by name = in time order: together they hold every row, in order, once
    got = np.concatenate([read_i64(backend, p, "rot") for p in files])
    np.testing.assert_array_equal(got, expected_columns(0, 3000)["i64"])


def test_rotation_by_time(procs: Procs, tmp_path: Path) -> None:
    src = source("tr", "csv", file_path="tr.csv", rotate="1s")
    store = procs.start("store", "csv", "-i", "-", "--flush-seconds", "0.05", stdin=subprocess.PIPE)
    feed(store.stdin, stream_bytes([]))
    pos = 0
    # Feed, paced, until the store itself has opened a second file: a loaded machine may start
    # the store late and let it take a fixed few seconds of input within one of its seconds.
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("tr_*.csv"))) < 2 or pos < 100:
        assert time.monotonic() < deadline, "the store opened no second file in 60 s"
        feed(store.stdin, stream_bytes([src.table(sample_table(pos, 10))], header=False))
        pos += 10
        time.sleep(0.05)  # pacing the source
    feed(store.stdin, stream_bytes([src.end_of_stream()], header=False))
    store.stdin.close()
    assert store.wait(30) == 0, store.stderr.read().decode()
    files = sorted(tmp_path.glob("tr_*.csv"))
    assert len(files) >= 2
    got = np.concatenate([read_i64("csv", p, "tr") for p in files])
    np.testing.assert_array_equal(got, expected_columns(0, pos)["i64"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_add_date_and_run_placeholder(procs: Procs, tmp_path: Path, backend: str) -> None:
    before = date_string(time.time())
    src = Source(
        "dated",
        run=7,
        store={backend: {"file_path": f"out/run{{run}}/d{EXT[backend]}", "add_date": True}},
    )
    stream = write_stream(tmp_path / "in.daq", envelopes(src, [sample_table(0, 20)]))
    run_store(procs, backend, stream)
    dates = {before, date_string(time.time())}
    found = [tmp_path / "out" / "run000007" / f"d_{d}{EXT[backend]}" for d in dates]
    path = next(p for p in found if p.exists())
    np.testing.assert_array_equal(read_i64(backend, path, "dated"), expected_columns(0, 20)["i64"])


def _reports(sub: Subscriber, piece: str, until: Any, timeout: float = 30) -> StatsReport:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        env = sub.recv(1)
        if env is not None and env.kind is Kind.STATS and env.header.source == piece:
            report = decode_body(env.payload, StatsReport)
            if until(report):
                return report
    raise AssertionError(f"no stats report from {piece} matched")


@pytest.mark.parametrize(
    ("backend", "sig"),
    [("csv", signal.SIGTERM), ("root", signal.SIGTERM), ("hdf5", signal.SIGINT)],
)
def test_signal_flushes_and_closes_and_stats_heartbeat(
    procs: Procs, broker: BrokerAddress, tmp_path: Path, backend: str, sig: int
) -> None:
    """Rows still buffered when the signal comes are written; the heartbeat has every figure."""
    piece = f"store-{backend}"
    stats = Subscriber(broker, [f"stats.{piece}"], mode="monitor")
    store = procs.start(
        "store", backend, "-i", "-", "--broker", broker.base, "--flush-seconds", "3600",
        "-o", f"sig{EXT[backend]}", stdin=subprocess.PIPE,
    )  # fmt: skip
    src = source("sig", backend)
    envs = [src.table(sample_table(0, 100))]
    src.seq += 2  # two messages this store never sees: a gap of 2 for source "sig"
    envs.append(src.table(sample_table(100, 100)))
    feed(store.stdin, stream_bytes(envs))
    report = _reports(stats, piece, lambda r: r.extra.get("pending_rows") == 200)
    assert report.rows_in == 200 and report.rows_out == 0 and report.queue == 200
    assert report.extra["lost_by_source"] == {"sig": 2} and report.lost == 2
    store.send_signal(sig)
    final = _reports(stats, piece, lambda r: r.extra.get("final"))
    assert store.wait(30) == 0, store.stderr.read().decode()
    store.stdin.close()
    stats.close()
    path = tmp_path / f"sig{EXT[backend]}"
    np.testing.assert_array_equal(read_i64(backend, path, "sig"), expected_columns(0, 200)["i64"])
    assert final.rows_out == 200 and final.extra["pending_rows"] == 0
    assert final.bytes_out > 0 and final.extra["writes"] == 1
    assert final.extra["files"] == [str(path)] and final.extra["files_opened"] == 1
    assert final.extra["flush_ms"] > 0
    assert final.extra["lost_by_source"] == {"sig": 2}
    if backend == "hdf5":  # the file was closed: it opens without swmr=True
        with h5py.File(path, "r") as f:
            assert f["sig"].attrs["rows"] == 200
    if backend == "root":
        with uproot.open(path) as f:
            assert f.keys(cycle=False) == ["sig"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_messages_are_counted_not_fatal(procs: Procs, tmp_path: Path, backend: str) -> None:
    src = source("bad", backend, file_path=f"bad{EXT[backend]}")
    good = src.table(sample_table(0, 10))
    broken = src.table(sample_table(10, 10))
    broken.payload = bytes(broken.payload)[:40]  # a torn Arrow payload, valid record framing
    broken._table = None
    raw = src.raw(b"\x00\x01 not a table")
    after = src.table(sample_table(20, 10))
    stream = write_stream(tmp_path / "in.daq", [good, broken, raw, after, src.end_of_stream()])
    p = run_store(procs, backend, stream)
    err = p.stderr.decode()
    assert "dropped undecodable message from bad seq 1" in err
    assert "ignored a raw message from bad" in err
    got = read_i64(backend, tmp_path / f"bad{EXT[backend]}", "bad")
    want = expected_columns(0, 30)["i64"]
    np.testing.assert_array_equal(got, np.concatenate([want[:10], want[20:]]))


def test_stats_interval_reports_while_idle(procs: Procs, broker: BrokerAddress) -> None:
    """The heartbeat goes out every second even with no data."""
    stats = Subscriber(broker, ["stats.idle-store"], mode="monitor")
    store = procs.start(
        "store", "csv", "--from", "data.nothing", "--broker", broker.base, "--name", "idle-store"
    )
    first = _reports(stats, "idle-store", lambda r: True)
    second = _reports(stats, "idle-store", lambda r: r.time_ns > first.time_ns)
    assert 0.5e9 < second.time_ns - first.time_ns < 5e9
    assert first.role == "store" and first.extra["pending_rows"] == 0
    assert procs.stop(store) == 0
    stats.close()
