"""Run files: header meta, the sidecar index (as written, after a crash, damaged, stale)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from enrgdaq_core.envelope import Envelope, Source
from enrgdaq_core.runfile import (
    FINAL,
    INDEX_SUFFIX,
    RunFileError,
    RunFileWriter,
    build_index,
    config_snapshot,
    index_path,
    open_part,
    read_index,
    resync,
    run_meta,
)
from enrgdaq_core.stream import StreamDamage, StreamReader, StreamWriter


def envelopes(n: int, size: int = 10, source: str = "s") -> list[Envelope]:
    src = Source(source, run=3)
    return [src.raw(bytes([i % 251]) * (size + i % 7)) for i in range(n)]


def write_run(path: Path, envs: list[Envelope], **kw) -> RunFileWriter:
    w = RunFileWriter(path, run_meta(run=3, run_start_ns=envs[0].header.time_ns), **kw)
    for env in envs:
        w.write(env)
    return w


def test_header_meta_and_complete_index(tmp_path: Path) -> None:
    envs = envelopes(2500)
    snap = config_snapshot(_configs(tmp_path))
    path = tmp_path / "run.raw"
    w = RunFileWriter(
        path,
        run_meta(run=3, run_start_ns=123, part=2, snapshot=snap, extra={"operator": "ana"}),
        block_records=1000,
    )
    offsets = [w.write(e) for e in envs]
    w.close()

    part = open_part(path)
    assert part.meta["format"] == "enrgdaq-run"
    assert (part.run, part.meta["run_start_ns"], part.part) == (3, 123, 2)
    assert part.meta["operator"] == "ana" and part.meta["node"]
    assert part.meta["config"]["files"] == {"a.toml": "x = 1\n", "sub/b.toml": "y = 'two'\n"}
    idx = part.index
    assert idx is not None and idx.complete
    assert [(e.record, e.count) for e in idx.entries] == [(0, 1000), (1000, 1000), (2000, 500)]
    assert idx.entries[-1].flags & FINAL
    assert [e.offset for e in idx.entries] == [offsets[0], offsets[1000], offsets[2000]]
    assert idx.entries[-1].end_offset == path.stat().st_size
    for e in idx.entries:
        times = [env.header.time_ns for env in envs[e.record : e.end_record]]
        assert (e.tmin, e.tmax) == (min(times), max(times))
    # the records themselves: every envelope back, headers untouched
    with open(path, "rb") as f:
        got = [r.envelope for r in StreamReader(f)]
    assert [(g.header, bytes(g.payload)) for g in got] == [(e.header, e.payload) for e in envs]


def _configs(tmp_path: Path) -> Path:
    d = tmp_path / "configs"
    (d / "sub").mkdir(parents=True)
    (d / "a.toml").write_text("x = 1\n")
    (d / "sub" / "b.toml").write_text("y = 'two'\n")
    (d / "notes.txt").write_text("not a config")
    return d


def test_snapshot_of_one_file_and_errors(tmp_path: Path) -> None:
    f = tmp_path / "job.toml"
    f.write_text("daq_job_type = 'sensor'\n")
    snap = config_snapshot(f)
    assert snap["files"] == {"job.toml": "daq_job_type = 'sensor'\n"}
    assert snap["path"] == str(f.resolve()) and snap["taken_ns"] > 0
    with pytest.raises(FileNotFoundError, match="no such file"):
        config_snapshot(tmp_path / "missing")


def test_flushed_state_after_a_crash_is_readable(tmp_path: Path) -> None:
    """What a kill -9 leaves (files as they are after a flush, no close): all of it readable,
    the index incomplete and only pointing at flushed data."""
    envs = envelopes(2500)
    path = tmp_path / "run.raw"
    w = write_run(path, envs[:2300], block_records=1000)
    w.flush()
    crash = tmp_path / "crash"
    crash.mkdir()
    shutil.copy(path, crash / "run.raw")
    shutil.copy(index_path(path), crash / ("run.raw" + INDEX_SUFFIX))
    w.close()

    part = open_part(crash / "run.raw")
    assert part.index is not None and not part.index.complete
    assert [(e.record, e.count) for e in part.index.entries] == [(0, 1000), (1000, 1000)]
    with open(part.path, "rb") as f:
        assert sum(1 for _ in StreamReader(f)) == 2300


def test_torn_and_corrupt_index_entries_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "run.raw"
    write_run(path, envelopes(4500), block_records=1000).close()  # 4 full blocks + 1 final
    ipath = index_path(path)
    data = ipath.read_bytes()
    head = open_part(path).head
    size = path.stat().st_size

    ipath.write_bytes(data[:-20])  # torn last entry
    idx = read_index(path, head, size)
    assert idx is not None and len(idx.entries) == 4 and not idx.complete

    flipped = bytearray(data)
    entry_size = (len(data) - 36) // 5
    flipped[36 + 2 * entry_size + 3] ^= 0x10  # third entry's offset
    ipath.write_bytes(bytes(flipped))
    idx = read_index(path, head, size)
    assert idx is not None and len(idx.entries) == 2

    # an index that points past the end of a truncated data file is not trusted that far
    ipath.write_bytes(data)
    idx = read_index(path, head, 1000 * 20)
    assert idx is not None and all(e.end_offset <= 1000 * 20 for e in idx.entries)
    assert not idx.complete


def test_stale_index_of_another_file_is_ignored(tmp_path: Path) -> None:
    a, b = tmp_path / "a.raw", tmp_path / "b.raw"
    write_run(a, envelopes(100)).close()
    write_run(b, envelopes(100)).close()
    shutil.copy(index_path(a), index_path(b))
    assert open_part(b).index is None
    assert open_part(a).index is not None


def test_build_index_matches_the_writers_index(tmp_path: Path) -> None:
    envs = envelopes(3000)
    ref = tmp_path / "ref.raw"
    write_run(ref, envs, block_records=512).close()
    # the same stream without an index (as `daq tap > x.raw` would write)
    plain = tmp_path / "plain.raw"
    with open(plain, "wb") as f:
        w = StreamWriter(f, {"created_ns": 1})
        for env in envs:
            w.write(env)
    assert open_part(plain).index is None
    n, damage = build_index(plain, block_records=512)
    assert (n, damage) == (3000, None)
    got, want = open_part(plain).index, open_part(ref).index
    assert got is not None and want is not None and got.complete
    head_shift = open_part(ref).head.size - open_part(plain).head.size
    assert [(e.offset + head_shift, e.record, e.count, e.tmin, e.tmax) for e in got.entries] == [
        (e.offset, e.record, e.count, e.tmin, e.tmax) for e in want.entries
    ]


def test_build_index_of_a_damaged_file_stops_at_the_damage(tmp_path: Path) -> None:
    path = tmp_path / "run.raw"
    w = write_run(path, envelopes(3000), index=False)
    w.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 7])
    n, damage = build_index(path, block_records=1000)
    assert n == 2999 and damage is not None and damage.record == 2999
    idx = open_part(path).index
    assert idx is not None and not idx.complete and idx.end_record == 2999


def test_seek_positions(tmp_path: Path) -> None:
    envs = envelopes(5000)
    path = tmp_path / "run.raw"
    write_run(path, envs, block_records=1000).close()
    idx = open_part(path).index
    assert idx is not None
    assert idx.for_record(0) == 0 and idx.for_record(999) == 0 and idx.for_record(1000) == 1
    assert idx.for_record(4999) == 4 and idx.for_record(5000) == len(idx.entries)
    t = envs[2500].header.time_ns
    pos = idx.for_time(t)
    assert idx.entries[pos].record <= 2500 < idx.entries[pos].end_record
    assert idx.nothing_after(0, envs[0].header.time_ns - 1)
    assert not idx.nothing_after(0, envs[0].header.time_ns)


@pytest.mark.parametrize("indexed", [True, False])
def test_resync_after_a_corrupt_record(tmp_path: Path, indexed: bool) -> None:
    envs = envelopes(3000)
    path = tmp_path / "run.raw"
    write_run(path, envs, block_records=1000, index=indexed).close()
    with open(path, "rb") as f:
        offsets = [r.offset for r in StreamReader(f)]
    data = bytearray(path.read_bytes())
    data[offsets[500] + 20] ^= 0xFF
    path.write_bytes(bytes(data))
    part = open_part(path)
    with open(path, "rb") as f:
        with pytest.raises(StreamDamage) as exc:
            for _ in part.reader(f):
                pass
        assert exc.value.offset == offsets[500] and exc.value.record == 500
        where = resync(part, f, exc.value)
    assert where is not None
    if indexed:
        assert where == (offsets[1000], 1000)  # the next indexed block: exact numbers
    else:
        assert where == (offsets[501], None)  # the next good record


def test_open_part_errors(tmp_path: Path) -> None:
    with pytest.raises(RunFileError, match="no such file"):
        open_part(tmp_path / "nope.raw")
    with pytest.raises(RunFileError, match="is a directory"):
        open_part(tmp_path)
    text = tmp_path / "notes.csv"
    text.write_text("a,b\n1,2\n")
    with pytest.raises(RunFileError, match="not an enrgdaq run file"):
        open_part(text)
    empty = tmp_path / "empty.raw"
    empty.write_bytes(b"")
    with pytest.raises(RunFileError, match="not an enrgdaq run file.*empty"):
        open_part(empty)


def test_never_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "run.raw"
    write_run(path, envelopes(10)).close()
    with pytest.raises(FileExistsError):
        write_run(path, envelopes(10))
