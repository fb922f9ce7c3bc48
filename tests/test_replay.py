"""Replay core: order of parts, ranges (record numbers, times), filters, index vs scan,
damage, loop, pacing, --info. In-process; the command-line and pipe tests are elsewhere."""

from __future__ import annotations

import datetime as dt
import io
import time
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pytest

from enrgdaq_core.envelope import Envelope, Header, Kind
from enrgdaq_core.replay import Position, Replay, Selection, parse_position, run_info
from enrgdaq_core.runfile import RunFileWriter, config_snapshot, index_path, run_meta
from enrgdaq_core.stream import StreamReader
from enrgdaq_core.tables import encode_table

T0 = 1_795_000_000_000_000_000  # ns
MS = 1_000_000


def make_envs(
    n: int, *, sources: tuple[str, ...] = ("a", "b"), step_ns: int = MS
) -> list[Envelope]:
    """n messages alternating between sources, 1 ms apart; tables for `a`, raw bytes for others."""
    seqs = dict.fromkeys(sources, 0)
    out = []
    for i in range(n):
        src = sources[i % len(sources)]
        h = Header(
            kind=Kind.TABLE if src == "a" else Kind.RAW,
            source=src,
            seq=seqs[src],
            time_ns=T0 + i * step_ns,
            epoch=T0 - 10**9,
            run=5,
            store={"csv": {"file_path": f"{src}.csv"}},
        )
        seqs[src] += 1
        if src == "a":
            h.rows = 2
            payload = encode_table(
                pa.table({"i": pa.array([i, -i], pa.int64()), "x": [i / 3, None]})
            )
        else:
            payload = i.to_bytes(4, "little") * 3
        out.append(Envelope(f"data.{src}", h, payload))
    return out


def write(path: Path, envs: list[Envelope], *, part: int = 0, block: int = 100, **kw) -> Path:
    w = RunFileWriter(path, run_meta(run=5, run_start_ns=T0, part=part, **kw), block_records=block)
    for env in envs:
        w.write(env)
    w.close()
    return path


def played(rp: Replay) -> list[tuple[int, Envelope]]:
    return [(n, rec.envelope) for n, _p, rec in rp.records()]


def same(got: list[Envelope], want: list[Envelope]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.topic == w.topic and g.header == w.header and bytes(g.payload) == bytes(w.payload)


def test_plays_everything_unchanged(tmp_path: Path) -> None:
    envs = make_envs(1000)
    rp = Replay([write(tmp_path / "r.raw", envs)])
    got = []
    result = rp.run(got.append)
    same(got, envs)
    assert result.messages == 1000 and not result.damaged and result.passes == 1
    assert got[0].table().to_pydict() == {"i": [0, 0], "x": [0.0, None]}


def test_parts_play_in_written_order_with_global_record_numbers(tmp_path: Path) -> None:
    envs = make_envs(900)
    p0 = write(tmp_path / "run_a.raw", envs[:300], part=0)
    time.sleep(0.002)
    p1 = write(tmp_path / "run_0.raw", envs[300:600], part=1)  # names do not sort in order
    time.sleep(0.002)
    p2 = write(tmp_path / "run_5.raw", envs[600:], part=2)
    rp = Replay([p2, p0, p1])
    assert [p.path for p in rp.parts] == [p0, p1, p2]
    got = played(rp)
    assert [n for n, _ in got] == list(range(900))
    same([e for _, e in got], envs)
    sel = Selection(start=Position(record=250), until=Position(record=650))
    got = played(Replay([p1, p2, p0], sel))
    assert [n for n, _ in got] == list(range(250, 651))
    same([e for _, e in got], envs[250:651])


SELECTIONS = [
    Selection(start=Position(record=0), until=Position(record=0)),
    Selection(start=Position(record=123)),
    Selection(start=Position(record=700), until=Position(record=1999)),
    Selection(until=Position(record=99)),
    Selection(start=Position(record=5000)),
    Selection(start=Position(seconds=0.5)),
    Selection(start=Position(seconds=0.25), until=Position(seconds=0.75)),
    Selection(until=Position(seconds=0.0)),
    Selection(start=Position(time_ns=T0 + 1234 * MS), until=Position(time_ns=T0 + 1300 * MS)),
    Selection(topics=["data.b"]),
    Selection(sources=["a"], start=Position(record=999)),
    Selection(topics=["data.*"], until=Position(record=10)),
]


def expected(envs: list[Envelope], sel: Selection) -> list[int]:
    def bound(p: Position | None) -> tuple[int | None, int | None]:
        if p is None:
            return None, None
        return (p.record, None) if p.record is not None else (None, p.resolve(T0))

    fr, ft = bound(sel.start)
    ur, ut = bound(sel.until)
    out = []
    for i, e in enumerate(envs):
        t = e.header.time_ns
        if (fr is not None and i < fr) or (ur is not None and i > ur):
            continue
        if (ft is not None and t < ft) or (ut is not None and t > ut):
            continue
        if sel.matches(e):
            out.append(i)
    return out


@pytest.mark.parametrize("sel", SELECTIONS, ids=range(len(SELECTIONS)))
def test_selection_is_the_same_with_index_scan_and_parts(tmp_path: Path, sel: Selection) -> None:
    envs = make_envs(2000)
    one = write(tmp_path / "one.raw", envs, block=64)
    parts = [
        write(tmp_path / f"p{i}.raw", envs[i * 500 : (i + 1) * 500], part=i, block=64)
        for i in range(4)
    ]
    want = expected(envs, sel)
    for paths, use_index in (([one], True), ([one], False), (parts, True), (parts, False)):
        got = played(Replay(paths, sel, use_index=use_index))
        assert [n for n, _ in got] == want, (paths, use_index)
        same([e for _, e in got], [envs[i] for i in want])


def test_topic_filter_never_leaks_to_a_longer_name(tmp_path: Path) -> None:
    envs = make_envs(60, sources=("s1", "s10", "s2"))
    path = write(tmp_path / "r.raw", envs)
    got = played(Replay([path], Selection(topics=["data.s1"])))
    assert {e.topic for _, e in got} == {"data.s1"} and len(got) == 20
    got = played(Replay([path], Selection(topics=["data.s1*"])))
    assert {e.topic for _, e in got} == {"data.s1", "data.s10"}
    got = played(Replay([path], Selection(sources=["s2", "s10"])))
    assert {e.header.source for _, e in got} == {"s2", "s10"} and len(got) == 40


class CountingRaw(io.FileIO):
    """The file under the buffer: counts the bytes actually read from disk."""

    total = 0

    def readinto(self, buffer) -> int | None:  # type: ignore[override]
        n = super().readinto(buffer)
        CountingRaw.total += n or 0
        return n


def counting_open(path: Path) -> BinaryIO:
    return io.BufferedReader(CountingRaw(path, "rb"), buffer_size=1 << 16)


def test_seek_in_a_million_messages_reads_a_small_part(tmp_path: Path) -> None:
    """10^6 messages: seeking by record number and by time reads a few blocks, not the file."""
    path = tmp_path / "big.raw"
    n = 1_000_000
    h = Header(kind=Kind.RAW, source="s", epoch=T0, run=1)
    env = Envelope("data.s", h, b"\x00" * 8)
    w = RunFileWriter(path, run_meta(run=1, run_start_ns=T0))
    for i in range(n):
        h.seq = i
        h.time_ns = T0 + i * 1000
        w.write(env)
    w.close()
    size = path.stat().st_size
    assert size > 50_000_000

    def read_some(sel: Selection, use_index: bool = True, k: int = 5) -> list[Envelope]:
        CountingRaw.total = 0
        rp = Replay([path], sel, opener=counting_open, use_index=use_index)
        out: list[Envelope] = []
        rp.run(out.append, count=k)
        return out

    got = read_some(Selection(start=Position(record=987_654)))
    assert [e.header.seq for e in got] == list(range(987_654, 987_659))
    indexed_bytes = CountingRaw.total
    assert indexed_bytes < size / 100, indexed_bytes
    # the whole sidecar index is read too (not through the opener): it is small
    assert index_path(path).stat().st_size < size / 1000

    got = read_some(Selection(start=Position(time_ns=T0 + 543_210 * 1000)))
    assert [e.header.seq for e in got] == list(range(543_210, 543_215))
    assert CountingRaw.total < size / 100

    # the same seek without the index reads the file up to the record: the index is the reason
    got = read_some(Selection(start=Position(record=600_000)), use_index=False, k=1)
    assert got[0].header.seq == 600_000
    assert CountingRaw.total > size / 2


def corrupt(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def offsets_of(path: Path) -> list[int]:
    with open(path, "rb") as f:
        return [r.offset for r in StreamReader(f)]


def test_truncated_file_plays_up_to_the_damage(tmp_path: Path) -> None:
    envs = make_envs(500)
    path = write(tmp_path / "r.raw", envs)
    offs = offsets_of(path)
    with open(path, "r+b") as f:
        f.truncate(offs[400] + 30)
    for ignore in (False, True):
        got: list[Envelope] = []
        result = Replay([path], ignore_damage=ignore).run(got.append)
        same(got, envs[:400])
        assert len(result.damage) == 1
        d = result.damage[0]
        assert (d.offset, d.record, d.path) == (offs[400], 400, path)
        assert "truncated" in d.reason


@pytest.mark.parametrize("indexed", [True, False])
def test_bit_flip_stops_there_or_skips_one_record(tmp_path: Path, indexed: bool) -> None:
    envs = make_envs(1000)
    path = write(tmp_path / "r.raw", envs, block=100)
    if not indexed:
        index_path(path).unlink()
    offs = offsets_of(path)
    corrupt(path, offs[250] + 40)

    got: list[Envelope] = []
    result = Replay([path]).run(got.append)
    same(got, envs[:250])
    assert [(d.offset, d.record) for d in result.damage] == [(offs[250], 250)]

    got = []
    result = Replay([path], ignore_damage=True).run(got.append)
    skipped_to = 300 if indexed else 251  # the next indexed block, or the next good record
    same(got, envs[:250] + envs[skipped_to:])
    assert result.damage[0].resumed_at == offs[skipped_to]


def test_damage_in_an_earlier_part_stops_unless_ignored(tmp_path: Path) -> None:
    envs = make_envs(300)
    p0 = write(tmp_path / "p0.raw", envs[:150], part=0)
    time.sleep(0.002)
    p1 = write(tmp_path / "p1.raw", envs[150:], part=1)
    with open(p0, "r+b") as f:
        f.truncate(p0.stat().st_size - 3)
    got: list[Envelope] = []
    Replay([p0, p1]).run(got.append)
    same(got, envs[:149])
    got = []
    Replay([p0, p1], ignore_damage=True).run(got.append)
    same(got, envs[:149] + envs[150:])


def test_loop_and_count(tmp_path: Path) -> None:
    envs = make_envs(10)
    path = write(tmp_path / "r.raw", envs)
    got: list[Envelope] = []
    result = Replay([path]).run(got.append, loop=True, count=25)
    assert result.messages == 25 and result.passes == 3
    assert [e.header.seq for e in got[:10]] == [e.header.seq for e in envs]
    # later passes look like a restarted source (new epoch), not duplicates
    assert {e.header.epoch for e in got[:10]} == {envs[0].header.epoch}
    assert {e.header.epoch for e in got[10:20]} == {envs[0].header.epoch + 1}
    assert [e.header.time_ns for e in got[10:20]] == [e.header.time_ns for e in envs]


def test_pacing_follows_the_recorded_send_times(tmp_path: Path) -> None:
    envs = make_envs(41, step_ns=25 * MS)  # a 1.0 s span
    path = write(tmp_path / "r.raw", envs)
    stamps: list[float] = []
    t0 = time.monotonic()
    Replay([path]).run(lambda e: stamps.append(time.monotonic() - t0), speed=1)
    assert 0.95 <= stamps[-1] < 3.0
    assert 0.45 <= stamps[20] < 2.0  # the middle message in the middle, not all at the end
    t0 = time.monotonic()
    stamps.clear()
    Replay([path]).run(lambda e: stamps.append(time.monotonic() - t0), speed=4)
    assert 0.24 <= stamps[-1] < 1.5


def test_parse_position() -> None:
    assert parse_position("rec:1000") == Position(record=1000)
    assert parse_position("record:0") == Position(record=0)
    assert parse_position("90") == Position(seconds=90.0)
    assert parse_position("+90s") == Position(seconds=90.0)
    assert parse_position("1.5m") == Position(seconds=90.0)
    assert parse_position("0") == Position(seconds=0.0)
    assert parse_position("2h") == Position(seconds=7200.0)
    iso = parse_position("2026-11-25T14:30:05.5+01:00")
    want = dt.datetime(2026, 11, 25, 13, 30, 5, 500000, tzinfo=dt.UTC)
    assert iso.time_ns == int(want.timestamp()) * 10**9 + 500_000_000
    local = parse_position("2026-11-25 14:30:05")
    assert local.time_ns == int(dt.datetime(2026, 11, 25, 14, 30, 5).timestamp()) * 10**9
    clock = parse_position("14:30")
    assert clock == Position(clock=14 * 3600 + 30 * 60)
    start = int(dt.datetime(2026, 11, 25, 14, 0).timestamp()) * 10**9
    assert clock.resolve(start) == start + 30 * 60 * 10**9
    # a time of day before the start is on the next day (a run past midnight)
    late = int(dt.datetime(2026, 11, 25, 23, 0).timestamp()) * 10**9
    assert parse_position("01:00").resolve(late) == late + 2 * 3600 * 10**9
    for bad in ("rec:x", "rec:-1", "yesterday", "25:00", "1e3q"):
        with pytest.raises(ValueError):
            parse_position(bad)


def test_run_info(tmp_path: Path) -> None:
    cfg = tmp_path / "job.toml"
    cfg.write_text("daq_job_type = 'test'\n")
    envs = make_envs(301)
    p0 = write(tmp_path / "p0.raw", envs[:200], part=0, snapshot=config_snapshot(cfg))
    time.sleep(0.002)
    p1 = write(tmp_path / "p1.raw", envs[200:], part=1)
    info = run_info([p1, p0])
    assert info["run"] == 5 and info["runs_in_headers"] == [5]
    assert info["records"] == 301 and info["rows"] == 151 * 2
    assert info["first_ns"] == T0 and info["last_ns"] == T0 + 300 * MS
    assert info["duration_s"] == pytest.approx(0.3)
    assert [p["path"] for p in info["parts"]] == [str(p0), str(p1)]
    assert all(p["index"]["complete"] for p in info["parts"])
    a, b = info["sources"]["a"], info["sources"]["b"]
    assert (a["messages"], a["rows"], a["kinds"]) == (151, 302, {"table": 151})
    assert (b["messages"], b["rows"], b["kinds"]) == (150, 0, {"raw": 150})
    assert a["schemas"] == ["i: int64, x: double"] and b["schemas"] == []
    assert (a["first_seq"], a["last_seq"], a["lost"]) == (0, 150, 0)
    assert info["config"]["files"] == {"job.toml": "daq_job_type = 'test'\n"}
    assert info["damage"] == []


def test_run_info_counts_gaps_schema_changes_and_damage(tmp_path: Path) -> None:
    envs = make_envs(100, sources=("a",))
    del envs[40:45]  # five messages lost upstream
    wide = Envelope(
        "data.a",
        Header(kind=Kind.TABLE, source="a", seq=100, time_ns=T0 + 100 * MS, epoch=T0 - 10**9),
        encode_table(pa.table({"i": pa.array([1], pa.int64()), "y": ["new"]})),
    )
    path = write(tmp_path / "r.raw", [*envs, wide])
    with open(path, "ab") as f:
        f.write(b"\x1eREC\x00\x00")  # a torn record at the end
    info = run_info([path])
    a = info["sources"]["a"]
    assert a["lost"] == 5 and a["messages"] == 96
    assert a["schemas"] == ["i: int64, x: double", "i: int64, y: string"]
    assert len(info["damage"]) == 1 and info["damage"][0]["record"] == 96


def test_verbatim_copy_is_byte_identical_and_loops_reencode(tmp_path: Path) -> None:
    from enrgdaq_core.stream import StreamWriter

    envs = make_envs(300)
    path = write(tmp_path / "r.raw", envs)
    head_size = Replay([path]).parts[0].head.size
    buf = io.BytesIO()
    w = StreamWriter(buf, header=False)
    sent: list[Envelope] = []
    result = Replay([path]).run(sent.append, verbatim=w.write_record, loop=True, count=450)
    assert result.messages == 450 and w.records == 300
    assert buf.getvalue() == path.read_bytes()[head_size:]  # the first pass, as read
    # the second pass changed the epoch, so it went through `send`, re-encoded
    assert len(sent) == 150 and all(e.header.epoch == envs[0].header.epoch + 1 for e in sent)
