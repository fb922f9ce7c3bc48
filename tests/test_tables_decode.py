"""decode_table: the cached-schema fast path gives what the general IPC reader gives, always;
every payload is checked, and one that would blow up once decoded is refused."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from enrgdaq_core.tables import TableError, decode_table, encode_table


def _stream(table: pa.Table, *, batches: list[pa.RecordBatch] | None = None) -> bytes:
    """What a standard pyarrow writer produces (with its end-of-stream marker)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        for b in table.to_batches() if batches is None else batches:
            w.write_batch(b)
    return sink.getvalue().to_pybytes()


def test_payloads_decode_the_same_with_a_warm_cache() -> None:
    table = pa.table({"a": pa.array([1, 2, 3], pa.int64()), "b": ["x", "y", None]})
    decode_table(encode_table(table))  # the schema is now cached
    two = pa.Table.from_batches(table.to_batches(max_chunksize=2))
    cases = {
        "ours": encode_table(table),
        "ours, two batches": encode_table(two),
        "ours, no batch": encode_table(table.schema.empty_table()),
        "standard writer": _stream(table),
        "standard writer, no batch": _stream(table, batches=[]),
        "standard writer, two batches": _stream(two),
    }
    for name, payload in cases.items():
        cold = pa.ipc.open_stream(pa.py_buffer(payload)).read_all()
        warm = decode_table(payload)
        assert warm.equals(cold), name
        assert warm.num_rows == cold.num_rows, name


def _claiming_rows(table: pa.Table, rows: int) -> bytes:
    """`table`'s payload with the batch and every column claiming `rows` (no bytes per value)."""
    from ipc_mutations import length_slots, with_value

    payload = encode_table(table)
    for slot in length_slots(payload):
        null_type = slot.what == "node.null_count" and slot.value(payload) == table.num_rows
        if slot.message == 1 and (slot.what in ("rows", "node.length") or null_type):
            payload = with_value(payload, slot, rows)
    return payload


@pytest.mark.parametrize(
    "table",
    [
        pa.table({"n": pa.nulls(2)}),
        pa.table({"e": pa.array([{}, {}], pa.struct([]))}),
        pa.table({"z": pa.array([b"", b""], pa.binary(0))}),
    ],
    ids=["null", "struct<>", "fixed_size_binary[0]"],
)
def test_a_small_payload_cannot_claim_a_huge_table(table: pa.Table) -> None:
    """Types without bytes per value: 2**40 rows in 300 bytes would have a store write for ever."""
    decode_table(encode_table(table))  # the schema is known: the fast path
    with pytest.raises(TableError, match="decoded"):
        decode_table(_claiming_rows(table, 1 << 40))
    assert decode_table(_claiming_rows(table, 1000)).num_rows == 1000  # small claims are fine


def test_a_dictionary_cannot_multiply_its_values() -> None:
    """1 MB of text referenced by a million one-byte indices: a terabyte once decoded."""
    big = pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(1_000_000, dtype=np.int8)), pa.array(["x" * 1_000_000])
    )
    with pytest.raises(TableError, match="decoded"):
        decode_table(encode_table(pa.table({"c": big})))
    small = pa.array(["on", "off"] * 50_000).dictionary_encode()  # ordinary categories
    assert decode_table(encode_table(pa.table({"c": small}))).num_rows == 100_000


def test_a_field_name_that_is_not_utf8_is_refused() -> None:
    payload = encode_table(pa.table({"abc": [1]}))
    with pytest.raises(TableError, match="UTF-8"):
        decode_table(payload.replace(b"abc", b"a\xffc"))
