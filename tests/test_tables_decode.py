"""decode_table's cached-schema fast path gives what the general IPC reader gives, always."""

from __future__ import annotations

import pyarrow as pa

from enrgdaq_core.tables import decode_table, encode_table


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
