"""`daq store hdf5` as a real process, read back with h5py and with h5dump 1.10 (the oldest
HDF5 the files promise): values, types, SWMR, crashes, restarts, rotation."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pyarrow as pa
import pytest

import _h5dump
from _store_data import (
    SAMPLES,
    SCHEMA,
    chunks,
    envelopes,
    expected_columns,
    run_store,
    sample_table,
    source,
    start_feeder,
    write_stream,
)
from conftest import Procs, wait_for
from enrgdaq_core.broker_client import wait_for_subscriptions
from enrgdaq_core.envelope import Kind, Source, decode_body
from enrgdaq_core.stats import StatsReport
from enrgdaq_core.transport import BrokerAddress, Publisher, Subscriber

pytestmark = pytest.mark.e2e


def check_group(
    group: Any, start: int, rows: int, *, upto: int | None = None, live: bool = False
) -> None:
    """Every value and type of rows start.. in one group, as h5py gives them back.

    `live`: the store is still writing; SWMR covers fixed-size data only, so the
    variable-length columns (strings, lists) are left for after the writer stopped."""
    n = int(group.attrs["rows"]) if upto is None else upto
    assert n == rows
    exp = expected_columns(start, rows)
    assert list(group) == SCHEMA.names  # columns in the source's order
    for name in ("i64", "i16", "u32", "f64", "f32", "flag"):
        ds = group[name]
        assert ds.dtype == exp[name].dtype, name
        assert ds.shape[0] >= n
        np.testing.assert_array_equal(ds[:n], exp[name])
    ts = group["ts"]
    assert ts.dtype == np.int64 and ts.attrs["units"] == "ns since 1970-01-01T00:00:00Z"
    assert ts.attrs["arrow_type"] == "timestamp[ns, tz=UTC]"
    np.testing.assert_array_equal(ts[:n], exp["ts"])
    wave = group["wave"]
    assert wave.dtype == np.int16 and wave.shape[1:] == (SAMPLES,)
    np.testing.assert_array_equal(wave[:n], exp["wave"])
    if live:
        return
    assert group["label"].asstr()[:n].tolist() == exp["label"]
    vwave = group["vwave"][:n]
    assert h5py.check_vlen_dtype(group["vwave"].dtype) == np.float32
    for got, want in zip(vwave, exp["vwave"], strict=True):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)


def test_values_and_types_round_trip(procs: Procs, tmp_path: Path) -> None:
    src = source("src1", "hdf5", file_path="run.h5")
    tables = [sample_table(s, n) for s, n in chunks(500, [1, 7, 60, 1, 200])]
    run_store(procs, "hdf5", write_stream(tmp_path / "in.daq", envelopes(src, tables)))
    with h5py.File(tmp_path / "run.h5", "r") as f:
        assert list(f) == ["src1"]
        check_group(f["src1"], 0, 500)
        assert f["src1/i64"].compression == "gzip"
        assert f["src1/i64"].chunks is not None and f["src1/i64"].maxshape == (None,)
    _h5dump.check_group(tmp_path / "run.h5", "src1", 0, 500)  # gzip, read by HDF5 1.10


@pytest.mark.parametrize("compression", ["lzf", "none"])
def test_compression_option(procs: Procs, tmp_path: Path, compression: str) -> None:
    src = source("c", "hdf5", file_path="c.h5")
    stream = write_stream(tmp_path / "in.daq", envelopes(src, [sample_table(0, 50)]))
    run_store(procs, "hdf5", stream, "-O", f"compression={compression}", "-O", "dataset_name=grp")
    with h5py.File(tmp_path / "c.h5", "r") as f:
        assert f["grp/wave"].compression == (None if compression == "none" else compression)
        check_group(f["grp"], 0, 50)
    if compression == "none":  # lzf is h5py's own filter: other readers need its plugin
        _h5dump.check_group(tmp_path / "c.h5", "grp", 0, 50)


def test_h5dump_1_10_reads_many_writes(procs: Procs, tmp_path: Path) -> None:
    """Uncompressed and gzip files written in many flushes read value by value in h5dump."""
    tables = [sample_table(s, n) for s, n in chunks(700, [3, 50, 1, 120])]
    for compression in ("gzip", "none"):
        src = source("m", "hdf5", file_path=f"m_{compression}.h5", compression=compression)
        stream = write_stream(tmp_path / "in.daq", envelopes(src, tables))
        run_store(procs, "hdf5", stream, "--flush-rows", "60")
        _h5dump.check_group(tmp_path / f"m_{compression}.h5", "m", 0, 700)


def test_rotated_parts_read_in_h5dump(procs: Procs, tmp_path: Path) -> None:
    src = source("rot", "hdf5", file_path="rot.h5", rotate_mb=0.02)
    tables = [sample_table(s, n) for s, n in chunks(3000, [100])]
    stream = write_stream(tmp_path / "in.daq", envelopes(src, tables))
    run_store(procs, "hdf5", stream, "--flush-rows", "300")
    files = sorted(tmp_path.glob("rot_*.h5"))
    assert len(files) >= 3
    start = 0
    for path in files:  # in name order the parts hold every row once, in order
        rows, _ = _h5dump.read_group(path, "rot", [])
        _h5dump.check_group(path, "rot", start, rows)
        start += rows
    assert start == 3000


def _final_stats(sub: Subscriber, piece: str) -> StatsReport:
    while True:
        env = sub.recv(30)
        assert env is not None, "no final stats report"
        if env.kind is Kind.STATS and env.header.source == piece:
            report = decode_body(env.payload, StatsReport)
            if report.extra.get("final"):
                return report


def test_broker_small_messages_make_few_writes(
    procs: Procs, broker: BrokerAddress, tmp_path: Path
) -> None:
    """1000 one-row messages at full speed through the broker: a handful of resizes."""
    stats = Subscriber(broker, ["stats.store-hdf5"], mode="monitor")
    store = procs.start(
        "store", "hdf5", "--from", "data.fast", "--broker", broker.base, "-o", "fast.h5",
        "--exit-on-eos",
    )  # fmt: skip
    assert wait_for_subscriptions(broker, ["data.fast"], timeout=20)
    pub = Publisher(broker)
    assert pub.wait_ready(10)
    src = Source("fast", store={"hdf5": {}})
    for i in range(1000):
        pub.send(src.table(sample_table(i, 1)))
    pub.send(src.end_of_stream())
    report = _final_stats(stats, "store-hdf5")
    assert store.wait(30) == 0, store.stderr.read().decode()
    pub.close()
    stats.close()
    assert report.rows_out == 1000 and report.extra["pending_rows"] == 0
    assert report.extra["resizes"] <= 10, report.extra  # 1000 messages, a few batched writes
    assert report.extra["writes"] == report.extra["resizes"]
    assert report.bytes_out > 0 and report.extra["files"] == [str(tmp_path / "fast.h5")]
    with h5py.File(tmp_path / "fast.h5", "r") as f:
        check_group(f["fast"], 0, 1000)


def _swmr_rows(path: Path, group: str) -> int:
    try:
        with h5py.File(path, "r", swmr=True) as f:
            return int(f[group].attrs["rows"]) if group in f else 0
    except OSError:  # between the writer's create and its first flush
        return 0


def test_readable_while_writing_and_after_kill9(procs: Procs, tmp_path: Path) -> None:
    path = tmp_path / "live.h5"
    src = source("live", "hdf5", file_path="live.h5")
    store = procs.start(
        "store", "hdf5", "-i", "-", "--flush-rows", "100", "--flush-seconds", "0.05",
        stdin=subprocess.PIPE,
    )  # fmt: skip
    stop = threading.Event()
    thread = start_feeder(store.stdin, src, stop)
    # A reader opens the file while the store writes it (SWMR) and sees complete rows.
    wait_for(lambda: path.exists() and _swmr_rows(path, "live") >= 300, 30, what="rows")
    with h5py.File(path, "r", swmr=True) as f:
        n = int(f["live"].attrs["rows"])
        check_group(f["live"], 0, n, upto=n, live=True)
    wait_for(lambda: _swmr_rows(path, "live") >= n + 500, 30, what="more rows")
    os.killpg(store.pid, signal.SIGKILL)  # mid-stream: the feeder is still sending
    store.wait(10)
    stop.set()
    thread.join(10)
    with contextlib.suppress(BrokenPipeError):
        store.stdin.close()
    with h5py.File(path, "r", swmr=True) as f:
        n = int(f["live"].attrs["rows"])
        assert n >= 800
        check_group(f["live"], 0, n, upto=n)
    before = path.read_bytes()
    # HDF5 1.10 reads the crashed file too, once its open-for-writing mark is cleared
    cleared = tmp_path / "cleared.h5"
    cleared.write_bytes(before)
    _h5dump.h5clear_status(cleared)
    _h5dump.check_group(cleared, "live", 0, n)

    # A restart never writes into the crashed file: the next part takes the new rows.
    more = write_stream(tmp_path / "more.daq", envelopes(src, [sample_table(50_000, 30)]))
    run_store(procs, "hdf5", more)
    assert path.read_bytes() == before
    with h5py.File(tmp_path / "live_part001.h5", "r") as f:
        check_group(f["live"], 50_000, 30)
    _h5dump.check_group(tmp_path / "live_part001.h5", "live", 50_000, 30)


def test_restart_appends_to_the_same_group(procs: Procs, tmp_path: Path) -> None:
    src = source("r", "hdf5", file_path="r.h5")
    for start in (0, 100, 200):
        stream = write_stream(tmp_path / "in.daq", envelopes(src, [sample_table(start, 100)]))
        run_store(procs, "hdf5", stream)
    with h5py.File(tmp_path / "r.h5", "r") as f:
        assert list(f) == ["r"]
        check_group(f["r"], 0, 300)
    assert not (tmp_path / "r_part001.h5").exists()
    _h5dump.check_group(tmp_path / "r.h5", "r", 0, 300)  # appended after restarts


def test_schema_changes_make_group_versions(procs: Procs, tmp_path: Path) -> None:
    src = source("s", "hdf5", file_path="s.h5")
    added = sample_table(100, 100).append_column("extra", pa.array(np.arange(100)))
    retyped = sample_table(200, 100)
    retyped = retyped.set_column(0, "i64", retyped["i64"].cast(pa.float64()))
    tables = [sample_table(0, 100), added, retyped, sample_table(300, 100)]
    run_store(procs, "hdf5", write_stream(tmp_path / "in.daq", envelopes(src, tables)))
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert sorted(f) == ["s", "s_v2", "s_v3", "s_v4"]
        check_group(f["s"], 0, 100)
        assert f["s_v2/extra"][:].tolist() == list(range(100))
        assert f["s_v2"].attrs["rows"] == 100
        assert f["s_v3/i64"].dtype == np.float64
        np.testing.assert_array_equal(f["s_v3/i64"][:], expected_columns(200, 100)["i64"])
        check_group(f["s_v4"], 300, 100)
    _h5dump.check_group(tmp_path / "s.h5", "s", 0, 100)
    _h5dump.check_group(tmp_path / "s.h5", "s_v4", 300, 100)


def test_two_sources_one_file(procs: Procs, tmp_path: Path) -> None:
    one = source("one", "hdf5", file_path="both.h5")
    two = source("two", "hdf5", file_path="both.h5")
    envs = []
    for start, n in chunks(200, [20]):
        envs += [one.table(sample_table(start, n)), two.table(sample_table(start + 1000, n))]
    run_store(procs, "hdf5", write_stream(tmp_path / "in.daq", envs), "--flush-rows", "50")
    with h5py.File(tmp_path / "both.h5", "r") as f:
        assert sorted(f) == ["one", "two"]
        check_group(f["one"], 0, 200)
        check_group(f["two"], 1000, 200)
    _h5dump.check_group(tmp_path / "both.h5", "one", 0, 200)
    _h5dump.check_group(tmp_path / "both.h5", "two", 1000, 200)
