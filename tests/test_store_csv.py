"""`daq store csv` as a real process: values, types, compression, crashes, restarts, schemas."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import signal
import subprocess
import threading
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import zstandard

from _store_data import (
    SCHEMA,
    chunks,
    envelopes,
    expected_columns,
    feed,
    run_store,
    sample_table,
    source,
    start_feeder,
    write_stream,
)
from conftest import Procs, wait_for, write
from enrgdaq_core.broker_client import wait_for_subscriptions
from enrgdaq_core.envelope import Source
from enrgdaq_core.stream import StreamReader
from enrgdaq_core.transport import BrokerAddress, Publisher

pytestmark = pytest.mark.e2e


def read_csv(path: Path, **kw: object) -> pd.DataFrame:
    return pd.read_csv(path, parse_dates=["ts"], **kw)


def ts_ns(series: pd.Series) -> np.ndarray:
    assert str(series.dt.tz) == "UTC"
    return series.dt.tz_convert(None).to_numpy().astype("datetime64[ns]").astype(np.int64)


def check_rows(df: pd.DataFrame, start: int, rows: int) -> None:
    """Every value and type of rows start.. as the standard reader gives them back."""
    exp = expected_columns(start, rows)
    assert list(df.columns) == SCHEMA.names
    assert len(df) == rows
    for name in ("i64", "i16", "u32"):
        assert df[name].dtype == np.int64, name
        np.testing.assert_array_equal(df[name].to_numpy(), exp[name].astype(np.int64))
    assert df["f64"].dtype == np.float64
    np.testing.assert_array_equal(df["f64"].to_numpy(), exp["f64"])  # NaN == NaN here
    assert df["f32"].dtype == np.float64
    np.testing.assert_array_equal(df["f32"].to_numpy().astype(np.float32), exp["f32"])
    assert df["flag"].dtype == np.bool_
    np.testing.assert_array_equal(df["flag"].to_numpy(), exp["flag"])
    assert df["label"].tolist() == exp["label"]
    np.testing.assert_array_equal(ts_ns(df["ts"]), exp["ts"])
    waves = np.array([json.loads(v) for v in df["wave"]], dtype=np.int64)
    np.testing.assert_array_equal(waves, exp["wave"])
    for got, want in zip(df["vwave"], exp["vwave"], strict=True):
        np.testing.assert_array_equal(np.array(json.loads(got), dtype=np.float32), want)


def test_values_and_types_round_trip(procs: Procs, tmp_path: Path) -> None:
    pieces = chunks(500, [1, 7, 60, 1, 200])
    src = source("src1", "csv", file_path="readings.csv")
    stream = write_stream(
        tmp_path / "in.daq", envelopes(src, [sample_table(s, n) for s, n in pieces])
    )
    run_store(procs, "csv", stream, "--flush-rows", "100")
    text = (tmp_path / "readings.csv").read_text()
    assert text.count('"i64"') == 1  # one header
    check_rows(read_csv(tmp_path / "readings.csv"), 0, 500)


@pytest.mark.parametrize(("option", "suffix"), [("use_zstd", ".zst"), ("use_gzip", ".gz")])
def test_compressed_frames(procs: Procs, tmp_path: Path, option: str, suffix: str) -> None:
    src = source("src1", "csv", file_path="readings.csv", **{option: True})
    pieces = chunks(300, [50])
    stream = write_stream(
        tmp_path / "in.daq", envelopes(src, [sample_table(s, n) for s, n in pieces])
    )
    run_store(procs, "csv", stream, "--flush-rows", "50")
    path = tmp_path / f"readings.csv{suffix}"
    check_rows(read_csv(path), 0, 300)
    data = path.read_bytes()
    units = _units(data, suffix)
    assert len(units) == 6  # one frame/member per write of 50 rows
    # A crash mid-write tears only the last unit: every complete one before it still reads.
    torn = tmp_path / f"torn.csv{suffix}"
    torn.write_bytes(data[: len(data) - len(units[-1]) // 2])
    text = b"".join(_decompress(u, suffix) for u in units[:-1])
    check_rows(pd.read_csv(io.StringIO(text.decode()), parse_dates=["ts"]), 0, 250)
    assert _readable_prefix(torn, suffix).startswith(text)


def _units(data: bytes, suffix: str) -> list[bytes]:
    """Split a file into its zstd frames / gzip members."""
    out = []
    if suffix == ".zst":
        pos = 0
        while pos < len(data):
            obj = zstandard.ZstdDecompressor().decompressobj()
            obj.decompress(data[pos:])
            used = len(data) - pos - len(obj.unused_data)
            out.append(data[pos : pos + used])
            pos += used
        return out
    pos = 0
    while pos < len(data):
        obj = zlib.decompressobj(wbits=31)
        obj.decompress(data[pos:])
        used = len(data) - pos - len(obj.unused_data)
        out.append(data[pos : pos + used])
        pos += used
    return out


def _decompress(unit: bytes, suffix: str) -> bytes:
    if suffix == ".zst":
        return zstandard.ZstdDecompressor().decompress(unit)
    return gzip.decompress(unit)


def _readable_prefix(path: Path, suffix: str) -> bytes:
    """What a streaming decoder (zstdcat, zcat) gives before it hits the torn end."""
    out = bytearray()
    if suffix == ".zst":
        with open(path, "rb") as f:
            reader = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
            try:
                while chunk := reader.read(1 << 16):
                    out += chunk
            except zstandard.ZstdError:
                pass
        return bytes(out)
    data = path.read_bytes()
    while data:  # member by member, as zcat does
        obj = zlib.decompressobj(wbits=31)
        out += obj.decompress(data)
        data = obj.unused_data
    return bytes(out)


SENSOR = """
daq_job_type = "sensor"
name = "pipe_sensor"
interval_seconds = 0.002
channels = 3
rows_per_step = 4

[store_config.csv]
file_path = "sensor_{run}.csv"
"""


def test_job_pipe_into_store(procs: Procs, tmp_path: Path) -> None:
    """`daq job run -o - | daq store csv`: two processes on OS pipes; the test keeps a copy of
    the bytes in between (a tee) to know exactly what was sent."""
    cfg = write(tmp_path / "sensor.toml", SENSOR)
    job = procs.start("job", "run", str(cfg), "-o", "-", "--count", "60", stdout=subprocess.PIPE)
    store = procs.start("store", "csv", "-i", "-", stdin=subprocess.PIPE)
    sent = bytearray()
    while chunk := job.stdout.read1(1 << 16):
        sent += chunk
        feed(store.stdin, chunk)
    store.stdin.close()
    assert job.wait(30) == 0
    assert store.wait(30) == 0, store.stderr.read().decode()
    envs = [r.envelope for r in StreamReader(io.BytesIO(bytes(sent)))]
    table = pa.concat_tables(e.table() for e in envs if e.kind == "table")
    assert table.num_rows == 240
    df = pd.read_csv(tmp_path / "sensor_000000.csv", parse_dates=["timestamp"])
    assert list(df.columns) == ["timestamp", "ch0", "ch1", "ch2"]
    np.testing.assert_array_equal(
        ts_ns(df["timestamp"]), table["timestamp"].cast(pa.int64()).to_numpy()
    )
    for ch in ("ch0", "ch1", "ch2"):
        assert df[ch].dtype == np.float64
        np.testing.assert_array_equal(df[ch].to_numpy(), table[ch].to_numpy())


def test_broker_from_topic(procs: Procs, broker: BrokerAddress, tmp_path: Path) -> None:
    store = procs.start(
        "store", "csv", "--from", "data.bsrc", "--broker", broker.base, "-o", "b.csv",
        "--exit-on-eos", "--flush-seconds", "0.1",
    )  # fmt: skip
    assert wait_for_subscriptions(broker, ["data.bsrc"], timeout=20)
    other = Source("bsrc0", store={"csv": {}})  # a prefix-sharing source: must not leak in
    pub = Publisher(broker)
    assert pub.wait_ready(10)
    src = Source("bsrc", store={"csv": {"file_path": "ignored.csv"}})
    for start, n in chunks(300, [1, 30, 2]):
        pub.send(src.table(sample_table(start, n)))
        pub.send(other.table(sample_table(start, n)))
    pub.send(src.end_of_stream())
    assert store.wait(30) == 0, store.stderr.read().decode()
    pub.close()
    check_rows(read_csv(tmp_path / "b.csv"), 0, 300)
    assert sorted(p.name for p in tmp_path.glob("*.csv")) == ["b.csv"]


def _complete_lines(path: Path) -> tuple[pd.DataFrame, bytes]:
    data = path.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]
    return pd.read_csv(io.BytesIO(whole), parse_dates=["ts"]), data[len(whole) :]


@pytest.mark.parametrize("compressed", [False, True])
def test_kill9_mid_write_then_restart(procs: Procs, tmp_path: Path, compressed: bool) -> None:
    settings = {"file_path": "k.csv", **({"use_zstd": True} if compressed else {})}
    path = tmp_path / ("k.csv.zst" if compressed else "k.csv")
    src = source("ksrc", "csv", **settings)
    store = procs.start(
        "store", "csv", "-i", "-", "--flush-rows", "50", "--flush-seconds", "0.02",
        stdin=subprocess.PIPE,
    )  # fmt: skip
    stop = threading.Event()
    thread = start_feeder(store.stdin, src, stop, 0)
    wait_for(lambda: path.exists() and path.stat().st_size > 60_000, 30, what="rows on disk")
    os.killpg(store.pid, signal.SIGKILL)  # while the feeder is still sending
    store.wait(10)
    stop.set()
    thread.join(10)
    with contextlib.suppress(BrokenPipeError):
        store.stdin.close()
    if compressed:
        text = _readable_prefix(path, ".zst")
        df, torn = _complete_lines_bytes(text)
    else:
        df, torn = _complete_lines(path)
    assert len(df) >= 300
    check_rows(df, 0, len(df))  # everything flushed is there, in order, nothing garbled
    before = path.read_bytes()

    # The next start appends (or opens the next part) and destroys nothing.
    more = write_stream(
        tmp_path / "more.daq", envelopes(src, [sample_table(100_000, 40)], eos=True)
    )
    run_store(procs, "csv", more)
    assert path.read_bytes()[: len(before)] == before
    part = tmp_path / ("k_part001.csv.zst" if compressed else "k_part001.csv")
    if compressed or torn:
        assert part.exists()
        check_rows(read_csv(part), 100_000, 40)
    else:
        assert not part.exists()
        again, _ = _complete_lines(path)
        check_rows(again.iloc[len(df) :].reset_index(drop=True), 100_000, 40)


def _complete_lines_bytes(text: bytes) -> tuple[pd.DataFrame, bytes]:
    whole = text[: text.rfind(b"\n") + 1]
    return pd.read_csv(io.BytesIO(whole), parse_dates=["ts"]), text[len(whole) :]


def test_schema_changes_open_new_parts(procs: Procs, tmp_path: Path) -> None:
    src = source("s", "csv", file_path="sc.csv")
    a = sample_table(0, 100)
    added = sample_table(100, 100).append_column("extra", pa.array(np.arange(100)))
    retyped = sample_table(200, 100)
    retyped = retyped.set_column(0, "i64", retyped["i64"].cast(pa.float64()))
    back = sample_table(300, 100)
    stream = write_stream(tmp_path / "in.daq", envelopes(src, [a, added, retyped, back]))
    run_store(procs, "csv", stream, "--flush-rows", "1000")
    files = sorted(p.name for p in tmp_path.glob("sc*.csv"))
    assert files == ["sc.csv", "sc_part001.csv", "sc_part002.csv", "sc_part003.csv"]
    check_rows(read_csv(tmp_path / "sc.csv"), 0, 100)
    df = read_csv(tmp_path / "sc_part001.csv")
    assert df["extra"].tolist() == list(range(100))
    check_rows(df.drop(columns="extra"), 100, 100)
    # CSV carries no types: whole-number floats print as integers (documented), so the
    # type change shows only in the file split; the values are exact.
    df = read_csv(tmp_path / "sc_part002.csv", dtype={"i64": np.float64})
    np.testing.assert_array_equal(df["i64"], expected_columns(200, 100)["i64"].astype(float))
    check_rows(read_csv(tmp_path / "sc_part003.csv"), 300, 100)


def test_overwrite_rewrites_and_default_appends(procs: Procs, tmp_path: Path) -> None:
    """The store's own `-O overwrite=true` rewrites (a header's `overwrite` never does:
    test_store_confine.py)."""

    def once(start: int, rows: int, *store_args: str) -> None:
        src = source("o", "csv", file_path="o.csv")
        stream = write_stream(tmp_path / "in.daq", envelopes(src, [sample_table(start, rows)]))
        run_store(procs, "csv", stream, *store_args)

    once(0, 100)
    once(100, 50, "-O", "overwrite=true")
    check_rows(read_csv(tmp_path / "o.csv"), 100, 50)
    once(150, 50)
    check_rows(read_csv(tmp_path / "o.csv"), 100, 100)
    assert (tmp_path / "o.csv").read_text().count('"i64"') == 1


def test_two_sources_never_share_a_file(procs: Procs, tmp_path: Path) -> None:
    one = source("one", "csv", file_path="both.csv")
    two = source("two", "csv", file_path="both.csv")
    envs = []
    for start, n in chunks(200, [10]):
        envs += [one.table(sample_table(start, n)), two.table(sample_table(start + 1000, n))]
    envs += [one.end_of_stream(), two.end_of_stream()]
    run_store(procs, "csv", write_stream(tmp_path / "in.daq", envs))
    check_rows(read_csv(tmp_path / "both.csv"), 0, 200)
    check_rows(read_csv(tmp_path / "both_two.csv"), 1000, 200)
