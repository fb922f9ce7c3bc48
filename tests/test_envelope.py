"""The envelope codec: tables and bytes survive the ZMQ carrier exactly; bad frames are refused."""

from __future__ import annotations

import io
import math
from pathlib import Path

import msgspec
import pyarrow as pa
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from arrow_strategies import headers, raw_envelopes, table_envelopes, tables, topics
from enrgdaq_core.envelope import (
    HEADER_VERSION,
    TOPIC_END,
    Envelope,
    EnvelopeError,
    Header,
    Kind,
    ShmRef,
    Source,
    decode_header,
    encode_header,
    parse_topic,
    subscription,
    topic_frame,
)
from enrgdaq_core.tables import decode_table, encode_table


class _Pair:
    """One inproc PAIR link for every hypothesis example: real zmq frames, no per-test setup."""

    def __init__(self) -> None:
        self.ctx = zmq.Context.instance()
        self.tx = self.ctx.socket(zmq.PAIR)
        self.rx = self.ctx.socket(zmq.PAIR)
        self.tx.bind("inproc://test-envelope")
        self.rx.connect("inproc://test-envelope")

    def carry(self, env: Envelope) -> Envelope:
        self.tx.send_multipart(env.frames(), copy=False)
        frames = self.rx.recv_multipart(copy=False)
        return Envelope.from_frames([f.buffer for f in frames])


_pair: _Pair | None = None


def zmq_carry(env: Envelope) -> Envelope:
    global _pair
    if _pair is None:
        _pair = _Pair()
    return _pair.carry(env)


def assert_same(got: Envelope, sent: Envelope) -> None:
    assert got.topic == sent.topic
    assert got.header == sent.header
    assert bytes(got.payload) == bytes(sent.payload)


@settings(max_examples=150, deadline=None)
@given(table_envelopes())
def test_table_round_trip_through_zmq_frames(case: tuple[Envelope, pa.Table]) -> None:
    env, table = case
    for got in (Envelope.from_frames(env.frames()), zmq_carry(env)):
        assert_same(got, env)
        decoded = got.table()
        assert decoded.schema.equals(table.schema)
        assert decoded.equals(table)
        assert decoded.num_rows == got.header.rows


@settings(max_examples=100, deadline=None)
@given(raw_envelopes())
def test_raw_round_trip_through_zmq_frames(env: Envelope) -> None:
    for got in (Envelope.from_frames(env.frames()), zmq_carry(env)):
        assert_same(got, env)


@settings(max_examples=200, deadline=None)
@given(headers)
def test_header_round_trip_keeps_every_field(header: Header) -> None:
    assert decode_header(encode_header(header)) == header


@given(tables())
@settings(max_examples=50, deadline=None)
def test_record_batch_and_table_encode_alike(table: pa.Table) -> None:
    combined = table.combine_chunks()
    batch = combined.to_batches()[0] if combined.num_rows else None
    if batch is not None:
        assert decode_table(encode_table(batch)).equals(pa.Table.from_batches([batch]))
    assert decode_table(encode_table(table)).equals(table)


def test_dictionary_encoded_column_round_trips() -> None:
    """A pandas categorical arrives as a dictionary column: its dictionaries must travel too,
    also when a later batch brings another dictionary."""
    first = pa.table({"state": pa.array(["on", "off", "on"]).dictionary_encode()})
    second = pa.table({"state": pa.array(["fault", None]).dictionary_encode()})
    table = pa.concat_tables([first, second])
    assert zmq_carry(Source("s").table(table)).table().equals(table)


def test_nan_and_infinities_survive() -> None:
    # Table.equals treats NaN != NaN, so the property tests leave NaN out; checked here.
    values = [math.nan, math.inf, -math.inf, -0.0, None]
    table = pa.table({"f64": pa.array(values), "f32": pa.array(values, pa.float32())})
    got = zmq_carry(Source("s").table(table)).table()
    for name in ("f64", "f32"):
        out = got.column(name).to_pylist()
        assert math.isnan(out[0]) and out[1:4] == [math.inf, -math.inf, 0.0] and out[4] is None
        assert math.copysign(1.0, out[3]) == -1.0


def test_large_waveform_table_round_trips() -> None:
    import numpy as np

    samples = np.arange(4 * 1024 * 256, dtype=np.int16) % 4000
    waves = pa.FixedSizeListArray.from_arrays(pa.array(samples), 1024)
    table = pa.table({"event": pa.array(np.arange(len(waves), dtype=np.uint64)), "ch0": waves})
    env = Source("digi").table(table)
    assert env.nbytes > 2 * 1024 * 1024
    assert zmq_carry(env).table().equals(table)


@given(topics)
def test_topic_frames_are_terminated(topic: str) -> None:
    frame = topic_frame(topic)
    assert frame.endswith(TOPIC_END) and parse_topic(frame) == topic
    # An exact subscription matches only its own topic, never one that extends it.
    assert frame.startswith(subscription(topic))
    assert not topic_frame(topic + "0").startswith(subscription(topic))
    assert not topic_frame(topic + ".x").startswith(subscription(topic))


def test_subscription_patterns() -> None:
    assert subscription("data.sensor1") == b"data.sensor1\x00"
    assert subscription("data.") == b"data."
    assert subscription("data.sensor*") == b"data.sensor"
    assert subscription("") == subscription("*") == b""


def test_source_stamps_sequence_over_every_kind() -> None:
    src = Source("s1", run=7, tag="t", store={"csv": {"file_path": "x.csv"}})
    envs = [src.raw(b"a"), src.table(pa.table({"x": [1, 2]})), src.end_of_stream()]
    assert [e.header.seq for e in envs] == [0, 1, 2]
    assert {e.topic for e in envs} == {"data.s1"}
    assert [e.kind for e in envs] == [Kind.RAW, Kind.TABLE, Kind.EOS]
    assert envs[1].header.rows == 2
    assert all(e.header.run == 7 and e.header.epoch == src.epoch for e in envs)
    assert envs[0].header.store == {"csv": {"file_path": "x.csv"}}
    assert envs[0].header.time_ns <= envs[2].header.time_ns


def test_table_of_a_raw_message_is_an_error() -> None:
    with pytest.raises(EnvelopeError, match="a raw message has no table"):
        Source("s").raw(b"x").table()


def test_undecodable_parts_are_envelope_errors() -> None:
    good = Source("s").raw(b"x").frames()
    with pytest.raises(EnvelopeError, match="expected 3 frames"):
        Envelope.from_frames(good[:2])
    with pytest.raises(EnvelopeError, match="lacks its terminator"):
        Envelope.from_frames([b"data.s", good[1], good[2]])
    with pytest.raises(EnvelopeError, match="not UTF-8"):
        Envelope.from_frames([b"\xff\xfe\x00", good[1], good[2]])
    with pytest.raises(EnvelopeError, match="undecodable header"):
        Envelope.from_frames([good[0], b"\x93garbage", good[2]])
    with pytest.raises(EnvelopeError, match="undecodable header"):
        Envelope.from_frames([good[0], msgspec.msgpack.encode({"kind": "nope"}), good[2]])
    bad_table = Envelope("data.s", Header(kind=Kind.TABLE, source="s"), b"not arrow")
    with pytest.raises(EnvelopeError, match="undecodable Arrow payload"):
        bad_table.table()


def test_newer_header_major_is_refused_unknown_fields_are_ignored() -> None:
    newer = msgspec.msgpack.encode({"v": HEADER_VERSION + 1, "kind": "raw", "source": "s"})
    with pytest.raises(EnvelopeError, match=f"header version {HEADER_VERSION + 1} is newer"):
        decode_header(newer)
    extended = msgspec.msgpack.encode(
        {"v": HEADER_VERSION, "kind": "raw", "source": "s", "seq": 3, "future_field": [1, 2]}
    )
    assert decode_header(extended) == Header(kind=Kind.RAW, source="s", seq=3)


def _in_shared_memory(env: Envelope) -> Envelope:
    """`env` as a future shared-memory sender would put it: `shm` set, the payload part empty."""
    env.header.shm = ShmRef(segment="/daq-ring-0", offset=4096, size=len(env.payload), generation=1)
    env.payload, env._table = b"", None
    return env


def test_a_shared_memory_header_is_refused_until_shared_memory_exists() -> None:
    """docs/wire-format.md: this version never writes `shm` and treats such a message as
    undecodable, rather than taking the empty payload part for the data."""
    env = _in_shared_memory(Source("s").table(pa.table({"x": [1, 2]})))
    with pytest.raises(EnvelopeError, match="payload is in shared memory .*does not support"):
        Envelope.from_frames(env.frames())
    with pytest.raises(EnvelopeError, match="shared memory"):
        decode_header(encode_header(env.header))


def test_a_store_fed_a_shared_memory_record_writes_no_empty_row(tmp_path: Path) -> None:
    """Through a pipe the record is undecodable: the store skips and counts it, keeps what came
    before and after; it never writes the empty payload as a row."""
    from _store_data import sample_table
    from enrgdaq_core.channels import StreamInput
    from enrgdaq_core.signals import StopFlag
    from enrgdaq_core.stores.options import build_backend
    from enrgdaq_core.stores.runner import StoreRunner
    from enrgdaq_core.stream import StreamWriter

    src = Source("s", store={"csv": {"file_path": "s.csv"}})
    buf = io.BytesIO()
    writer = StreamWriter(buf)
    writer.write(src.table(sample_table(0, 2)))
    writer.write(_in_shared_memory(src.table(sample_table(2, 3))))
    writer.write(src.table(sample_table(5, 1)))
    buf.seek(0)
    backend, _ = build_backend("csv", flags={"out_dir": str(tmp_path)})
    result = StoreRunner(backend, name="t").run(StreamInput(buf), StopFlag())
    assert result.damage is None and result.meter.undecodable == 1
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert len(lines) == 1 + 2 + 1  # the header line, the rows before and after the record


def test_header_is_plain_msgpack() -> None:
    """A reader in another language sees a map with the documented short field names.

    Fields at their default are left out, except the version, which is always written so that
    an older reader can tell a newer writer's header from its own.
    """
    h = Header(kind=Kind.TABLE, source="s", seq=5, time_ns=9, rows=2, store={"csv": {}})
    assert msgspec.msgpack.decode(encode_header(h)) == {
        "v": HEADER_VERSION,
        "kind": "table",
        "source": "s",
        "seq": 5,
        "time_ns": 9,
        "rows": 2,
        "store": {"csv": {}},
    }


@given(st.binary(max_size=64))
def test_random_bytes_never_crash_the_decoder(data: bytes) -> None:
    try:
        Envelope.from_frames([b"t\x00", data, b""])
    except EnvelopeError:
        pass
