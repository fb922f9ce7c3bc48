"""Where the lengths of an Arrow IPC stream lie, so a test can make a payload lie about them.

A tiny reader of the IPC framing and of the few flatbuffer fields that hold lengths: the
record batch's row count, each field node's length and null count, each buffer's offset and
length, and the message body length (format.fbs / Message.fbs of the Arrow specification).
Used by the fuzz suite and the crash regressions to forge CRC-valid records whose payload
claims lengths it does not have; nothing in the library needs it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa

_CONTINUATION = b"\xff\xff\xff\xff"
_RECORD_BATCH = 3  # MessageHeader union tags (Message.fbs)
_DICTIONARY_BATCH = 2


@dataclass(frozen=True, slots=True)
class Slot:
    """One int64 length field: its byte position in the payload and what it means."""

    pos: int
    what: str  # "rows", "node.length", "node.null_count", "buffer.offset", ... "body_length"
    message: int  # which IPC message of the stream (0: the schema)
    index: int = 0  # which node / buffer

    def value(self, payload: bytes) -> int:
        return struct.unpack_from("<q", payload, self.pos)[0]


def _u32(buf: bytes, pos: int) -> int:
    return struct.unpack_from("<I", buf, pos)[0]


def _field(buf: bytes, table: int, index: int) -> int | None:
    """Absolute position of field `index` of the flatbuffer table at `table`, None if absent."""
    vtable = table - struct.unpack_from("<i", buf, table)[0]
    vsize = struct.unpack_from("<H", buf, vtable)[0]
    at = 4 + 2 * index
    if at + 2 > vsize:
        return None
    off = struct.unpack_from("<H", buf, vtable + at)[0]
    return table + off if off else None


def _deref(buf: bytes, pos: int) -> int:
    return pos + _u32(buf, pos)


def _batch_slots(buf: bytes, base: int, batch: int, message: int) -> list[Slot]:
    slots: list[Slot] = []
    pos = _field(buf, batch, 0)
    if pos is not None:
        slots.append(Slot(base + pos, "rows", message))
    for field_index, names in (
        (1, ("node.length", "node.null_count")),
        (2, ("buffer.offset", "buffer.length")),
    ):
        pos = _field(buf, batch, field_index)
        if pos is None:
            continue
        vec = _deref(buf, pos)
        for i in range(_u32(buf, vec)):
            start = vec + 4 + 16 * i
            slots.append(Slot(base + start, names[0], message, i))
            slots.append(Slot(base + start + 8, names[1], message, i))
    return slots


def length_slots(payload: bytes) -> list[Slot]:
    """Every length field of every message of an IPC stream (stops at anything unexpected)."""
    slots: list[Slot] = []
    pos = 0
    message = 0
    while pos + 8 <= len(payload):
        if payload[pos : pos + 4] != _CONTINUATION:
            break
        meta_len = struct.unpack_from("<i", payload, pos + 4)[0]
        if meta_len <= 0:
            break
        base = pos + 8
        fb = payload[base : base + meta_len]
        root = _u32(fb, 0)
        header_type_at = _field(fb, root, 1)
        header_at = _field(fb, root, 2)
        body_at = _field(fb, root, 3)
        body_len = struct.unpack_from("<q", fb, body_at)[0] if body_at is not None else 0
        if body_at is not None:
            slots.append(Slot(base + body_at, "body_length", message))
        kind = fb[header_type_at] if header_type_at is not None else 0
        if header_at is not None and kind in (_RECORD_BATCH, _DICTIONARY_BATCH):
            table = _deref(fb, header_at)
            if kind == _DICTIONARY_BATCH:
                data_at = _field(fb, table, 1)
                table = _deref(fb, data_at) if data_at is not None else None
            if table is not None:
                slots.extend(_batch_slots(fb, base, table, message))
        pos = base + meta_len + body_len
        message += 1
    return slots


def with_value(payload: bytes, slot: Slot, value: int) -> bytes:
    """`payload` with one length field set to `value` (an int64)."""
    out = bytearray(payload)
    struct.pack_into("<q", out, slot.pos, value)
    return bytes(out)


# -- the crash classes of issue 15: CRC-valid records whose payload lies ------------------------


def good_table(start: int, rows: int) -> pa.Table:
    """The table the forged payloads are made from: int, string, list, map and struct."""
    keys = range(start, start + rows)
    return pa.table(
        {
            "i": pa.array(keys, pa.int64()),
            "s": pa.array([f"v{k}" for k in keys], pa.string()),
            "l": pa.array([[k, -k] for k in keys], pa.list_(pa.int16())),
            "m": pa.array([[(f"k{k}", k)] for k in keys], pa.map_(pa.string(), pa.int32())),
            "st": pa.array([{"x": k, "y": f"y{k}"} for k in keys]),
        }
    )


def _slot(payload: bytes, what: str, index: int = 0) -> Slot:
    return next(s for s in length_slots(payload) if s.what == what and s.index == index)


def _lie(what: str, index: int, value: Callable[[int, int], int]) -> Callable[[bytes], bytes]:
    """A payload with one length field replaced by value(old, len(payload))."""

    def forge(payload: bytes) -> bytes:
        slot = _slot(payload, what, index)
        return with_value(payload, slot, value(slot.value(payload), len(payload)))

    return forge


def _column(table: pa.Table, name: str, arr: pa.Array) -> bytes:
    from enrgdaq_core.tables import encode_table

    i = table.schema.get_field_index(name)
    return encode_table(table.set_column(i, table.schema.field(i), arr))


def _int32s(*values: int) -> pa.Buffer:
    return pa.py_buffer(struct.pack(f"<{len(values)}i", *values))


def _bad_content(kind: str) -> Callable[[pa.Table], bytes]:
    def forge(table: pa.Table) -> bytes:
        n = table.num_rows
        if kind == "offsets not monotonic":
            arr = pa.Array.from_buffers(
                pa.string(), n, [None, _int32s(0, 4, 1, *[6] * (n - 2)), pa.py_buffer(b"abcdef")]
            )
            return _column(table, "s", arr)
        if kind == "invalid utf8":
            arr = pa.Array.from_buffers(
                pa.string(),
                n,
                [None, _int32s(*range(0, 2 * (n + 1), 2)), pa.py_buffer(b"\xff\xfe" * n)],
            )
            return _column(table, "s", arr)
        raise ValueError(kind)

    return forge


# good_table's batch. Nodes: i 0, s 1, l 2, its values 3, m 4, its entries 5, keys 6, values
# 7, st 8, st.x 9, st.y 10. Buffers: i: validity 0, data 1; s: validity 2, offsets 3, data 4;
# l: 5, offsets 6; its values 7, data 8; m: 9, offsets 10; entries 11; keys 12, 13, 14;
# values 15, 16; st 17; st.x 18, 19; st.y 20, 21, 22.
METADATA_LIES: dict[str, Callable[[bytes], bytes]] = {
    "rows huge": _lie("rows", 0, lambda _v, _n: 1 << 40),
    "rows negative": _lie("rows", 0, lambda _v, _n: -8),
    "node length beyond the buffers": _lie("node.length", 1, lambda _v, _n: 1000),
    "node length negative": _lie("node.length", 0, lambda _v, _n: -1),
    "list values length negative": _lie("node.length", 3, lambda _v, _n: -8),
    "list values length most negative": _lie("node.length", 3, lambda _v, _n: -(2**63)),
    "list values shorter than the offsets": _lie("node.length", 3, lambda _v, _n: 1),
    "map keys length negative": _lie("node.length", 6, lambda _v, _n: -8),
    "map values length most negative": _lie("node.length", 7, lambda _v, _n: -(2**63)),
    "struct field length negative": _lie("node.length", 9, lambda _v, _n: -1),
    "struct field length most negative": _lie("node.length", 10, lambda _v, _n: -(2**63)),
    "null count beyond the length": _lie("node.null_count", 0, lambda _v, _n: 1000),
    "null count negative": _lie("node.null_count", 1, lambda _v, _n: -5),
    "list values null count beyond their length": _lie("node.null_count", 3, lambda *_: 1 << 20),
    "buffer length beyond the body": _lie("buffer.length", 4, lambda _v, n: n * 16),
    "buffer offset beyond the body": _lie("buffer.offset", 1, lambda _v, n: n * 16),
    "buffer length negative": _lie("buffer.length", 3, lambda _v, _n: -8),
    "buffer offset negative": _lie("buffer.offset", 8, lambda _v, _n: -16),
    "list offsets buffer too short": _lie("buffer.length", 6, lambda _v, _n: 4),
    "map offsets buffer empty": _lie("buffer.length", 10, lambda _v, _n: 0),
    "string data shorter than its offsets": _lie("buffer.length", 4, lambda _v, _n: 1),
    "body length beyond the payload": _lie("body_length", 0, lambda v, n: v + 4 * n),
    "body length negative": _lie("body_length", 0, lambda _v, _n: -1),
}
CONTENT_LIES = [
    "offsets not monotonic",
    "invalid utf8",
]


def forged_payloads(start: int, rows: int) -> dict[str, bytes]:
    """Every crash class, each one payload of good_table's schema that lies about itself."""
    from enrgdaq_core.tables import encode_table

    table = good_table(start, rows)
    good = encode_table(table)
    out = {name: forge(good) for name, forge in METADATA_LIES.items()}
    out.update({name: _bad_content(name)(table) for name in CONTENT_LIES})
    return out
