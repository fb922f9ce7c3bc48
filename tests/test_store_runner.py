"""The store runner in-process, against a recording backend: batching, errors, retries, names."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pytest

from _store_data import ListInput, sample_table
from enrgdaq_core.envelope import Envelope, Kind, Source
from enrgdaq_core.signals import StopFlag
from enrgdaq_core.store_config import CSVStoreConfig
from enrgdaq_core.stores import runner as runner_mod
from enrgdaq_core.stores.base import (
    Backend,
    Destination,
    StoreOptions,
    TableBackend,
    TableWriter,
    TransientError,
)
from enrgdaq_core.stores.paths import (
    CannotAppend,
    file_path,
    next_part,
    open_series,
    parts,
    split_name,
)
from enrgdaq_core.stores.runner import StoreRunner
from enrgdaq_core.timefmt import parse_period


class Recorder(TableWriter):
    def __init__(self, backend: RecordingBackend, dest: Destination) -> None:
        self.backend = backend
        self.dest = dest
        self.tables: list[pa.Table] = []
        self.closed = False

    def write(self, table: pa.Table) -> None:
        fail = self.backend.fail_next
        if fail is not None:
            self.backend.fail_next = None
            raise fail
        if "poison" in table.column_names:
            raise ValueError("cannot store a poison column")
        self.tables.append(table)
        self.backend.writes.append((self.dest.source, table.num_rows))

    def size(self) -> int:
        return sum(t.nbytes for t in self.tables)

    def close(self) -> None:
        self.closed = True


class RecordingBackend(TableBackend):
    name = "csv"  # reads the csv settings from headers
    extension = ".rec"
    Settings = CSVStoreConfig
    default_flush_rows = 250
    default_flush_seconds = 60.0
    opened: ClassVar[list[Destination]]

    def __init__(self, options: StoreOptions | None = None) -> None:
        super().__init__(options or StoreOptions())
        self.opened = []
        self.writers: list[Recorder] = []
        self.writes: list[tuple[str, int]] = []
        self.fail_next: Exception | None = None

    def open(self, dest: Destination, schema: pa.Schema | None) -> TableWriter:
        self.opened.append(
            Destination(
                dest.source,
                dest.settings,
                path=dest.path,
                overwrite=dest.overwrite,
                append=dest.append,
            )
        )
        w = Recorder(self, dest)
        self.writers.append(w)
        return w

    def rows(self) -> list[int]:
        return [v for w in self.writers for t in w.tables for v in t["i64"].to_pylist()]


def i64(start: int, rows: int) -> list[int]:
    return pa.Table.from_batches([sample_table(start, rows).to_batches()[0]])["i64"].to_pylist()


def make(tmp_path: Path, **options: Any) -> tuple[StoreRunner, RecordingBackend]:
    be = RecordingBackend(StoreOptions(out_dir=str(tmp_path), **options))
    return StoreRunner(be, name="t"), be


def test_one_row_messages_become_few_writes(tmp_path: Path) -> None:
    runner, be = make(tmp_path)
    src = Source("s", store={"csv": {}})
    envs = [src.table(sample_table(i, 1)) for i in range(1000)] + [src.end_of_stream()]
    result = runner.run(ListInput(envs), StopFlag())
    assert be.writes == [("s", 250)] * 4
    assert be.rows() == i64(0, 1000)
    assert result.failed_rows == 0 and runner.meter.rows_out == 1000
    assert all(w.closed for w in be.writers)


def test_source_settings_and_flags_set_the_batch(tmp_path: Path) -> None:
    runner, be = make(tmp_path)
    src = Source("s", store={"csv": {"flush_rows": 30}})
    for i in range(100):
        runner.handle(src.table(sample_table(i, 1)))
    assert [n for _, n in be.writes] == [30, 30, 30]  # the source's flush_rows
    runner, be = make(tmp_path, flush_rows=50)  # a flag wins over the source's setting
    for i in range(100):
        runner.handle(src.table(sample_table(i, 1)))
    assert [n for _, n in be.writes] == [50, 50]


def test_flush_by_age_and_by_size(tmp_path: Path) -> None:
    runner, be = make(tmp_path, flush_seconds=0.05)
    src = Source("s", store={"csv": {}})
    runner.handle(src.table(sample_table(0, 3)))
    runner.tick()
    assert be.writes == []
    time.sleep(0.06)  # let the buffered rows age past flush_seconds
    runner.tick()
    assert be.writes == [("s", 3)]
    runner, be = make(tmp_path, flush_mb=0.01)
    big = sample_table(0, 200)
    runner.handle(src.table(big))  # one message over 10 kB: written at once
    assert be.writes == [("s", 200)]


def test_os_error_keeps_rows_and_retries_into_a_new_file(tmp_path: Path) -> None:
    runner, be = make(tmp_path, flush_rows=10)
    src = Source("s", store={"csv": {"file_path": "x.rec"}})
    be.fail_next = OSError(28, "No space left on device")
    for i in range(10):
        runner.handle(src.table(sample_table(i, 1)))
    assert be.writes == [] and runner.pending_rows == 10 and runner.write_errors == 1
    assert be.writers[0].closed  # a file that failed mid-write is not appended to
    runner._slots[("s", 0)].retry_at = time.monotonic() - 1  # the backoff has passed
    runner.tick()
    assert be.rows() == i64(0, 10)
    assert [d.append for d in be.opened] == [True, False]


def test_rejected_rows_are_counted_and_the_rest_written(tmp_path: Path) -> None:
    runner, be = make(tmp_path, flush_rows=1)
    src = Source("s", store={"csv": {}})
    runner.handle(src.table(sample_table(0, 5)))
    poison = sample_table(5, 5).append_column("poison", pa.array([1] * 5))
    runner.handle(src.table(poison))
    runner.handle(src.table(sample_table(10, 5)))
    assert runner.rejected_rows == 5
    assert be.rows() == i64(0, 5) + i64(10, 5)
    assert runner.pending_rows == 0


def test_transient_failure_then_give_up_at_shutdown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner_mod, "SHUTDOWN_RETRY_SECONDS", 0.3)
    monkeypatch.setattr(runner_mod, "RETRY_FIRST", 0.05)

    class Down(RecordingBackend):
        def open(self, dest: Destination, schema: pa.Schema | None) -> TableWriter:
            raise TransientError("server down")

    be = Down(StoreOptions(flush_rows=5))
    runner = StoreRunner(be, name="t")
    src = Source("s", store={"csv": {}})
    envs = [src.table(sample_table(i, 1)) for i in range(12)]
    result = runner.run(ListInput(envs), StopFlag())
    assert result.failed_rows == 12 and runner.retries >= 2


def test_backpressure_stops_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner_mod, "SHUTDOWN_RETRY_SECONDS", 0.1)

    class Down(RecordingBackend):
        def open(self, dest: Destination, schema: pa.Schema | None) -> TableWriter:
            raise TransientError("server down")

    be = Down(StoreOptions(flush_rows=5, max_pending_rows=20))
    runner = StoreRunner(be, name="t")
    src = Source("s", store={"csv": {}})
    inp = ListInput([src.table(sample_table(i, 1)) for i in range(100)])
    stop = StopFlag()
    timer = threading.Timer(0.5, stop.set)  # the runner stalls; stop it from outside
    timer.start()
    result = runner.run(inp, stop)
    timer.join()
    assert len(inp.envs) == 80  # it read 20 rows (max_pending_rows), then waited
    assert result.failed_rows == 20


def test_bad_and_wrong_kind_messages(tmp_path: Path) -> None:
    runner, be = make(tmp_path, flush_rows=1)
    src = Source("s", store={"csv": {}})
    runner.handle(src.raw(b"bytes for a table store"))
    broken = src.table(sample_table(0, 2))
    broken.payload, broken._table = b"\xff" * 30, None
    runner.handle(broken)
    odd = src.table(sample_table(0, 2))
    odd.header.store = {"csv": {"no_such_key": 1}}  # settings that do not validate
    runner.handle(odd)
    runner.handle(src.table(sample_table(2, 2)))
    assert runner.bad_messages == 3 and runner.wrong_kind == 1
    assert be.rows() == i64(2, 2)


def test_overwrite_applies_once_per_file(tmp_path: Path) -> None:
    """The store's own `overwrite_sources` truncates a source's file once per process."""
    runner, be = make(tmp_path, flush_rows=1, overwrite_sources=["s"])
    src = Source("s", store={"csv": {"file_path": "o.rec"}})
    runner.handle(src.table(sample_table(0, 1)))
    runner.handle(src.end_of_stream())
    runner.handle(src.table(sample_table(1, 1)))  # the source is back: same file, appended
    assert [d.overwrite for d in be.opened] == [True, False]


def test_overwrite_from_a_header_is_ignored(tmp_path: Path) -> None:
    """A message cannot make a store truncate a file: only the store's own settings can."""
    runner, be = make(tmp_path, flush_rows=1)
    src = Source("s", store={"csv": {"file_path": "o.rec", "overwrite": True}})
    runner.handle(src.table(sample_table(0, 1)))
    assert [d.overwrite for d in be.opened] == [False]
    flagged = StoreRunner(be, name="t", settings_override={"overwrite": True})  # -O overwrite
    flagged.handle(src.table(sample_table(1, 1)))
    assert [d.overwrite for d in be.opened] == [False, True]


def test_schema_change_asks_the_writer(tmp_path: Path) -> None:
    class Strict(RecordingBackend):
        def open(self, dest: Destination, schema: pa.Schema | None) -> TableWriter:
            w = super().open(dest, schema)
            w.accepts = lambda s, first=schema: s.equals(first)  # type: ignore[method-assign]
            return w

    be = Strict(StoreOptions(out_dir=str(tmp_path), flush_rows=1))
    runner = StoreRunner(be, name="t")
    src = Source("s", store={"csv": {}})
    runner.handle(src.table(sample_table(0, 2)))
    runner.handle(src.table(sample_table(2, 2).append_column("x", pa.array([1, 2]))))
    assert runner.schema_changes == 1
    assert [d.append for d in be.opened] == [True, False]  # a new file, never an append
    assert be.writers[0].closed


def test_report_has_every_figure(tmp_path: Path) -> None:
    runner, be = make(tmp_path, flush_rows=5)
    sent: list[Envelope] = []

    class Telemetry:
        def send(self, env: Envelope) -> None:
            sent.append(env)

    runner.telemetry = Telemetry()  # type: ignore[assignment]
    src = Source("s", store={"csv": {}})
    for i in range(7):
        runner.handle(src.table(sample_table(i, 1)))
    runner.report()
    from enrgdaq_core.envelope import decode_body
    from enrgdaq_core.stats import StatsReport

    report = decode_body(sent[-1].payload, StatsReport)
    assert report.rows_in == 7 and report.rows_out == 5 and report.bytes_out > 0
    extra = report.extra
    for key in (
        "files",
        "files_opened",
        "writes",
        "flush_ms",
        "flush_ms_max",
        "pending_rows",
        "pending_mb",
        "retries",
        "write_errors",
        "rejected_rows",
        "bad_messages",
        "schema_changes",
        "rotations",
        "rows_by_source",
        "lost_by_source",
    ):
        assert key in extra, key
    assert extra["pending_rows"] == 2 and extra["writes"] == 1
    assert extra["files"] == [str((tmp_path / "s.rec").absolute())]


# -- file names ----------------------------------------------------------------------------


def test_split_name_keeps_compressed_extensions() -> None:
    assert split_name("sensor.csv.zst") == ("sensor", ".csv.zst")
    assert split_name("run.root") == ("run", ".root")
    assert split_name("a.b.csv.gz") == ("a.b", ".csv.gz")
    assert split_name("noext") == ("noext", "")


def test_file_path_placeholders_date_tag_and_compression(monkeypatch: pytest.MonkeyPatch) -> None:
    """Names carry local time (docs/operations.md, Times), with the offset in a stamp."""
    import time as _time

    monkeypatch.setenv("TZ", "XYZ-1")  # UTC+01:00 (POSIX counts west of Greenwich)
    _time.tzset()
    now = 1_764_025_200.0  # 2025-11-24T23:00:00Z: already the 25th in UTC+01:00
    p = file_path("{source}_{run}.csv", source="s1", extension=".csv", run=42, now=now)
    assert p == Path("s1_000042.csv")
    p = file_path("sensor.csv", source="s", extension=".csv.zst", add_date=True, tag="cal", now=now)
    assert p == Path("sensor_cal_2025-11-25.csv.zst")
    p = file_path("", source="s", extension=".h5", rotating=True, out_dir="/d", now=now)
    assert p == Path("/d/s_20251125T000000+0100.h5")
    assert file_path("x.txt", source="s", extension=".csv", now=now) == Path("x.txt")
    monkeypatch.undo()
    _time.tzset()


def test_parts_sort_after_the_file_they_follow(tmp_path: Path) -> None:
    base = tmp_path / "s_20251124T160000Z.csv.zst"
    assert next_part(base) == base
    base.write_text("x")
    names = [base]
    for _ in range(3):
        p = next_part(base)
        p.write_text("x")
        names.append(p)
    assert names[1].name == "s_20251124T160000Z_part001.csv.zst"
    later = tmp_path / "s_20251124T160001Z.csv.zst"
    assert sorted([later, *reversed(names)]) == [*names, later]
    assert parts(base) == names


def test_parse_period() -> None:
    assert parse_period("90s") == 90 and parse_period("1h") == 3600 and parse_period("") == 0
    with pytest.raises(ValueError, match="period"):
        parse_period("soon")


def test_end_of_stream_with_bad_settings_is_counted_not_fatal(tmp_path: Path) -> None:
    """A store that records end-of-stream (the raw store) must survive a source whose
    settings do not validate: its data was counted as bad, and so is its end."""
    be = RecordingBackend(StoreOptions(out_dir=str(tmp_path), flush_rows=1))
    be.kinds = be.kinds | {Kind.EOS}  # instance attribute: the class stays as it was
    runner = StoreRunner(be, name="t")
    src = Source("s", store={"csv": {"no_such_key": 1}})
    runner.handle(src.table(sample_table(0, 2)))
    runner.handle(src.end_of_stream())
    assert runner.bad_messages == 2 and be.rows() == []


def test_exit_on_eos_waits_for_every_named_source(tmp_path: Path) -> None:
    """`--from data.a --from data.b --exit-on-eos`: a's end must not end the store while b,
    slower to start, has not spoken yet."""
    a, b = Source("a", store={"csv": {}}), Source("b", store={"csv": {}})
    envs = [a.table(sample_table(0, 2)), a.end_of_stream(), b.table(sample_table(2, 2))]
    envs.append(b.end_of_stream())

    runner, be = make(tmp_path, flush_rows=1)
    runner.run(ListInput(list(envs)), StopFlag(), exit_on_eos=True)
    assert be.rows() == i64(0, 2)  # without the names, a's end was taken as the end

    runner, be = make(tmp_path, flush_rows=1)
    runner.expect_sources(["data.a", "data.b", "data.", "stats.x"])
    runner.run(ListInput(list(envs)), StopFlag(), exit_on_eos=True)
    assert be.rows() == i64(0, 4)


def test_open_series_truncates_appends_or_starts_the_next_part(tmp_path: Path) -> None:
    """The one rule of every file backend: overwrite, append to the last part, or a new part
    when asked (append=False) or when the opener refuses to append."""
    import logging

    log = logging.getLogger("t")
    opened: list[tuple[str, bool]] = []
    refuse: set[str] = set()

    def open_file(p: Path, create: bool) -> Path:
        if not create and p.name in refuse:
            raise CannotAppend("left by a crash")
        opened.append((p.name, create))
        p.touch()
        return p

    base = tmp_path / "s.csv"

    def series(**kw: bool) -> str:
        return open_series(base, open_file=open_file, log=log, **kw).name  # type: ignore[arg-type]

    assert series(overwrite=False, append=True) == "s.csv"  # nothing there: created
    assert series(overwrite=False, append=True) == "s.csv"  # appended
    assert series(overwrite=False, append=False) == "s_part001.csv"  # a new file wanted
    assert series(overwrite=False, append=True) == "s_part001.csv"  # the last part
    refuse.add("s_part001.csv")
    assert series(overwrite=False, append=True) == "s_part002.csv"
    assert series(overwrite=True, append=True) == "s.csv"
    assert opened == [
        ("s.csv", True),
        ("s.csv", False),
        ("s_part001.csv", True),
        ("s_part001.csv", False),
        ("s_part002.csv", True),
        ("s.csv", True),
    ]


def test_a_backend_is_a_table_or_an_envelope_backend() -> None:
    class Neither(Backend):
        Settings = CSVStoreConfig

    with pytest.raises(TypeError, match="TableBackend or EnvelopeBackend"):
        StoreRunner(Neither(StoreOptions()), name="t")


def test_sources_sharing_a_file_rotate_together(tmp_path: Path) -> None:
    """Rotation has one owner, the runner: when the file two sources share is due, both move
    to the same next file; a source that joins later writes the current one."""
    runner, be = make(tmp_path, flush_rows=1)
    settings = {"csv": {"file_path": "shared.rec", "rotate": "1h"}}
    a, b, c = (Source(n, store=settings) for n in "abc")
    runner.handle(a.table(sample_table(0, 1)))
    runner.handle(b.table(sample_table(1, 1)))
    first = {w.dest.path for w in be.writers}
    assert len(first) == 1
    for slot in runner._slots.values():  # an hour has passed for this file
        slot.dest.opened_at -= 3600
    runner._series[next(iter(runner._series))].opened_at -= 3600
    runner.handle(a.table(sample_table(2, 1)))  # a's write makes the file due: both rotate
    assert runner.rotations == 1
    assert all(w.closed for w in be.writers[:2])
    runner.handle(b.table(sample_table(3, 1)))
    runner.handle(c.table(sample_table(4, 1)))
    second = {w.dest.path for w in be.writers[2:]}
    assert len(second) == 1  # one next file (named by the rotation time) for both
    assert [d.append for d in be.opened] == [True, True, False, False]  # b, c: a new file


def _as_received(env: Envelope) -> Envelope:
    """The envelope as a store receives it: only the bytes, nothing decoded yet."""
    return Envelope(env.topic, env.header, bytes(env.payload))


def test_held_rows_are_written_before_a_new_schema_is_decoded(tmp_path: Path) -> None:
    """Decoding a schema never seen is the riskiest step: what the store holds is written
    first, so a crash there would cost nothing already received. Known schemas still batch."""
    runner, be = make(tmp_path)
    src = Source("s", store={"csv": {}})
    for i in range(5):
        runner.handle(_as_received(src.table(sample_table(i, 1))))
    assert be.writes == []  # one schema: batched (the first was new, but nothing was held)
    other = Source("o", store={"csv": {}})
    runner.handle(_as_received(other.table(pa.table({"x": pa.array([1.5], pa.float64())}))))
    assert be.writes == [("s", 5)]  # s's held rows went out before o's schema was decoded


@pytest.mark.parametrize("first_seq", [0, 7])
def test_a_store_killed_before_its_first_write_counts_what_it_never_wrote(
    tmp_path: Path, first_seq: int
) -> None:
    """The state mark is written on a source's first receipt, not only after a flush: a store
    that dies holding rows it never wrote (a kill -9 before its first write) leaves a mark, and
    its next process counts those rows as lost (issue 16)."""
    from enrgdaq_core.stores.base import StoreOptions
    from enrgdaq_core.stores.memory import MemoryBackend

    src = Source("s")
    envs = [src.table(sample_table(i, 1)) for i in range(30)]
    state = tmp_path / "state.json"
    killed = StoreRunner(
        MemoryBackend(StoreOptions(flush_rows=1000, flush_seconds=3600)),
        name="m",
        state_file=state,
    )
    for env in envs[first_seq:12]:  # received (the store joined at first_seq), never written
        killed.handle(env)
    assert killed.meter.rows_out == 0 and killed.pending_rows == 12 - first_seq
    # no shutdown: the process is gone; the next one reads its state file
    backend = MemoryBackend()
    again = StoreRunner(backend, name="m", state_file=state)
    again.run(ListInput(envs[15:]), StopFlag())
    stored = len(backend.table("s"))
    assert stored == 15
    # joined at first_seq: numbers before it were never ours; 12..14 were never received
    assert again.meter.sequences.lost == {"s": 15 - first_seq}
    assert stored + again.meter.sequences.total_lost == len(envs) - first_seq
