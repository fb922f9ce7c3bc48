"""Every decoder and every store conversion, each driven by one input: what the fuzz suite runs.

Shared by the hypothesis suite (`_fuzz_worker.py`, crash-isolated by `test_fuzz.py`) and the
atheris target (`fuzz/atheris_decode.py`). A target returns normally for any input: an error of
the kinds the project counts (TableError, EnvelopeError, StreamError and its subclasses) is
the expected answer to bad bytes; anything else escapes, and a crash, a hang or a MemoryError
is a failure of the harness around it. docs/fuzzing.md says what each target covers.
"""

from __future__ import annotations

import io
import logging
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

from enrgdaq_core.alert_wire import Alert
from enrgdaq_core.envelope import Envelope, EnvelopeError, Kind, Source, decode_body
from enrgdaq_core.runfile import RunFileError, RunFileWriter, build_index, run_meta
from enrgdaq_core.stats import StatsReport
from enrgdaq_core.stream import StreamError, StreamReader, StreamWriter
from enrgdaq_core.tables import TableError, decode_table, encode_table

logging.getLogger("enrgdaq").setLevel(logging.CRITICAL)  # rejected rows are expected here

# -- what the stores do to a decoded table --------------------------------------------------


def _csv(table: pa.Table) -> None:
    import pyarrow.csv as pacsv

    from enrgdaq_core.stores.csv import csv_table

    pacsv.write_csv(csv_table(table), pa.BufferOutputStream())


def _columns(table: pa.Table) -> None:  # hdf5 and root
    from enrgdaq_core.stores._columns import column_data, plan_schema

    for i, plan in enumerate(plan_schema(table.schema)):
        data = column_data(plan, table.column(i))
        if data.offsets is not None:
            data.rows_of_jagged()


def _mysql(table: pa.Table) -> None:
    from enrgdaq_core.stores.mysql import _Counters, _encode, column_type

    counters = _Counters()
    for field, column in zip(table.schema, table.columns, strict=True):
        ct = column_type(field.type)
        if ct is not None:
            _encode(column.combine_chunks(), ct, counters)


def _redis(table: pa.Table) -> None:
    from enrgdaq_core.stores.redis import encode_column

    for column in table.columns:
        encode_column(column.combine_chunks())


CONVERSIONS: dict[str, Callable[[pa.Table], None]] = {
    "csv": _csv,
    "hdf5/root": _columns,
    "mysql": _mysql,
    "redis": _redis,
}


def conversions(table: pa.Table) -> None:
    """Each table store's conversion. An exception is a refusal the runner counts
    (`rejected_rows`), not a failure; MemoryError and RecursionError are failures."""
    for convert in CONVERSIONS.values():
        try:
            convert(table)
        except (MemoryError, RecursionError):
            raise
        except Exception:  # noqa: BLE001, S110 - counted as rejected rows by the runner
            pass


class Writers:
    """Real csv, hdf5 and root store runners writing into one directory, fed envelopes."""

    def __init__(self, out_dir: Path, backends: tuple[str, ...] = ("csv", "hdf5", "root")) -> None:
        from enrgdaq_core.stores.options import build_backend
        from enrgdaq_core.stores.runner import StoreRunner

        self.runners = []
        for name in backends:
            backend, _ = build_backend(name, flags={"out_dir": str(out_dir / name)})
            self.runners.append(StoreRunner(backend, name=f"fuzz-{name}"))
        self.sources = 0

    def write(self, table_payload: bytes) -> None:
        """One table message from a new source, then its end of stream (written, closed)."""
        self.sources += 1
        src = Source(f"s{self.sources}")
        env = Envelope(src.topic, src._header(Kind.TABLE, 0), table_payload)
        for runner in self.runners:
            runner.handle(env)
            runner.handle(src.end_of_stream())

    def close(self) -> None:
        for runner in self.runners:
            runner._shutdown()


# -- decoders -------------------------------------------------------------------------------


def payload(data: bytes) -> pa.Table | None:
    """An Arrow payload through decode_table and, if it decodes, every store conversion."""
    try:
        table = decode_table(data)
    except TableError:
        return None
    conversions(table)
    return table


def _envelope(env: Envelope) -> None:
    """What consumers do with a decoded envelope, by kind."""
    try:
        if env.kind is Kind.TABLE:
            conversions(env.table())
        elif env.kind is Kind.STATS:
            decode_body(env.payload, StatsReport)
        elif env.kind is Kind.ALERT:
            decode_body(env.payload, Alert)
        elif env.kind in (Kind.LOG, Kind.RUN):
            decode_body(env.payload)
    except EnvelopeError:
        pass


def stream(data: bytes) -> int:
    """A byte stream through the reader (pipes, `daq store -i -`); records read."""
    count = 0
    try:
        for rec in StreamReader(io.BytesIO(data)):
            count += 1
            _envelope(rec.envelope)
    except StreamError:
        pass
    return count


def frames(parts: list[bytes]) -> None:
    """ZeroMQ frames through the envelope decoder, as every subscriber receives them."""
    try:
        env = Envelope.from_frames(parts)
    except EnvelopeError:
        return
    _envelope(env)


def run_file(data: bytes, index: bytes | None, path: Path) -> int:
    """A run file (and its index) through replay with --ignore-damage, and build_index."""
    from enrgdaq_core.replay import Replay
    from enrgdaq_core.runfile import index_path

    path.write_bytes(data)
    ipath = index_path(path)
    if index is None:
        ipath.unlink(missing_ok=True)
    else:
        ipath.write_bytes(index)
    count = 0
    try:
        for _n, _part, rec in Replay([path], ignore_damage=True).records():
            count += 1
            _envelope(rec.envelope)
    except RunFileError:
        return count
    try:
        build_index(path)
    except RunFileError:
        pass
    return count


# -- seeds: valid inputs the mutations start from ---------------------------------------------


def seed_tables() -> dict[str, pa.Table]:
    """Tables of every type family the stores meet (and some they should refuse politely)."""
    import pyarrow.compute as pc

    n3 = [1, None, 3]
    return {
        "numbers": pa.table(
            {
                "i": pa.array(n3, pa.int64()),
                "u": pa.array([1, 2, None], pa.uint8()),
                "f": pa.array([1.5, None, float("nan")], pa.float32()),
                "b": pa.array([True, None, False]),
            }
        ),
        "text": pa.table({"s": ["x", None, "zz"], "bin": pa.array([b"a", None, b"ccc"])}),
        "times": pa.table(
            {
                "t": pa.array(n3, pa.timestamp("ns", tz="UTC")),
                "d": pa.array(n3, pa.date32()),
                "dur": pa.array(n3, pa.duration("us")),
                "tm": pa.array(n3, pa.time64("ns")),
            }
        ),
        "waveforms": pa.table(
            {
                "w": pa.array([[1, 2], [3, 4], None], pa.list_(pa.int16(), 2)),
                "v": pa.array([[1.0], None, [2.0, 3.0]], pa.list_(pa.float32())),
            }
        ),
        "categories": pa.table({"c": pa.array(["on", "off", None]).dictionary_encode()}),
        "nested": pa.table(
            {
                "st": pa.array([{"x": 1, "y": "a"}, None, {"x": 2, "y": None}]),
                "m": pa.array([[("a", 1)], None, [("b", 2)]], pa.map_(pa.string(), pa.int32())),
                "ll": pa.array([["a"], [], None], pa.large_list(pa.large_string())),
            }
        ),
        "exotic": pa.table(
            {
                "sv": pa.array(
                    ["short", "a string longer than twelve bytes", None], pa.string_view()
                ),
                "ree": pc.run_end_encode(pa.array([1, 1, 2], pa.int32())),
                "dec": pa.array([1, None, 3], pa.decimal128(10, 2)),
                "n": pa.nulls(3),
            }
        ),
        "union": pa.table(
            {
                "u": pa.UnionArray.from_sparse(
                    pa.array([0, 1, 0], pa.int8()), [pa.array([1, 2, 3]), pa.array(["a", "b", "c"])]
                )
            }
        ),
    }


def seed_payloads() -> dict[str, bytes]:
    out = {name: encode_table(t) for name, t in seed_tables().items()}
    sink = pa.BufferOutputStream()  # a compressed body: enrgdaq never writes one, others may
    options = pa.ipc.IpcWriteOptions(compression="zstd")
    with pa.ipc.new_stream(sink, seed_tables()["numbers"].schema, options=options) as w:
        w.write_table(seed_tables()["numbers"])
    out["compressed"] = sink.getvalue().to_pybytes()
    return out


def seed_envelopes() -> list[Envelope]:
    """One source's messages of every kind, as a job, a store and a supervisor send them."""
    src = Source("seed", store={"csv": {"file_path": "x.csv"}}, run=3, tag="t")
    envs = [src.table(t) for t in list(seed_tables().values())[:4]]
    envs.append(src.raw(b"\x00\x01raw bytes"))
    envs.append(src.control(Kind.STATS, "stats.seed", {"piece": "seed", "kind": "job"}))
    envs.append(src.control(Kind.LOG, "log.seed", {"level": "INFO", "message": "hi"}))
    envs.append(src.end_of_stream())
    return envs


def seed_stream() -> bytes:
    buf = io.BytesIO()
    writer = StreamWriter(buf, {"writer": "fuzz", "run": 3})
    for env in seed_envelopes():
        writer.write(env)
    return buf.getvalue()


def seed_run_file(path: Path) -> tuple[bytes, bytes]:
    """A run file of the seed envelopes with its index (small blocks: several entries)."""
    from enrgdaq_core.runfile import index_path

    writer = RunFileWriter(path, run_meta(run=3, run_start_ns=1), overwrite=True, block_records=2)
    for env in seed_envelopes():
        writer.write(env)
    writer.close()
    return path.read_bytes(), index_path(path).read_bytes()


# -- mutations: the same few moves for every kind of input ----------------------------------

INTERESTING = [0, 1, -1, 2, 7, 8, 16, 255, 2**31 - 1, -(2**31), 2**32 - 1, 2**62, -(2**63)]


def mutate(data: bytes, moves: list[tuple[int, int, int]]) -> bytes:
    """Apply (move, position, value) triples: 0 set a byte, 1 write an int32, 2 an int64,
    3 cut the input there, 4 insert a copy of the 64 bytes at `value`, 5 delete 8 bytes."""
    out = bytearray(data)
    for move, pos, value in moves:
        if not out:
            break
        pos %= len(out)
        if move == 0:
            out[pos] = value & 0xFF
        elif move in (1, 2):
            v = INTERESTING[value % len(INTERESTING)] if value < 1000 else value
            fmt = "<i" if move == 1 else "<q"
            size = struct.calcsize(fmt)
            lo, hi = -(2 ** (8 * size - 1)), 2 ** (8 * size - 1) - 1
            if pos + size <= len(out):
                struct.pack_into(fmt, out, pos, max(lo, min(hi, v)))
        elif move == 3:
            del out[pos:]
        elif move == 4:
            at = value % len(out)
            out[pos:pos] = out[at : at + 64]
        else:
            del out[pos : pos + 8]
    return bytes(out)


def length_lies(data: bytes, picks: list[tuple[int, int]]) -> bytes:
    """Set Arrow length fields (row counts, node lengths, null counts, buffer offsets and
    lengths, body lengths) of a payload to interesting values: the lies of issue 15."""
    from ipc_mutations import length_slots, with_value

    slots = length_slots(data)
    for slot_pick, value_pick in picks:
        if not slots:
            break
        slot = slots[slot_pick % len(slots)]
        old = slot.value(data)
        choices = [*INTERESTING, old + 1, old - 1, old + 8, old * 2, -old, 1 << 40]
        value = max(-(2**63), min(2**63 - 1, choices[value_pick % len(choices)]))
        data = with_value(data, slot, value)
    return data


def describe(value: Any) -> str:
    """An input as text for a failure report (bytes as hex)."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(describe(v) for v in value) + "]"
    return repr(value)
