"""Arrow IPC payloads: the table half of the envelope codec.

Kept apart from `envelope` so that commands which never touch a table (help, stats, broker)
never import pyarrow.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

__all__ = [
    "EXPANSION_FLOOR",
    "MAX_EXPANSION",
    "ONE_COPY_ABOVE",
    "TableError",
    "decode_table",
    "encode_table",
    "encode_table_view",
    "familiar",
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


MAX_EXPANSION = 16
"""A payload whose values, once decoded, would take more than this many times its own size (or
EXPANSION_FLOOR, whichever is larger) is refused: see `decode_table`."""
EXPANSION_FLOOR = 64 << 20

_DECODE_CACHE_SIZE = 1024  # schemas a store remembers (one per source, usually)
# schema message bytes -> (schema, whether its values can outgrow the payload (see _expands),
# whether its batches may take the fast path: not with dictionaries, which come in batches of
# their own)
_decode_cache: dict[bytes, tuple[pa.Schema, bool, bool]] = {}


def _schema_message(view: memoryview) -> bytes:
    """The payload's first IPC message (the schema): continuation, length, flatbuffer."""
    if len(view) < 8 or view[:4] != b"\xff\xff\xff\xff":
        return b""
    return bytes(view[: 8 + int.from_bytes(view[4:8], "little", signed=True)])


def _known_schema(view: memoryview) -> tuple[int, pa.Schema, bool, bool] | None:
    data = _schema_message(view)
    known = _decode_cache.get(data) if len(data) > 8 else None
    return None if known is None else (len(data), *known)


def familiar(payload: bytes | memoryview) -> bool:
    """Whether `payload` starts with a schema this process decoded and checked before.

    A payload of an unseen schema takes the most pyarrow code (schema and dictionary parsing)
    over untrusted bytes: stores write what they hold before decoding one (stores/runner.py).
    """
    return _known_schema(memoryview(payload)) is not None


def _expands(type_: pa.DataType) -> bool:
    """Whether values of `type_` can take more room decoded than in the payload: types with
    no bytes per value (null, struct<>, fixed_size_binary[0], fixed_size_list[0]), and
    encodings that reuse bytes (dictionaries, run-end encoding, views). Reads every field name,
    so a name that is not UTF-8 fails here (UnicodeDecodeError) and not in a store."""
    t = type_.storage_type if isinstance(type_, pa.BaseExtensionType) else type_
    types = pa.types
    if (
        types.is_null(t)
        or types.is_dictionary(t)
        or types.is_run_end_encoded(t)
        or types.is_binary_view(t)
        or types.is_string_view(t)
        or types.is_list_view(t)
        or types.is_large_list_view(t)
        or (types.is_fixed_size_binary(t) and t.byte_width == 0)
        or (types.is_fixed_size_list(t) and t.list_size == 0)
        or (types.is_struct(t) and t.num_fields == 0)
    ):
        if types.is_dictionary(t):
            _expands(t.value_type)  # the names inside
        return True
    expands = False
    for i in range(t.num_fields):
        field = t.field(i)
        field.name  # noqa: B018 - raises UnicodeDecodeError for a name that is not UTF-8
        expands = _expands(field.type) or expands
    return expands


def _schema_expands(schema: pa.Schema) -> bool:
    try:
        expands = False
        for i, field in enumerate(schema):
            if not isinstance(schema.names[i], str):
                raise TableError("undecodable Arrow payload: a field name is not text")
            expands = _expands(field.type) or expands
        return expands
    except UnicodeDecodeError:
        raise TableError("undecodable Arrow payload: a field name is not UTF-8") from None


def _largest(arr: pa.Array) -> int:
    """Bytes of the largest value of `arr` once decoded (an upper bound, at least 1)."""
    import pyarrow.compute as pc

    t = arr.type
    if isinstance(t, pa.BaseExtensionType):
        return _largest(arr.storage)
    if len(arr) == 0:
        return 1
    if pa.types.is_null(t) or pa.types.is_boolean(t):
        return 1
    if not _expands(t) and t.num_fields == 0:
        try:
            return max(1, t.byte_width)
        except ValueError:  # variable width: binary and strings
            longest = pc.max(pc.binary_length(arr)).as_py()
            return 1 + (longest or 0)
    if pa.types.is_binary_view(t) or pa.types.is_string_view(t):
        return 1 + int(_view_lengths(arr).max(initial=0))
    return max(1, _expanded(arr))


def _view_lengths(arr: pa.Array) -> Any:
    import numpy as np

    views = np.frombuffer(arr.buffers()[1], dtype=np.int32, count=4 * (arr.offset + len(arr)))
    return views[4 * arr.offset :: 4].astype(np.int64)


def _dictionary_bytes(arr: pa.DictionaryArray) -> int:
    """Bytes of a dictionary column once decoded: exact for text and binary values."""
    import numpy as np
    import pyarrow.compute as pc

    n = len(arr)
    bound = n * _largest(arr.dictionary)
    values = arr.dictionary
    t = values.type
    if bound <= EXPANSION_FLOOR or not (
        pa.types.is_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_string(t)
        or pa.types.is_large_binary(t)
    ):
        return bound
    sizes = pc.add(pc.binary_length(values), 1).to_numpy(zero_copy_only=False)
    indices = pc.fill_null(arr.indices, 0).to_numpy(zero_copy_only=False).astype(np.int64)
    return int(sizes[indices].sum(dtype=np.int64))


def _expanded(arr: pa.Array) -> int:
    """Bytes `arr` takes once every dictionary, run and view is decoded (each value >= 1)."""
    t = arr.type
    n = len(arr)
    if isinstance(t, pa.BaseExtensionType):
        return _expanded(arr.storage)
    if pa.types.is_dictionary(t):
        return n + _dictionary_bytes(arr)
    if pa.types.is_run_end_encoded(t):
        return n + n * _largest(arr.values)
    if pa.types.is_binary_view(t) or pa.types.is_string_view(t):
        return n + int(_view_lengths(arr).sum())
    if pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
        sizes = arr.sizes.to_numpy(zero_copy_only=False)
        return n + int(sizes.sum()) * _largest(arr.values)
    if pa.types.is_struct(t) or pa.types.is_union(t):
        return n + sum(_expanded(arr.field(i)) for i in range(t.num_fields))
    if t.num_fields:  # list, large list, fixed-size list, map
        return n + _expanded(arr.values)
    return n + sum(b.size for b in arr.buffers() if b is not None)


def _checked(data: pa.RecordBatch | pa.Table, payload_size: int, expands: bool) -> None:
    """Refuse what a store must not convert: invalid data, or values that decode to far more
    than the payload (see `decode_table`)."""
    try:
        data.validate(full=True)
    except pa.ArrowException as exc:
        raise TableError(f"invalid Arrow payload: {exc}") from None
    if not expands:
        return
    limit = max(MAX_EXPANSION * payload_size, EXPANSION_FLOOR)
    total = 0
    columns = data.columns
    for column in columns:
        for chunk in column.chunks if isinstance(column, pa.ChunkedArray) else [column]:
            total += _expanded(chunk)
            if total > limit:
                raise TableError(
                    f"Arrow payload of {payload_size} bytes would take more than {limit} bytes "
                    f"decoded (limit: {MAX_EXPANSION} times its size, at least "
                    f"{EXPANSION_FLOOR >> 20} MiB)"
                )


def decode_table(payload: bytes | memoryview) -> pa.Table:
    """The table of a payload, checked before anything reads a value; TableError otherwise.

    Every payload, on the general path and on the fast one, is checked in this order, at a
    cost linear in its size (docs/wire-format.md, "Payload checks"):

    1. framing: pyarrow's IPC reader (message lengths, flatbuffers, buffers within the body);
    2. every field name is UTF-8 (once per schema);
    3. `validate(full=True)` of every batch: lengths and null counts, offsets in bounds and
       monotonic, UTF-8 of strings, dictionary indices in range; a batch whose lengths lie
       would otherwise crash pyarrow (SIGSEGV, SIGABRT) in the first conversion;
    4. size: only for types whose values can outgrow the payload (null, dictionaries, run-end
       encoding, views, zero-width types): once decoded, the values may take at most
       MAX_EXPANSION times the payload's size (or EXPANSION_FLOOR), counting each value as
       at least one byte, so a 300-byte payload cannot claim 2**40 rows.

    A schema seen before is not parsed again (half the cost of a 1-row message in a store);
    anything unusual takes the general IPC reader.
    """
    try:
        view = memoryview(payload)
        known = _known_schema(view)
        if known is not None and known[3]:
            n, schema, expands, _fast = known
            rest = pa.py_buffer(view[n:])
            if rest.size == 0:
                return schema.empty_table()
            try:
                batch = pa.ipc.read_record_batch(rest, schema)
            except (pa.ArrowException, EOFError):
                batch = None  # not one plain batch (an end marker, say): the general reader
            if batch is not None:
                _checked(batch, len(view), expands)
                if pa.ipc.get_record_batch_size(batch) == rest.size:
                    return pa.Table.from_batches([batch], schema=schema)
        reader = pa.ipc.open_stream(pa.py_buffer(payload))
        table = reader.read_all()
        expands = _schema_expands(table.schema)
        _checked(table, len(view), expands)
        if known is None:
            data = _schema_message(view)
            if data == table.schema.serialize():
                fast = not any(_has_dictionary(f.type) for f in table.schema)
                if len(_decode_cache) >= _DECODE_CACHE_SIZE:
                    del _decode_cache[next(iter(_decode_cache))]
                _decode_cache[data] = (table.schema, expands, fast)
        return table
    except (pa.ArrowException, OSError, EOFError) as exc:
        raise TableError(f"undecodable Arrow payload: {exc}") from None
