"""Arrow IPC payloads: the table half of the envelope codec.

Kept apart from `envelope` so that commands which never touch a table (help, stats, broker)
never import pyarrow.
"""

from __future__ import annotations

import pyarrow as pa

from enrgdaq_core.envelope import EnvelopeError

ONE_COPY_ABOVE = 1 << 16
"""Tables whose buffers exceed this many bytes are serialised straight into one buffer of the
exact size (one copy); smaller ones join cached schema bytes and the batch (cheaper per call)."""

_SCHEMA_CACHE_SIZE = 16
_schema_cache: list[tuple[pa.Schema, bytes]] = []  # most recently used first


def _schema_bytes(schema: pa.Schema) -> bytes:
    # A 1-row message at kHz rates would spend most of its time re-serialising the same schema.
    # Looked up by identity, then `equals` (tens of ns); hashing a pa.Schema costs microseconds.
    cache = _schema_cache
    for i, (known, data) in enumerate(cache):
        if known is schema or known.equals(schema, check_metadata=True):
            if i:
                cache.insert(0, cache.pop(i))
            return data
    data = schema.serialize().to_pybytes()
    cache.insert(0, (schema, data))
    del cache[_SCHEMA_CACHE_SIZE:]
    return data


def _batches(table: pa.Table | pa.RecordBatch) -> list[pa.RecordBatch]:
    return [table] if isinstance(table, pa.RecordBatch) else table.to_batches()


def _encode_into_buffer(table: pa.Table | pa.RecordBatch) -> pa.Buffer:
    """The IPC stream written once into a buffer of its exact size (same bytes as the join)."""
    batches = _batches(table)
    schema = table.schema
    size = len(_schema_bytes(schema)) + sum(pa.ipc.get_record_batch_size(b) for b in batches)
    buf = pa.allocate_buffer(size)
    sink = pa.FixedSizeBufferWriter(buf)
    writer = pa.ipc.new_stream(sink, schema)
    for batch in batches:
        writer.write_batch(batch)
    # Not closed on purpose: close() would append an end-of-stream marker, which the small
    # path does not write; both paths give identical bytes.
    if sink.tell() != size:
        raise EnvelopeError(f"Arrow IPC size mismatch: wrote {sink.tell()} of {size} bytes")
    return buf


def encode_table(table: pa.Table | pa.RecordBatch) -> bytes:
    """One self-contained Arrow IPC stream: the schema message, then every record batch."""
    if table.get_total_buffer_size() > ONE_COPY_ABOVE:
        return _encode_into_buffer(table).to_pybytes()
    return b"".join([_schema_bytes(table.schema), *(b.serialize() for b in _batches(table))])


def encode_table_view(table: pa.Table | pa.RecordBatch) -> bytes | memoryview:
    """`encode_table` without the final copy of large tables: a view of an Arrow buffer.

    For the send path (`Source.table`), where a 4 MB table would otherwise be copied twice
    more before ZeroMQ takes it without copying.
    """
    if table.get_total_buffer_size() > ONE_COPY_ABOVE:
        return memoryview(_encode_into_buffer(table))
    return b"".join([_schema_bytes(table.schema), *(b.serialize() for b in _batches(table))])


def decode_table(payload: bytes | memoryview) -> pa.Table:
    try:
        return pa.ipc.open_stream(pa.py_buffer(payload)).read_all()
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
        raise EnvelopeError(f"undecodable Arrow payload: {exc}") from None
