"""Arrow IPC payloads: the table half of the envelope codec.

Kept apart from `envelope` so that commands which never touch a table (help, stats, broker)
never import pyarrow.
"""

from __future__ import annotations

import pyarrow as pa

from enrgdaq_core.envelope import EnvelopeError

_schema_cache: dict[pa.Schema, bytes] = {}


def _schema_bytes(schema: pa.Schema) -> bytes:
    # A 1-row message at kHz rates would spend most of its time re-serialising the same schema.
    cached = _schema_cache.get(schema)
    if cached is None:
        if len(_schema_cache) > 256:
            _schema_cache.clear()
        cached = _schema_cache[schema] = schema.serialize().to_pybytes()
    return cached


def encode_table(table: pa.Table | pa.RecordBatch) -> bytes:
    """One self-contained Arrow IPC stream: the schema message, then every record batch."""
    batches = [table] if isinstance(table, pa.RecordBatch) else table.to_batches()
    parts = [_schema_bytes(table.schema)]
    parts.extend(batch.serialize().to_pybytes() for batch in batches)
    return b"".join(parts)


def decode_table(payload: bytes | memoryview) -> pa.Table:
    try:
        return pa.ipc.open_stream(pa.py_buffer(payload)).read_all()
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
        raise EnvelopeError(f"undecodable Arrow payload: {exc}") from None
