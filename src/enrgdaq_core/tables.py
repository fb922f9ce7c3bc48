"""Arrow IPC payloads: the table half of the envelope codec.

Kept apart from `envelope` so that commands which never touch a table (help, stats, broker)
never import pyarrow.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = [
    "ONE_COPY_ABOVE",
    "TableError",
    "decode_table",
    "encode_table",
    "encode_table_view",
]


class TableError(ValueError):
    """An Arrow payload that cannot be encoded or decoded.

    Its own class, not `envelope.EnvelopeError`: this module sits below the envelope codec
    (which imports it lazily) and must not import it back; `Envelope.table()` turns a decode
    failure into the EnvelopeError consumers count.
    """


ONE_COPY_ABOVE = 1 << 16
"""Tables whose buffers exceed this many bytes are serialised straight into one buffer of the
exact size (one copy); smaller ones join cached schema bytes and the batch (cheaper per call)."""

_SCHEMA_CACHE_SIZE = 16
# (schema, its serialised bytes, whether it has a dictionary column), most recently used first
_schema_cache: list[tuple[pa.Schema, bytes, bool]] = []


def _has_dictionary(type_: pa.DataType) -> bool:
    if pa.types.is_dictionary(type_):
        return True
    return any(_has_dictionary(type_.field(i).type) for i in range(type_.num_fields))


def _schema_info(schema: pa.Schema) -> tuple[pa.Schema, bytes, bool]:
    # A 1-row message at kHz rates would spend most of its time re-serialising the same schema.
    # Looked up by identity, then `equals` (tens of ns); hashing a pa.Schema costs microseconds.
    cache = _schema_cache
    if cache and cache[0][0] is schema:  # a source sends one schema: the usual case
        return cache[0]
    for i, entry in enumerate(cache):
        if entry[0] is schema or entry[0].equals(schema, check_metadata=True):
            if i:
                cache.insert(0, cache.pop(i))
            return entry
    entry = (
        schema,
        schema.serialize().to_pybytes(),
        any(_has_dictionary(f.type) for f in schema),
    )
    cache.insert(0, entry)
    del cache[_SCHEMA_CACHE_SIZE:]
    return entry


def _schema_bytes(schema: pa.Schema) -> bytes:
    return _schema_info(schema)[1]


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
        raise TableError(f"Arrow IPC size mismatch: wrote {sink.tell()} of {size} bytes")
    return buf


def _encode_with_dictionaries(table: pa.Table | pa.RecordBatch) -> pa.Buffer:
    """Dictionary columns need dictionary batches before the record batches (and again when a
    later batch has another dictionary): only the stream writer knows when to emit them."""
    batches = _batches(table)
    if not batches:  # the writer puts the schema out with the first batch (or at close)
        return pa.py_buffer(_schema_bytes(table.schema))
    sink = pa.BufferOutputStream()
    writer = pa.ipc.new_stream(sink, table.schema)
    for batch in batches:
        writer.write_batch(batch)
    return sink.getvalue()  # writer not closed: no end-of-stream marker (docs/wire-format.md)


def _encode_small(table: pa.Table | pa.RecordBatch) -> bytes:
    _schema, schema_bytes, dictionaries = _schema_info(table.schema)
    if dictionaries:
        return _encode_with_dictionaries(table).to_pybytes()
    if isinstance(table, pa.RecordBatch):  # what jobs usually return: one batch
        return b"".join((schema_bytes, table.serialize()))
    return b"".join([schema_bytes, *(b.serialize() for b in table.to_batches())])


def _encode_large(table: pa.Table | pa.RecordBatch) -> pa.Buffer:
    if _schema_info(table.schema)[2]:
        return _encode_with_dictionaries(table)
    return _encode_into_buffer(table)


def encode_table(table: pa.Table | pa.RecordBatch) -> bytes:
    """One self-contained Arrow IPC stream: the schema message, (dictionaries,) every batch."""
    if table.get_total_buffer_size() > ONE_COPY_ABOVE:
        return _encode_large(table).to_pybytes()
    return _encode_small(table)


def encode_table_view(table: pa.Table | pa.RecordBatch) -> bytes | memoryview:
    """`encode_table` without the final copy of large tables: a view of an Arrow buffer.

    For the send path (`Source.table`), where a 4 MB table would otherwise be copied twice
    more before ZeroMQ takes it without copying.
    """
    if table.get_total_buffer_size() > ONE_COPY_ABOVE:
        return memoryview(_encode_large(table)).toreadonly()  # ours alone: sent zero-copy
    return _encode_small(table)


_decode_cache: list[tuple[bytes, pa.Schema]] = []  # schema message bytes -> schema


def _known_schema(view: memoryview) -> tuple[int, pa.Schema] | None:
    for i, (data, schema) in enumerate(_decode_cache):
        n = len(data)
        if view[:n] == data:
            if i:
                _decode_cache.insert(0, _decode_cache.pop(i))
            return n, schema
    return None


def decode_table(payload: bytes | memoryview) -> pa.Table:
    """The table of a payload. A schema seen before is not parsed again (half the cost of a
    1-row message in a store); anything unusual takes the general IPC reader."""
    try:
        view = memoryview(payload)
        known = _known_schema(view)
        if known is not None:
            n, schema = known
            rest = pa.py_buffer(view[n:])
            if rest.size == 0:
                return schema.empty_table()
            try:
                batch = pa.ipc.read_record_batch(rest, schema)
            except (pa.ArrowException, EOFError):
                batch = None  # not one plain batch (an end marker, say): the general reader
            if batch is not None and pa.ipc.get_record_batch_size(batch) == rest.size:
                return pa.Table.from_batches([batch], schema=schema)
        reader = pa.ipc.open_stream(pa.py_buffer(payload))
        table = reader.read_all()
        if known is None and not any(pa.types.is_dictionary(f.type) for f in table.schema):
            data = table.schema.serialize().to_pybytes()
            if view[: len(data)] == data:
                _decode_cache.insert(0, (data, table.schema))
                del _decode_cache[_SCHEMA_CACHE_SIZE:]
        return table
    except (pa.ArrowInvalid, pa.ArrowException, OSError, EOFError) as exc:
        raise TableError(f"undecodable Arrow payload: {exc}") from None
