"""The byte-stream carrier: exact round trips, and damage reported at the right byte and record."""

from __future__ import annotations

import io
import struct
import sys
import types
import zlib
from pathlib import Path

import msgspec
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arrow_strategies import raw_envelopes, table_envelopes
from enrgdaq_core.envelope import (
    HEADER_MAX_BYTES,
    Envelope,
    EnvelopeError,
    Header,
    Kind,
    Source,
    decode_header,
)
from enrgdaq_core.stream import (
    MAGIC,
    MAX_BODY,
    MAX_META,
    RECORD_MARKER,
    VERSION,
    Record,
    StreamDamage,
    StreamError,
    StreamReader,
    StreamWriter,
    file_header,
    read_envelopes,
    record_bytes,
)


def write_stream(envs: list[Envelope], meta: dict | None = None) -> tuple[bytes, list[int]]:
    buf = io.BytesIO()
    writer = StreamWriter(buf, meta)
    offsets = [writer.write(e) for e in envs]
    assert writer.bytes_written == len(buf.getvalue())
    return buf.getvalue(), offsets


def read_until_damage(data: bytes) -> tuple[list[Record], StreamError | None]:
    """Every record the reader hands over, and the error it stopped with (None: clean end)."""
    got: list[Record] = []
    try:
        for rec in StreamReader(io.BytesIO(data)):
            got.append(rec)
    except StreamError as exc:
        return got, exc
    return got, None


def small_stream() -> tuple[bytes, list[int], list[Envelope]]:
    src = Source("sensor1", store={"csv": {"file_path": "x.csv"}})
    envs = [
        src.table(pa.table({"t": pa.array([1, 2], pa.int64()), "v": [0.5, None]})),
        src.raw(b"\x00\x01payload\xff"),
        src.table(pa.table({"w": pa.array([[1, 2, 3]], pa.list_(pa.int16(), 3))})),
        src.end_of_stream(),
    ]
    data, offsets = write_stream(envs, {"run": 42})
    return data, offsets, envs


def same(a: Envelope, b: Envelope) -> bool:
    return a.topic == b.topic and a.header == b.header and bytes(a.payload) == bytes(b.payload)


@settings(max_examples=60, deadline=None)
@given(st.lists(table_envelopes(), min_size=1, max_size=5))
def test_tables_round_trip_through_the_stream(cases: list[tuple[Envelope, pa.Table]]) -> None:
    data, offsets = write_stream([env for env, _ in cases])
    records = list(StreamReader(io.BytesIO(data)))
    assert [r.offset for r in records] == offsets
    assert [r.index for r in records] == list(range(len(cases)))
    for rec, (env, table) in zip(records, cases, strict=True):
        assert same(rec.envelope, env)
        assert rec.envelope.table().equals(table)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(raw_envelopes(), max_size=6),
    st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**63 - 1)),
)
def test_raw_round_trip_and_meta(envs: list[Envelope], meta: dict[str, int]) -> None:
    data, _ = write_stream(envs, meta)
    reader = StreamReader(io.BytesIO(data))
    got = [r.envelope for r in reader]
    assert len(got) == len(envs) and all(same(a, b) for a, b in zip(got, envs, strict=True))
    assert {k: v for k, v in reader.meta.meta.items() if k != "created_ns"} == {
        k: v for k, v in meta.items() if k != "created_ns"
    }


def test_meta_and_clean_end() -> None:
    data, offsets, envs = small_stream()
    reader = StreamReader(io.BytesIO(data))
    assert reader.meta.run == 42 and reader.meta.version == VERSION
    assert reader.meta.size == offsets[0]
    assert [r.envelope.kind for r in reader] == [Kind.TABLE, Kind.RAW, Kind.TABLE, Kind.EOS]
    assert [e.header.seq for e in read_envelopes(io.BytesIO(data))] == [0, 1, 2, 3]


def test_torn_tail_at_every_byte_of_the_last_record() -> None:
    data, offsets, envs = small_stream()
    last = offsets[-1]
    for cut in range(last, len(data)):
        got, err = read_until_damage(data[:cut])
        assert [r.envelope.header.seq for r in got] == [0, 1, 2], cut
        assert all(same(r.envelope, e) for r, e in zip(got, envs, strict=False))
        if cut == last:
            assert err is None  # the stream ends between records: nothing is torn
            continue
        assert isinstance(err, StreamDamage), cut
        assert (err.offset, err.record) == (last, 3), cut
        assert err.reason.startswith("truncated record"), cut
        assert str(err).endswith(f"at byte {last} (record 3)")


def test_torn_tail_of_a_big_record() -> None:
    src = Source("digi")
    envs = [src.raw(bytes(range(256)) * 64) for _ in range(3)]
    data, offsets = write_stream(envs)
    got, err = read_until_damage(data[:-1])
    assert len(got) == 2 and isinstance(err, StreamDamage)
    assert str(err) == (
        f"truncated record (wanted {len(data) - offsets[2] - 12} bytes, got "
        f"{len(data) - offsets[2] - 13}) at byte {offsets[2]} (record 2)"
    )


def test_every_bit_flip_in_a_record_is_caught_at_that_record() -> None:
    data, offsets, envs = small_stream()
    start, end = offsets[1], offsets[2]
    reasons = set()
    for pos in range(start, end):
        for bit in range(8):
            damaged = bytearray(data)
            damaged[pos] ^= 1 << bit
            got, err = read_until_damage(bytes(damaged))
            assert len(got) == 1 and same(got[0].envelope, envs[0]), (pos, bit)
            assert isinstance(err, StreamDamage), (pos, bit)
            assert (err.offset, err.record) == (start, 1), (pos, bit)
            reasons.add(" ".join(err.reason.split()[:2]))
    # every way a flip can show: marker, length too big for the stream or for any record,
    # and (most) the checksum
    assert reasons == {
        "bad record",
        "impossible record",
        "truncated record",
        "record checksum",
    }


def test_payload_corruption_message_names_byte_and_record() -> None:
    data, offsets, _ = small_stream()
    damaged = bytearray(data)
    damaged[offsets[2] - 3] ^= 0x40  # inside the raw payload of record 1
    got, err = read_until_damage(bytes(damaged))
    assert len(got) == 1
    assert str(err) == f"record checksum mismatch at byte {offsets[1]} (record 1)"


def test_garbage_after_the_last_record() -> None:
    data, offsets, _ = small_stream()
    got, err = read_until_damage(data + b"\x00" * 40)
    assert len(got) == 4
    assert str(err) == f"bad record marker at byte {len(data)} (record 4)"


def test_header_of_a_record_that_decodes_badly() -> None:
    """Valid CRC over a body whose envelope header is not ours: damage, not a crash."""
    topic, header = b"data.x", b"\xc1"  # 0xc1 is never valid msgpack
    body = struct.pack("<HI", len(topic), len(header)) + topic + header
    record = struct.pack("<4sII", RECORD_MARKER, len(body), zlib.crc32(body)) + body
    got, err = read_until_damage(file_header() + record)
    assert got == [] and isinstance(err, StreamDamage)
    assert err.reason.startswith("undecodable record (undecodable header")
    assert (err.offset, err.record) == (len(file_header()), 0)


def test_record_whose_inner_lengths_overrun_its_body() -> None:
    """A well-checksummed record from a buggy writer: the lengths inside must add up."""
    topic, header = b"data.x", b"\x80"
    body = struct.pack("<HI", len(topic), 50) + topic + header
    record = struct.pack("<4sII", RECORD_MARKER, len(body), zlib.crc32(body)) + body
    got, err = read_until_damage(file_header() + record)
    assert got == [] and isinstance(err, StreamDamage)
    assert err.reason == (
        "undecodable record (topic (6) and header (50) lengths exceed the record body)"
    )


def test_writer_refuses_what_no_reader_would_accept() -> None:
    from enrgdaq_core.envelope import EnvelopeError

    writer = StreamWriter(io.BytesIO())
    with pytest.raises(EnvelopeError, match="a record holds a topic of at most 65535 bytes"):
        writer.write(Envelope("t" * 70000, Source("s").raw(b"").header, b""))
    assert writer.records == 0


def test_not_a_stream() -> None:
    with pytest.raises(StreamError, match=r"^empty stream: no file header$"):
        StreamReader(io.BytesIO(b""))
    with pytest.raises(StreamError) as exc:
        StreamReader(io.BytesIO(b"timestamp,ch0\n1,2\n3,4\n"))
    assert str(exc.value) == (
        "not an enrgdaq stream (expected magic b'\\x89EDAQ\\r\\n\\x1a' at byte 0, got b'timestam')"
    )
    assert not isinstance(exc.value, StreamDamage)


def test_newer_stream_version_is_refused() -> None:
    meta = msgspec.msgpack.encode({})
    head = struct.pack("<8sHHII", MAGIC, VERSION + 1, 0, len(meta), zlib.crc32(meta)) + meta
    with pytest.raises(StreamError) as exc:
        StreamReader(io.BytesIO(head))
    assert str(exc.value) == (
        f"stream version {VERSION + 1} at byte 0 is newer than this reader ({VERSION})"
    )


def test_torn_or_corrupt_file_header() -> None:
    head = file_header({"run": 1})
    for cut in range(1, len(head)):
        with pytest.raises(StreamDamage) as exc:
            StreamReader(io.BytesIO(head[:cut]))
        assert str(exc.value) == "truncated file header at byte 0 (record 0)", cut
    damaged = bytearray(head)
    damaged[-1] ^= 1
    with pytest.raises(StreamDamage, match=r"^file header checksum mismatch at byte 0"):
        StreamReader(io.BytesIO(bytes(damaged)))


def test_concatenated_streams_read_as_one() -> None:
    """`cat a.raw b.raw`: one reader, record numbers continue, the second meta takes over."""
    a, a_offsets, envs_a = small_stream()
    src = Source("other")
    envs_b = [src.raw(b"b0"), src.raw(b"b1")]
    b, b_offsets = write_stream(envs_b, {"run": 43})
    reader = StreamReader(io.BytesIO(a + b))
    records = list(reader)
    assert all(same(r.envelope, e) for r, e in zip(records, envs_a + envs_b, strict=True))
    assert [r.index for r in records] == list(range(6))
    assert [r.offset for r in records] == a_offsets + [len(a) + o for o in b_offsets]
    assert reader.meta.run == 43


def test_concatenated_stream_torn_in_its_file_header() -> None:
    a, _, _ = small_stream()
    b, b_offsets = write_stream([Source("other").raw(b"b0")], {"run": 43})
    for cut in range(12, b_offsets[0]):  # a shorter tail is a torn record header instead
        got, err = read_until_damage(a + b[:cut])
        assert len(got) == 4, cut
        assert str(err) == f"truncated file header at byte {len(a)} (record 4)", cut


def test_concatenated_stream_of_a_newer_version() -> None:
    a, _, _ = small_stream()
    meta = msgspec.msgpack.encode({})
    head = struct.pack("<8sHHII", MAGIC, VERSION + 1, 0, len(meta), zlib.crc32(meta)) + meta
    got, err = read_until_damage(a + head)
    assert len(got) == 4 and type(err) is StreamError
    assert (
        str(err) == f"stream version {VERSION + 1} at byte {len(a)} is newer than this reader (1)"
    )


def test_stream_without_file_header() -> None:
    """Record-only streams (a writer with header=False) read with expect_header=False."""
    buf = io.BytesIO()
    writer = StreamWriter(buf, header=False)
    src = Source("s")
    writer.write(src.raw(b"x"))
    writer.write(src.raw(b"y"))
    recs = list(StreamReader(io.BytesIO(buf.getvalue()), expect_header=False))
    assert [bytes(r.envelope.payload) for r in recs] == [b"x", b"y"] and recs[0].offset == 0


# -- docs/wire-format.md is a specification: its example and its reader must be right ----------

WIRE_FORMAT = Path(__file__).parent.parent / "docs" / "wire-format.md"


def _doc_block(language: str) -> str:
    text = WIRE_FORMAT.read_text()
    start = text.index(f"```{language}\n") + len(language) + 4
    return text[start : text.index("```", start)]


def test_wire_format_example_dump_decodes() -> None:
    data = bytes(int(x, 16) for line in _doc_block("hex").splitlines() for x in line.split()[1:17])
    reader = StreamReader(io.BytesIO(data))
    assert reader.meta.meta == {"created_ns": 1700000000000000000, "writer": "example"}
    (rec,) = list(reader)
    assert rec.offset == 56 and rec.index == 0
    env = rec.envelope
    assert env.topic == "data.s1" and bytes(env.payload) == b"hi"
    assert env.header == Header(kind=Kind.RAW, source="s1", seq=7, time_ns=1700000000000000000)
    assert data == file_header_bytes_of(env, {"created_ns": 1700000000000000000})


def file_header_bytes_of(env: Envelope, meta: dict) -> bytes:
    """The example rebuilt by the writer, with the doc's fixed creation time."""
    body = msgspec.msgpack.encode({**meta, "writer": "example"})
    head = struct.pack("<8sHHII", MAGIC, VERSION, 0, len(body), zlib.crc32(body)) + body
    buf = io.BytesIO()
    StreamWriter(buf, header=False).write(env)
    return head + buf.getvalue()


@pytest.fixture
def doc_reader(monkeypatch: pytest.MonkeyPatch):
    """The reader printed in docs/wire-format.md, run with msgspec standing in for msgpack."""
    shim = types.ModuleType("msgpack")
    shim.unpackb = msgspec.msgpack.decode  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "msgpack", shim)
    namespace: dict = {}
    exec(compile(_doc_block("python"), str(WIRE_FORMAT), "exec"), namespace)
    return namespace["read"]


def test_the_reader_in_the_spec_agrees_with_ours(doc_reader) -> None:
    a, _, envs_a = small_stream()
    b, _ = write_stream([Source("other").raw(b"b0")], {"run": 43})
    data = a + b
    theirs = list(doc_reader(io.BytesIO(data)))
    ours = list(StreamReader(io.BytesIO(data)))
    assert [(o, i, t, p) for o, i, t, _, p in theirs] == [
        (r.offset, r.index, r.envelope.topic, bytes(r.envelope.payload)) for r in ours
    ]
    assert [msgspec.convert(h, Header) for *_, h, _ in theirs] == [r.envelope.header for r in ours]
    for cut in range(len(a) - 40, len(a)):  # torn tail: same place, same record
        got = []
        with pytest.raises(ValueError) as exc:
            for item in doc_reader(io.BytesIO(a[:cut])):
                got.append(item)
        _, err = read_until_damage(a[:cut])
        assert len(got) == 3 and str(exc.value).endswith(f"at byte {err.offset} (record 3)")


class _CountingReads(io.BytesIO):
    """A stream that records the largest read asked of it."""

    largest = 0

    def read(self, n: int | None = -1) -> bytes:
        self.largest = max(self.largest, n or 0)
        return super().read(n)


def test_a_file_header_cannot_reserve_gigabytes() -> None:
    """meta_len is capped (MAX_META): 0xFFFFFFFF is damage, not a 4 GiB read."""
    for meta_len in (0xFFFF_FFFF, MAX_META + 1):
        f = _CountingReads(struct.pack("<8sHHII", MAGIC, 1, 0, meta_len, 0) + b"x" * 100)
        with pytest.raises(StreamDamage, match="impossible file header length"):
            StreamReader(f)
        assert f.largest <= MAX_META
    big = {"blob": "x" * (MAX_META + 1)}
    with pytest.raises(StreamError):
        file_header(big)  # the writer refuses what every reader would call damage


def test_a_record_length_that_lies_costs_only_what_arrives() -> None:
    """A 2 GiB body_len on a short stream: the reader never asks for 2 GiB at once."""
    head = struct.pack("<4sII", RECORD_MARKER, MAX_BODY, 0)
    f = _CountingReads(file_header() + head + b"y" * 1000)
    with pytest.raises(StreamDamage, match="truncated record"):
        list(StreamReader(f))
    assert f.largest <= 16 << 20


@pytest.mark.parametrize("depth", [200_000])
def test_headers_nested_past_reason_are_undecodable(depth: int) -> None:
    """msgpack nested 200,000 deep in a header or a file header's meta is damage, not a
    RecursionError out of the reader."""
    nested = b"\x91" * depth + b"\x00"
    header = b"\x83\xa4kind\xa5table\xa6source\xa1x\xa5store\x81\xa3csv\x81\xa1a" + nested
    body = struct.pack("<HI", 1, len(header)) + b"t" + header
    record = struct.pack("<4sII", RECORD_MARKER, len(body), zlib.crc32(body)) + body
    with pytest.raises(StreamDamage, match="undecodable record"):
        list(StreamReader(io.BytesIO(file_header() + record)))
    meta = struct.pack("<8sHHII", MAGIC, 1, 0, len(nested), zlib.crc32(nested)) + nested
    with pytest.raises(StreamDamage, match="undecodable file header"):
        StreamReader(io.BytesIO(meta))


def test_a_header_over_the_cap_is_undecodable() -> None:
    with pytest.raises(EnvelopeError, match="exceeds"):
        decode_header(b"\x80" + b"\x00" * HEADER_MAX_BYTES)
    env = Envelope("data.x", Header(kind=Kind.RAW, source="x", tag="t" * HEADER_MAX_BYTES))
    with pytest.raises(EnvelopeError):
        record_bytes(env)  # the writer refuses it too
