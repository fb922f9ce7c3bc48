"""`daq replay` as a real process: a run recorded by `daq store raw` beside a live store, replayed
through a pipe or the broker into the same backend, compared value by value; pace; damage;
other files; --info; the terminal view; cuts and indexes."""

from __future__ import annotations

import io
import json
import os
import pty
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from _store_data import broker_store, subscribers
from conftest import DAQ, Procs, wait_for, write
from enrgdaq_core.envelope import Envelope, Header, Kind
from enrgdaq_core.runfile import RunFileWriter, index_path, open_part, run_meta
from enrgdaq_core.stream import StreamReader
from enrgdaq_core.transport import BrokerAddress

pytestmark = pytest.mark.e2e

SENSOR = """
daq_job_type = "sensor"
name = "sensor1"
interval_seconds = 0.003
channels = 3

[store_config.csv]
file_path = "{source}.csv"

[store_config.hdf5]
file_path = "{source}.h5"

[store_config.root]
file_path = "{source}.root"
"""

DIGI = """
daq_job_type = "digitizer"
name = "digi1"
interval_seconds = 0.01
channels = 2
samples = 8
event_rate = 500

[store_config.csv]
file_path = "{source}.csv"

[store_config.hdf5]
file_path = "{source}.h5"

[store_config.root]
file_path = "{source}.root"
"""

BACKENDS = ("csv", "hdf5", "root")


def stream_of(data: bytes) -> list[Envelope]:
    return [r.envelope for r in StreamReader(io.BytesIO(data))]


@pytest.fixture
def recorded_run(procs: Procs, broker: BrokerAddress, tmp_path: Path) -> Path:
    """A run of two real jobs through a real broker, stored live (in live/) by a CSV, an HDF5
    and a ROOT store, and recorded by `daq store raw` (run000007.raw), all side by side."""
    # exact names: with --exit-on-eos a store waits for both sources, also when one of them
    # ends before the other starts (as happens on a loaded machine)
    sources = ["sensor1", "digi1"]
    live = [broker_store(procs, broker, b, sources, "--out-dir", "live") for b in BACKENDS]
    raw = broker_store(procs, broker, "raw", sources, "-o", "run{run}.raw")
    wait_for(
        lambda: all(subscribers(broker, f"data.{s}$") >= len(BACKENDS) + 1 for s in sources),
        30,
        what="every store subscribed",
    )
    s = write(tmp_path / "sensor.toml", SENSOR)
    d = write(tmp_path / "digi.toml", DIGI)
    common = ("-o", "broker", "--broker", broker.base, "--run", "7")
    j1 = procs.start("job", "run", str(s), *common, "--count", "150")
    j2 = procs.start("job", "run", str(d), *common, "--count", "60")
    assert j1.wait(60) == 0 and j2.wait(60) == 0
    for p in [*live, raw]:
        assert p.wait(60) == 0, p.stderr.read().decode()
    return tmp_path / "run000007.raw"


def _compare_csv(live: Path, replayed: Path) -> None:
    for name, rows in (("sensor1.csv", 150), ("digi1.csv", 300)):
        a, b = live / name, replayed / name
        assert a.read_bytes() == b.read_bytes(), name  # same values, same order, same text
        da, db = pd.read_csv(a), pd.read_csv(b)
        assert len(da) == rows
        pd.testing.assert_frame_equal(da, db, check_exact=True)


def _same_array(a: object, b: object, what: str) -> None:
    import numpy as np

    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, what
    if a.dtype == object:
        assert len(a) == len(b)
        for x, y in zip(a.ravel(), b.ravel(), strict=True):
            _same_array(x, y, what)
    else:
        assert np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"), what


def _compare_hdf5(live: Path, replayed: Path) -> None:
    import h5py

    for name, rows in (("sensor1.h5", 150), ("digi1.h5", 300)):
        with h5py.File(live / name, "r") as fa, h5py.File(replayed / name, "r") as fb:
            seen: list[str] = []

            def visit(path: str, obj: object, fb: h5py.File = fb, seen: list[str] = seen) -> None:
                seen.append(path)
                other = fb[path]
                assert dict(obj.attrs).keys() == dict(other.attrs).keys(), path
                for key, value in obj.attrs.items():
                    _same_array(value, other.attrs[key], f"{path}@{key}")
                if isinstance(obj, h5py.Dataset):
                    _same_array(obj[()], other[()], path)

            fa.visititems(visit)
            other: list[str] = []
            fb.visit(other.append)
            assert sorted(seen) == sorted(other) and seen, name
            group = fa[seen[0].split("/")[0]]
            assert int(group.attrs["rows"]) == rows, name


def _compare_root(live: Path, replayed: Path) -> None:
    import awkward as ak
    import uproot

    for name, rows in (("sensor1.root", 150), ("digi1.root", 300)):
        with uproot.open(live / name) as fa, uproot.open(replayed / name) as fb:
            trees = [k for k, c in fa.classnames().items() if c == "TTree"]
            assert trees and trees == [k for k, c in fb.classnames().items() if c == "TTree"]
            for key in trees:
                ta, tb = fa[key], fb[key]
                assert ta.title == tb.title and ta.num_entries == tb.num_entries == rows
                branches = ta.keys()
                assert branches == tb.keys()
                for branch in branches:
                    assert ta[branch].typename == tb[branch].typename, branch
                a, b = ta.arrays(), tb.arrays()
                assert str(ak.type(a)) == str(ak.type(b))
                assert ak.to_list(a) == ak.to_list(b)


COMPARE = {"csv": _compare_csv, "hdf5": _compare_hdf5, "root": _compare_root}


def test_replay_through_a_pipe_stores_what_the_live_run_stored(
    procs: Procs, recorded_run: Path, tmp_path: Path
) -> None:
    for backend in BACKENDS:
        replay = procs.start("replay", str(recorded_run), stdout=subprocess.PIPE)
        store = procs.run("store", backend, "--out-dir", f"replayed_{backend}", stdin=replay.stdout)
        replay.stdout.close()
        assert replay.wait(30) == 0, replay.stderr.read().decode()
        assert store.returncode == 0, store.stderr.decode()
        COMPARE[backend](tmp_path / "live", tmp_path / f"replayed_{backend}")

    # headers are not restamped: a raw copy made through a pipe has the same headers
    replay = procs.start("replay", str(recorded_run), stdout=subprocess.PIPE)
    copy = procs.run("store", "raw", "-o", "copy.raw", stdin=replay.stdout)
    replay.stdout.close()
    assert replay.wait(30) == 0 and copy.returncode == 0, copy.stderr.decode()
    orig = [r.envelope for r in StreamReader(open(recorded_run, "rb"))]  # noqa: SIM115
    again = [r.envelope for r in StreamReader(open(tmp_path / "copy.raw", "rb"))]  # noqa: SIM115
    assert len(orig) == 150 + 60 + 2
    assert [(e.topic, e.header, bytes(e.payload)) for e in again] == [
        (e.topic, e.header, bytes(e.payload)) for e in orig
    ]


def test_replay_to_the_broker(
    procs: Procs, broker: BrokerAddress, recorded_run: Path, tmp_path: Path
) -> None:
    store = procs.start(
        "store",
        "csv",
        "--broker",
        broker.base,
        "--from",
        "data.sensor1",
        "--from",
        "data.digi1",
        "--out-dir",
        "replayed",
        "--exit-on-eos",
    )
    p = procs.run(
        "replay",
        str(recorded_run),
        "--to",
        broker.base,
        "--wait-for",
        "data.sensor1",
        "--wait-for",
        "data.digi1",
        "--wait",
        "20",
    )
    assert p.returncode == 0, p.stderr.decode()
    assert b"replayed 212 message(s)" in p.stderr
    assert store.wait(60) == 0, store.stderr.read().decode()
    _compare_csv(tmp_path / "live", tmp_path / "replayed")


def test_info_of_a_recorded_run(procs: Procs, recorded_run: Path) -> None:
    p = procs.run("replay", "--info", "--json", str(recorded_run))
    assert p.returncode == 0, p.stderr.decode()
    info = json.loads(p.stdout)
    assert info["run"] == 7 and info["records"] == 212
    s, d = info["sources"]["sensor1"], info["sources"]["digi1"]
    assert (s["messages"], s["rows"], s["kinds"], s["lost"]) == (
        151,
        150,
        {"table": 150, "eos": 1},
        0,
    )
    assert (d["rows"], d["kinds"]["table"]) == (300, 60)
    assert s["schemas"] == [
        "timestamp: timestamp[ns, tz=UTC], ch0: double, ch1: double, ch2: double"
    ]
    assert "ch0: fixed_size_list<item: int16>[8]" in d["schemas"][0]
    assert info["duration_s"] > 0.3
    text = procs.run("replay", "--info", str(recorded_run))
    assert text.returncode == 0
    out = text.stdout.decode()
    for expected in ("run 7", "sensor1", "digi1", "records    212", "schema: timestamp"):
        assert expected in out, expected


def _run_file(path: Path, n: int, step_ms: int, *, source: str = "a") -> list[Envelope]:
    import pyarrow as pa

    from enrgdaq_core.tables import encode_table

    t0 = time.time_ns()
    envs = []
    for i in range(n):
        h = Header(
            kind=Kind.TABLE,
            source=source,
            seq=i,
            time_ns=t0 + i * step_ms * 1_000_000,
            epoch=t0,
            run=3,
            rows=1,
            store={"csv": {"file_path": f"{source}.csv"}},
        )
        envs.append(Envelope(f"data.{source}", h, encode_table(pa.table({"i": [i], "v": [i / 2]}))))
    w = RunFileWriter(path, run_meta(run=3, run_start_ns=t0), block_records=16)
    for env in envs:
        w.write(env)
    w.close()
    return envs


def test_speed_1_plays_at_the_recorded_pace(procs: Procs, tmp_path: Path) -> None:
    path = tmp_path / "paced.raw"
    _run_file(path, 31, 50)  # a 1.5 s span
    replay = procs.start("replay", str(path), "--speed", "1", stdout=subprocess.PIPE)
    arrivals: list[float] = []

    def read() -> None:
        for _rec in StreamReader(replay.stdout):
            arrivals.append(time.monotonic())

    t = threading.Thread(target=read)
    t.start()
    t.join(60)
    assert replay.wait(10) == 0
    assert len(arrivals) == 31
    span = arrivals[-1] - arrivals[0]
    assert 1.35 <= span <= 3.0, span  # loose: a pace check, not a benchmark
    assert 0.6 <= arrivals[15] - arrivals[0] <= 2.0  # messages come along the way, not at the end
    # ten times faster
    start = time.monotonic()
    p = procs.run("replay", str(path), "--speed", "10", "-o", "-")
    assert p.returncode == 0 and len(stream_of(p.stdout)) == 31
    assert time.monotonic() - start >= 0.15


def test_damaged_files(procs: Procs, tmp_path: Path) -> None:
    path = tmp_path / "r.raw"
    envs = _run_file(path, 100, 1)
    offsets = [r.offset for r in StreamReader(open(path, "rb"))]  # noqa: SIM115
    truncated = tmp_path / "truncated.raw"
    truncated.write_bytes(path.read_bytes()[: offsets[70] + 9])
    shutil.copy(index_path(path), index_path(truncated))  # a stale index must not matter
    p = procs.run("replay", str(truncated), "-o", "-")
    assert p.returncode == 1
    assert [e.header.seq for e in stream_of(p.stdout)] == list(range(70))
    err = p.stderr.decode()
    assert f"at byte {offsets[70]} (record 70)" in err and "Traceback" not in err
    p = procs.run("replay", str(truncated), "-o", "-", "--ignore-damage")
    assert p.returncode == 0 and len(stream_of(p.stdout)) == 70
    assert f"at byte {offsets[70]}" in p.stderr.decode()

    flipped = tmp_path / "flipped.raw"
    data = bytearray(path.read_bytes())
    data[offsets[40] + 30] ^= 0x01
    flipped.write_bytes(bytes(data))
    p = procs.run("replay", str(flipped), "-o", "-", "--no-index")
    assert p.returncode == 1
    assert [e.header.seq for e in stream_of(p.stdout)] == list(range(40))
    assert f"at byte {offsets[40]} (record 40)" in p.stderr.decode()
    p = procs.run("replay", str(flipped), "-o", "-", "--no-index", "--ignore-damage")
    assert p.returncode == 0
    assert [e.header.seq for e in stream_of(p.stdout)] == list(range(40)) + list(range(41, 100))
    p = procs.run("replay", "--info", str(flipped))
    assert p.returncode == 1
    lines = p.stdout.decode().splitlines()
    # the damage comes with the summary, before the per-file and per-source details
    damage = [i for i, ln in enumerate(lines) if ln.startswith("damage:")]
    assert damage and damage[0] < lines.index("files:"), lines
    assert f"at byte {offsets[40]} (record 40)" in lines[damage[0]]
    assert envs[0].header.seq == 0


def test_files_that_are_not_run_files(procs: Procs, tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    (tmp_path / "empty.raw").write_bytes(b"")
    for args, words in (
        (("x.csv", "-o", "-"), "x.csv: not an enrgdaq run file"),
        (("--info", "x.csv"), "x.csv: not an enrgdaq run file"),
        (("empty.raw",), "empty.raw: not an enrgdaq run file (empty stream"),
        (("missing.raw", "--count", "1"), "missing.raw: no such file"),
    ):
        p = procs.run("replay", *args)
        err = p.stderr.decode()
        assert p.returncode == 2, (args, err)
        assert words in err and "Traceback" not in err
    p = procs.run("replay", "x.raw", "--from", "yesterday")
    assert p.returncode == 2


def test_terminal_shows_a_line_per_message(procs: Procs, tmp_path: Path) -> None:
    path = tmp_path / "r.raw"
    _run_file(path, 20, 1)
    master, slave = pty.openpty()
    p = subprocess.Popen(
        [*DAQ, "replay", str(path), "--from", "rec:5", "--count", "3"],
        stdout=slave,
        stderr=subprocess.PIPE,
        env=procs.env,
        cwd=tmp_path,
    )
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert p.wait(30) == 0, p.stderr.read().decode()
    p.stderr.close()
    lines = out.decode().splitlines()
    assert len(lines) == 3
    for n, line in zip((5, 6, 7), lines, strict=True):
        assert line.startswith(f"#{n} ") and f"seq={n}" in line and "data.a table" in line
        assert "rows=1 cols=2" in line and "lat=" not in line


def test_cut_to_a_new_run_file_and_build_index(procs: Procs, tmp_path: Path) -> None:
    path = tmp_path / "r.raw"
    envs = _run_file(path, 200, 1)
    p = procs.run("replay", str(path), "--from", "rec:50", "--until", "rec:149", "-o", "cut.raw")
    assert p.returncode == 0, p.stderr.decode()
    cut = open_part(tmp_path / "cut.raw")
    assert cut.run == 3 and cut.meta["writer"] == "daq replay"
    assert cut.index is not None and cut.index.complete and cut.index.end_record == 100
    got = [r.envelope for r in StreamReader(open(cut.path, "rb"))]  # noqa: SIM115
    assert [e.header for e in got] == [e.header for e in envs[50:150]]
    # never overwritten
    p = procs.run("replay", str(path), "-o", "cut.raw")
    assert p.returncode == 2 and b"exists" in p.stderr

    index_path(path).unlink()
    p = procs.run("replay", "--build-index", str(path))
    assert p.returncode == 0 and b"indexed 200 records" in p.stderr
    assert open_part(path).index.complete  # type: ignore[union-attr]


def test_progress_bar_on_request(procs: Procs, tmp_path: Path) -> None:
    path = tmp_path / "r.raw"
    _run_file(path, 50, 1)
    p = procs.run("replay", str(path), "-o", "-", "--progress")
    assert p.returncode == 0 and len(stream_of(p.stdout)) == 50
    err = p.stderr.decode()
    assert "replay" in err and "50 msgs" in err and "msg/s" in err
