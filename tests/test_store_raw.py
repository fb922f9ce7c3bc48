"""`daq store raw` as a real process: run files with header meta and index, several sources in
one file in arrival order, kill -9, restart, rotation, payload_only."""

from __future__ import annotations

import io
import os
import signal
import subprocess
from pathlib import Path

import pytest

from _store_data import (
    ListInput,
    broker_store,
    envelopes,
    sample_table,
    source,
    stream_bytes,
    subscribers,
    write_stream,
)
from conftest import Procs, wait_for, write
from enrgdaq_core.broker_client import wait_for_subscriptions
from enrgdaq_core.envelope import Envelope, Kind, Source, decode_body
from enrgdaq_core.runfile import open_part
from enrgdaq_core.stats import StatsReport
from enrgdaq_core.stream import StreamError, StreamReader
from enrgdaq_core.transport import BrokerAddress, Publisher, Subscriber

pytestmark = pytest.mark.e2e

SENSOR = """
daq_job_type = "sensor"
name = "sensor1"
interval_seconds = 0.002
channels = 2
"""

DIGI = """
daq_job_type = "digitizer"
name = "digi1"
interval_seconds = 0.004
channels = 2
samples = 16
event_rate = 500
"""


def records(path: Path) -> list[Envelope]:
    with open(path, "rb") as f:
        return [r.envelope for r in StreamReader(f)]


def test_pipe_run_file_header_snapshot_and_index(procs: Procs, tmp_path: Path) -> None:
    cfgs = tmp_path / "configs"
    cfgs.mkdir()
    job = write(cfgs / "sensor.toml", SENSOR)
    write(cfgs / "store.toml", 'daq_job_type = "DAQJobStoreRaw"\n')
    p_job = procs.start(
        "job", "run", str(job), "--run", "42", "--count", "60", "-o", "-", stdout=subprocess.PIPE
    )
    store = procs.run(
        "store",
        "raw",
        "-o",
        "run{run}.raw",
        "-O",
        f"snapshot={cfgs}",
        "-O",
        'meta={operator = "ana", comment = "calibration"}',
        stdin=p_job.stdout,
    )
    p_job.stdout.close()
    assert p_job.wait(30) == 0
    assert store.returncode == 0, store.stderr.decode()

    path = tmp_path / "run000042.raw"
    part = open_part(path)
    meta = part.meta
    assert (meta["format"], meta["run"], meta["part"], meta["writer"]) == (
        "enrgdaq-run",
        42,
        0,
        "daq store raw",
    )
    assert meta["operator"] == "ana" and meta["comment"] == "calibration"
    assert meta["config"]["files"] == {
        "sensor.toml": SENSOR,
        "store.toml": 'daq_job_type = "DAQJobStoreRaw"\n',
    }
    envs = records(path)
    assert [e.header.seq for e in envs] == list(range(61))
    assert [e.kind for e in envs] == [Kind.TABLE] * 60 + [Kind.EOS]
    assert meta["run_start_ns"] == envs[0].header.time_ns
    assert all(e.header.run == 42 and e.header.source == "sensor1" for e in envs)
    assert part.index is not None and part.index.complete
    assert part.index.end_record == 61 and part.index.end_offset == path.stat().st_size


def test_end_of_stream_is_recorded_but_not_counted_as_a_row(
    procs: Procs, broker: BrokerAddress, tmp_path: Path
) -> None:
    """Rows written = rows sent, in the final stats and the closing line; the EOS marker is
    in the file (a record) but is no row."""
    stats = Subscriber(broker, ["stats.store-raw"], mode="monitor")
    store = broker_store(procs, broker, "raw", ["r"], "-o", "r.raw")
    assert wait_for_subscriptions(broker, ["data.r"], timeout=20)
    pub = Publisher(broker)
    assert pub.wait_ready(10)
    src = Source("r", store={"raw": {}})
    for start in range(0, 70, 7):
        pub.send(src.table(sample_table(start, 7)))
    pub.send(src.raw(b"one payload"))  # a raw payload is one row
    pub.send(src.end_of_stream())
    while True:
        env = stats.recv(30)
        assert env is not None, "no final stats report"
        report = decode_body(env.payload, StatsReport)
        if report.extra.get("final"):
            break
    assert store.wait(30) == 0
    err = store.stderr.read().decode()
    pub.close()
    stats.close()
    assert report.rows_out == 71 and report.extra["records"] == 12, report
    assert "store-raw: 71 rows in" in err, err
    assert [e.kind for e in records(tmp_path / "r.raw")] == [Kind.TABLE] * 10 + [
        Kind.RAW,
        Kind.EOS,
    ]


def test_two_sources_share_one_file_in_arrival_order(
    procs: Procs, broker: BrokerAddress, tmp_path: Path
) -> None:
    store = broker_store(procs, broker, "raw", ["sensor1", "digi1"], "-o", "all.raw")
    wait_for(
        lambda: subscribers(broker, "data.sensor1$") and subscribers(broker, "data.digi1$"),
        15,
        what="store",
    )
    s = write(tmp_path / "sensor.toml", SENSOR)
    d = write(tmp_path / "digi.toml", DIGI)
    j1 = procs.start(
        "job", "run", str(s), "-o", "broker", "--broker", broker.base, "--count", "600"
    )
    j2 = procs.start(
        "job", "run", str(d), "-o", "broker", "--broker", broker.base, "--count", "300"
    )
    assert j1.wait(60) == 0 and j2.wait(60) == 0
    assert store.wait(60) == 0, store.stderr.read().decode()

    envs = records(tmp_path / "all.raw")
    by_source: dict[str, list[int]] = {}
    for e in envs:
        by_source.setdefault(e.header.source, []).append(e.header.seq)
    assert by_source == {"sensor1": list(range(601)), "digi1": list(range(301))}
    # written as they arrived, not grouped per source: across sources the file follows the
    # send times (up to delivery jitter), and while both streams ran they interleave
    late = [
        (a.header.source, b.header.source)
        for a, b in zip(envs, envs[1:], strict=False)
        if b.header.time_ns < a.header.time_ns - 250_000_000
    ]
    assert not late, late[:5]
    times = {src: [e.header.time_ns for e in envs if e.header.source == src] for src in by_source}
    overlap = min(t[-1] for t in times.values()) - max(t[0] for t in times.values())
    both = [e for e in envs if overlap > 0 and _within(e, times, overlap)]
    switches = sum(
        1 for a, b in zip(both, both[1:], strict=False) if a.header.source != b.header.source
    )
    # the digitizer sends every 4 ms: one switch per 40 ms of overlap is far below arrival
    # order and far above one batch per source
    assert switches >= overlap // 40_000_000, (switches, overlap)
    digi = next(e for e in envs if e.header.source == "digi1" and e.kind is Kind.TABLE)
    assert digi.table().schema.field("ch0").type.list_size == 16


def _within(e: Envelope, times: dict[str, list[int]], overlap: int) -> bool:
    """Whether `e` was sent while both sources were sending."""
    start = max(t[0] for t in times.values())
    return start <= e.header.time_ns <= start + overlap


def _wait_records(path: Path, n: int) -> bool:
    if not path.exists():
        return False
    try:
        return len(records(path)) >= n
    except StreamError:  # the file header or a record half written at this instant: look again
        return False


def test_kill_9_keeps_what_was_flushed_and_restart_opens_a_new_part(
    procs: Procs, tmp_path: Path
) -> None:
    src = source("src1", "raw")
    envs = envelopes(src, [sample_table(s, 3) for s in range(0, 600, 3)], eos=False)
    store = procs.start("store", "raw", "-i", "-", "-o", "run.raw", stdin=subprocess.PIPE)
    store.stdin.write(stream_bytes(envs[:100]))
    store.stdin.flush()
    path = tmp_path / "run.raw"
    wait_for(lambda: _wait_records(path, 100), 20, what="100 records on disk")
    os.killpg(store.pid, signal.SIGKILL)
    store.wait(10)

    before = path.read_bytes()
    got = records(path)
    assert [e.header.seq for e in got] == list(range(100))
    part = open_part(path)
    assert part.index is not None and not part.index.complete  # no clean close
    # the replay of a killed run: everything there, nothing reported as damaged
    rp = procs.run("replay", str(path), "-o", "-")
    assert rp.returncode == 0, rp.stderr.decode()
    assert len(list(StreamReader(io.BytesIO(rp.stdout)))) == 100

    # restart on the same output: a new part, the old file untouched
    store = procs.start("store", "raw", "-i", "-", "-o", "run.raw", stdin=subprocess.PIPE)
    store.stdin.write(stream_bytes(envs[100:]))
    store.stdin.close()
    assert store.wait(30) == 0, store.stderr.read().decode()
    assert path.read_bytes() == before
    second = tmp_path / "run_part001.raw"
    assert [e.header.seq for e in records(second)] == list(range(100, 200))
    assert open_part(second).index.complete  # type: ignore[union-attr]
    assert (open_part(path).part, open_part(second).part) == (0, 1)

    # both parts replay as one run, in order
    rp = procs.run("replay", str(second), str(path), "-o", "-")
    assert rp.returncode == 0, rp.stderr.decode()
    seqs = [r.envelope.header.seq for r in StreamReader(io.BytesIO(rp.stdout))]
    assert seqs == list(range(200))


def test_rotation_by_size_makes_parts_that_replay_in_order(procs: Procs, tmp_path: Path) -> None:
    src = source("src1", "raw", file_path="rot.raw", rotate_mb=0.02)
    envs = envelopes(src, [sample_table(s, 20) for s in range(0, 2000, 20)])
    stream = write_stream(tmp_path / "in.daq", envs)
    p = procs.run("store", "raw", "-i", str(stream))
    assert p.returncode == 0, p.stderr.decode()
    parts = sorted(tmp_path.glob("rot_*.raw"))
    assert len(parts) >= 4, parts
    metas = sorted(open_part(x).meta["part"] for x in parts)
    assert metas == list(range(len(parts)))
    for x in parts:
        idx = open_part(x).index
        assert idx is not None and idx.complete
    rp = procs.run("replay", *map(str, parts), "-o", "-")
    assert rp.returncode == 0, rp.stderr.decode()
    got = [r.envelope for r in StreamReader(io.BytesIO(rp.stdout))]
    assert [e.header.seq for e in got] == list(range(101))
    assert [e.header.time_ns for e in got] == [e.header.time_ns for e in envs]


def test_payload_only_writes_plain_bytes(procs: Procs, tmp_path: Path) -> None:
    src = Source("digi", store={"raw": {"payload_only": True, "file_path": "digi.bin"}})
    payloads = [bytes(range(i % 256)) * 3 for i in range(1, 120)]
    envs = [src.raw(p) for p in payloads[:60]]
    envs.append(src.table(sample_table(0, 4)))  # not raw bytes: counted and skipped
    envs += [src.raw(p) for p in payloads[60:]]
    envs.append(src.end_of_stream())
    stream = write_stream(tmp_path / "in.daq", envs)
    p = procs.run("store", "raw", "-i", str(stream))
    assert p.returncode == 0, p.stderr.decode()
    assert (tmp_path / "digi.bin").read_bytes() == b"".join(payloads)
    assert not (tmp_path / "digi.bin.idx").exists()
    # not a run file: replay says so, without a traceback
    rp = procs.run("replay", "digi.bin")
    assert rp.returncode == 2
    assert b"not an enrgdaq run file" in rp.stderr and b"Traceback" not in rp.stderr


def test_bad_snapshot_path_is_a_config_error(procs: Procs, tmp_path: Path) -> None:
    p = procs.run("store", "raw", "-i", "-", "-O", "snapshot=nowhere/", input=b"")
    assert p.returncode == 2
    assert b"snapshot" in p.stderr and b"nowhere" in p.stderr and b"Traceback" not in p.stderr


def test_shared_file_rotates_as_one_and_keeps_arrival_order(tmp_path: Path) -> None:
    """Two sources in one rotating file (in-process runner): every part holds both, and the
    parts in order give back the exact arrival order."""
    from enrgdaq_core.signals import StopFlag
    from enrgdaq_core.stores.options import build_backend
    from enrgdaq_core.stores.runner import StoreRunner

    a = Source("a", run=9, store={"raw": {"file_path": "shared{run}.raw", "rotate_mb": 0.01}})
    b = Source("b", run=9, store={"raw": {"file_path": "shared{run}.raw", "rotate_mb": 0.01}})
    envs = []
    for i in range(120):
        src = a if i % 3 else b
        envs.append(src.raw(bytes([i]) * 200))
    envs += [a.end_of_stream(), b.end_of_stream()]
    backend, overrides = build_backend("raw", flags={"out_dir": str(tmp_path)})
    runner = StoreRunner(backend, name="t", settings_override=overrides)
    result = runner.run(ListInput(envs), StopFlag())
    assert result.failed_rows == 0
    parts = sorted((open_part(p) for p in tmp_path.glob("shared*.raw")), key=lambda p: p.part)
    assert len(parts) >= 3
    assert [p.part for p in parts] == list(range(len(parts)))
    assert all(p.run == 9 and p.index is not None and p.index.complete for p in parts)
    assert len({p.meta["run_start_ns"] for p in parts}) == 1
    got = [e for p in parts for e in records(p.path)]
    assert [(e.header.source, e.header.seq) for e in got] == [
        (e.header.source, e.header.seq) for e in envs
    ]
    for p in parts[:-1]:
        assert {e.header.source for e in records(p.path)} == {"a", "b"}
        assert p.size < 0.01e6 + 2 * 400  # closed once over the limit, not long after


def test_a_run_file_outlives_its_first_source(
    procs: Procs, broker: BrokerAddress, tmp_path: Path
) -> None:
    """Two sources of one run whose lifetimes do not overlap (sensor1 ends with end-of-stream
    before digi1 starts) stay one run file, run000007.raw, with every record of both."""
    from enrgdaq_core.replay import Replay, Selection

    store = broker_store(procs, broker, "raw", ["sensor1", "digi1"], "-o", "run{run}.raw")
    wait_for(
        lambda: subscribers(broker, "data.sensor1$") and subscribers(broker, "data.digi1$"),
        15,
        what="store",
    )
    common = ("-o", "broker", "--broker", broker.base, "--run", "7")
    s = write(tmp_path / "sensor.toml", SENSOR)
    d = write(tmp_path / "digi.toml", DIGI)
    path = tmp_path / "run000007.raw"
    j1 = procs.start("job", "run", str(s), *common, "--count", "40")
    assert j1.wait(60) == 0
    # sensor1 is over (its end-of-stream recorded) before digi1 sends anything
    wait_for(lambda: _wait_records(path, 41), 20, what="sensor1's records and its end")
    j2 = procs.start("job", "run", str(d), *common, "--count", "25")
    assert j2.wait(60) == 0
    assert store.wait(60) == 0, store.stderr.read().decode()

    assert sorted(p.name for p in tmp_path.glob("*.raw")) == ["run000007.raw"]
    part = open_part(path)
    assert part.run == 7 and part.part == 0
    assert part.index is not None and part.index.complete
    got: dict[str, list[tuple[int, Kind]]] = {}
    for _, _, record in Replay([path], Selection()).records():
        h = record.envelope.header
        got.setdefault(h.source, []).append((h.seq, h.kind))
    assert [seq for seq, _ in got["sensor1"]] == list(range(41))
    assert [seq for seq, _ in got["digi1"]] == list(range(26))
    assert got["sensor1"][-1][1] is Kind.EOS and got["digi1"][-1][1] is Kind.EOS
    assert all(k is not Kind.EOS for _, k in got["sensor1"][:-1] + got["digi1"][:-1])


def test_run_file_lives_as_long_as_its_run_in_process(tmp_path: Path) -> None:
    """The runner and the raw backend in-process: a source that starts after another ended
    writes into the same run file; the file closes (complete index) once a later run starts,
    while the store goes on; a source alone in its file comes back into that file too."""
    from enrgdaq_core.jobs.runtime import StopFlag
    from enrgdaq_core.stores.options import build_backend
    from enrgdaq_core.stores.runner import StoreRunner

    store = {"raw": {"file_path": "run{run}.raw"}}
    a, b = Source("a", run=7, store=store), Source("b", run=7, store=store)
    c = Source("c", run=8, store=store)
    alone = Source("alone", run=7, store={"raw": {}})
    backend, overrides = build_backend("raw", flags={"out_dir": str(tmp_path)})
    runner = StoreRunner(backend, name="t", settings_override=overrides)
    first = [a.raw(bytes([i]) * 10) for i in range(5)] + [a.end_of_stream()]
    first += [alone.raw(b"x"), alone.end_of_stream()]
    second = [b.raw(bytes([i]) * 10) for i in range(3)] + [b.end_of_stream()]
    second += [alone.raw(b"y"), alone.end_of_stream()]
    for env in first + second:
        runner.handle(env)
    runner.tick()
    run7 = tmp_path / "run000007.raw"
    assert sorted(p.name for p in tmp_path.glob("*.raw")) == ["alone.raw", "run000007.raw"]
    assert not open_part(run7).index.complete  # type: ignore[union-attr]  # still open
    runner.handle(c.raw(b"run 8"))  # a later run: run 7's idle file is over
    assert open_part(run7).index.complete  # type: ignore[union-attr]
    runner.run(ListInput([c.end_of_stream()]), StopFlag())
    assert [(e.header.source, e.header.seq) for e in records(run7)] == [
        (e.header.source, e.header.seq) for e in first + second if e.header.source != "alone"
    ]
    assert [e.header.seq for e in records(tmp_path / "alone.raw")] == [0, 1, 2, 3]
    assert [e.header.source for e in records(tmp_path / "run000008.raw")] == ["c", "c"]
    assert sorted(p.name for p in tmp_path.glob("*.raw")) == [
        "alone.raw",
        "run000007.raw",
        "run000008.raw",
    ]
