"""The byte-stream carrier of the envelope: pipes and raw run files.

Layout (little-endian; docs/wire-format.md is the specification):

    file header:  magic(8) version:u16 flags:u16 meta_len:u32 meta_crc:u32 meta(msgpack map)
    record:       marker(4) body_len:u32 body_crc:u32 body
    body:         topic_len:u16 header_len:u32 topic header payload

Every record is checked (marker, length, CRC-32), so a torn or corrupt tail is reported with its
byte offset and record number and everything before it is kept.
"""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import msgspec

from enrgdaq_core.envelope import (
    HEADER_MAX_BYTES,
    Envelope,
    EnvelopeError,
    decode_header,
    encode_header,
)

__all__ = [
    "MAGIC",
    "MAX_BODY",
    "MAX_META",
    "RECORD_MARKER",
    "VERSION",
    "Record",
    "StreamDamage",
    "StreamError",
    "StreamMeta",
    "StreamReader",
    "StreamWriter",
    "file_header",
    "read_envelopes",
    "read_file_header",
    "record_bytes",
]

MAGIC = b"\x89EDAQ\r\n\x1a"
VERSION = 1
RECORD_MARKER = b"\x1eREC"
MAX_BODY = 0x7FFF_FFFF  # records over 2 GiB are refused: a bad length must not exhaust memory
MAX_META = 32 << 20
"""The largest file header meta (a config snapshot is at most 16 MiB): a longer meta_len is
damage, never a 4 GiB read. docs/wire-format.md lists every limit."""
_READ_CHUNK = 16 << 20  # lengths above this are read as the bytes arrive, not reserved first

_FILE_HEAD = struct.Struct("<8sHHII")
_RECORD_HEAD = struct.Struct("<4sII")
_BODY_HEAD = struct.Struct("<HI")


class StreamError(Exception):
    """The stream is not ours at all (bad magic, unsupported version)."""


class StreamDamage(StreamError):
    """A torn or corrupt record: everything before `offset` was good."""

    def __init__(self, reason: str, offset: int, record: int) -> None:
        self.reason = reason
        self.offset = offset
        self.record = record
        super().__init__(f"{reason} at byte {offset} (record {record})")


@dataclass(slots=True)
class StreamMeta:
    """What the file header says: who wrote the stream, for which run, with which configs."""

    version: int
    meta: dict[str, Any]
    size: int = 0  # bytes the file header takes in the stream

    @property
    def run(self) -> int:
        """The run number the writer put in the meta (0: none)."""
        return int(self.meta.get("run", 0))


def file_header(meta: dict[str, Any] | None = None) -> bytes:
    """The file header bytes: magic, version and `meta` (msgpack, with `created_ns`)."""
    body = msgspec.msgpack.encode({"created_ns": time.time_ns(), **(meta or {})})
    if len(body) > MAX_META:
        raise StreamError(f"file header meta of {len(body)} bytes exceeds {MAX_META}")
    return _FILE_HEAD.pack(MAGIC, VERSION, 0, len(body), zlib.crc32(body)) + body


def record_bytes(env: Envelope) -> list[bytes | memoryview]:
    """The record for one envelope, as a list of buffers (payload not copied)."""
    topic = env.topic.encode()
    header = encode_header(env.header)
    if (
        len(topic) > 0xFFFF
        or len(header) > HEADER_MAX_BYTES
        or len(topic) + len(header) + len(env.payload) > MAX_BODY - 6
    ):
        # refused here, or every reader would stop at this record as damaged
        raise EnvelopeError(
            f"{env.topic[:40]!r}: a record holds a topic of at most 65535 bytes, a header of "
            f"at most {HEADER_MAX_BYTES} and at most {MAX_BODY} bytes in all"
        )
    head = _BODY_HEAD.pack(len(topic), len(header)) + topic + header
    crc = zlib.crc32(env.payload, zlib.crc32(head))
    return [_RECORD_HEAD.pack(RECORD_MARKER, len(head) + len(env.payload), crc), head, env.payload]


class StreamWriter:
    """Writes envelopes as records to a binary file object (a pipe, a run file).

    It never flushes by itself: the owner decides (a pipe output every FLUSH_EVERY, a run
    file at each index block).

    Parameters
    ----------
    fileobj:
        Where records go (opened in binary mode).
    meta:
        The file header's meta (`writer`, `source`, `run`, ...).
    header:
        False writes records only (a stream that continues another).
    """

    def __init__(
        self, fileobj: BinaryIO, meta: dict[str, Any] | None = None, *, header: bool = True
    ) -> None:
        self._f = fileobj
        self.bytes_written = 0
        self.records = 0
        if header:
            head = file_header(meta)
            fileobj.write(head)
            self.bytes_written = len(head)

    def write(self, env: Envelope) -> int:
        """Append one record; returns its byte offset in the stream."""
        offset = self.bytes_written
        for part in record_bytes(env):
            self._f.write(part)
            self.bytes_written += len(part)
        self.records += 1
        return offset

    def write_record(self, record: Record) -> int:
        """Append a record exactly as a StreamReader read it (checked then, not re-encoded)."""
        offset = self.bytes_written
        self._f.write(record.head)
        self._f.write(record.body)
        self.bytes_written += len(record.head) + len(record.body)
        self.records += 1
        return offset

    def flush(self) -> None:
        self._f.flush()


def _read_exact(f: BinaryIO, n: int) -> bytes:
    """`n` bytes, or fewer at the end of the input; memory grows with what arrives, so a
    length that lies (a 2 GiB record on a 100-byte pipe) costs nothing."""
    if n > _READ_CHUNK:
        return _read_chunked(f, n)
    data = f.read(n)
    if data is None:  # non-blocking file object: treat as not ready
        data = b""
    if len(data) == n or not data:
        return data
    chunks = [data]
    got = len(data)
    while got < n:
        more = f.read(n - got)
        if not more:
            break
        chunks.append(more)
        got += len(more)
    return b"".join(chunks)


def _read_chunked(f: BinaryIO, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        more = f.read(min(_READ_CHUNK, n - len(buf)))
        if not more:
            break
        buf += more
    return bytes(buf)


def read_file_header(f: BinaryIO, *, offset: int = 0) -> StreamMeta:
    """Read and check the file header at the start of `f` (StreamError if it is not one)."""
    head = _read_exact(f, _FILE_HEAD.size)
    if not head:
        raise StreamError("empty stream: no file header")
    return _file_header_after(head, f, offset, 0)


def _file_header_after(head: bytes, f: BinaryIO, offset: int, record: int) -> StreamMeta:
    """The file header whose first bytes are `head`; the rest is read from `f`.

    Shared by the stream's first header and by headers of concatenated streams.
    """
    if len(head) < _FILE_HEAD.size and MAGIC.startswith(head[:8]):
        raise StreamDamage("truncated file header", offset, record)
    if head[:8] != MAGIC:
        raise StreamError(
            f"not an enrgdaq stream (expected magic {MAGIC!r} at byte {offset}, got {head[:8]!r})"
        )
    _, version, _flags, meta_len, meta_crc = _FILE_HEAD.unpack(head)
    if version > VERSION:
        raise StreamError(
            f"stream version {version} at byte {offset} is newer than this reader ({VERSION})"
        )
    if meta_len > MAX_META:
        raise StreamDamage(f"impossible file header length {meta_len}", offset, record)
    body = _read_exact(f, meta_len)
    if len(body) < meta_len:
        raise StreamDamage("truncated file header", offset, record)
    if zlib.crc32(body) != meta_crc:
        raise StreamDamage("file header checksum mismatch", offset, record)
    try:
        meta = msgspec.msgpack.decode(body)
    except (msgspec.DecodeError, RecursionError):  # RecursionError: nested past any sense
        raise StreamDamage("undecodable file header", offset, record) from None
    return StreamMeta(version, meta if isinstance(meta, dict) else {}, _FILE_HEAD.size + meta_len)


@dataclass(slots=True)
class Record:
    """One record as read: where it was, its number and its envelope."""

    offset: int  # byte offset of the record in the stream
    index: int  # record number, from 0, across concatenated streams
    envelope: Envelope
    head: bytes = b""  # the record as read (marker, length, crc) and its body: a copy of the
    body: bytes = b""  # record can be written verbatim (StreamWriter.write_record)


class StreamReader:
    """Iterates the records of a stream; raises StreamDamage after the last good one.

    Streams may be concatenated (`cat a.raw b.raw`): a second file header is accepted where a
    record would start, and its meta replaces the current one.

    Parameters
    ----------
    fileobj:
        The stream (a pipe, a file), read sequentially.
    offset:
        Byte offset the reader starts at (reported in records and damage).
    expect_header:
        False for a record-only stream (a writer with `header=False`).
    skip_undecodable:
        True: a record whose length and checksum are right but whose envelope does not decode
        (a garbled topic or header written by a buggy or hostile writer) is counted in
        `undecodable` and skipped, as a consumer of the broker skips such a message: the
        framing is intact, so the records after it are read. False: it ends the stream as
        damage (tools that check a file, `daq replay --info`, want to hear about it).
    """

    def __init__(
        self,
        fileobj: BinaryIO,
        *,
        offset: int = 0,
        expect_header: bool = True,
        skip_undecodable: bool = False,
    ) -> None:
        self._f = fileobj
        self.offset = offset
        self.index = 0
        self.skip_undecodable = skip_undecodable
        self.undecodable = 0
        self.meta = StreamMeta(VERSION, {})
        if expect_header:
            self.meta = read_file_header(fileobj, offset=offset)
            self.offset = offset + self.meta.size

    def __iter__(self) -> Iterator[Record]:
        return self

    def __next__(self) -> Record:
        f = self._f
        while True:
            start = self.offset
            head = _read_exact(f, _RECORD_HEAD.size)
            if not head:
                raise StopIteration
            if len(head) < _RECORD_HEAD.size:
                raise StreamDamage("truncated record header", start, self.index)
            marker, body_len, crc = _RECORD_HEAD.unpack(head)
            if marker != RECORD_MARKER:
                if head[:8] == MAGIC:
                    self._concatenated(head)
                    continue
                raise StreamDamage("bad record marker", start, self.index)
            if body_len > MAX_BODY or body_len < _BODY_HEAD.size:
                raise StreamDamage(f"impossible record length {body_len}", start, self.index)
            body = _read_exact(f, body_len)
            if len(body) < body_len:
                raise StreamDamage(
                    f"truncated record (wanted {body_len} bytes, got {len(body)})",
                    start,
                    self.index,
                )
            if zlib.crc32(body) != crc:
                raise StreamDamage("record checksum mismatch", start, self.index)
            try:
                env = _decode_body(memoryview(body))
            except EnvelopeError as exc:
                if not self.skip_undecodable:
                    raise StreamDamage(f"undecodable record ({exc})", start, self.index) from None
                self.undecodable += 1
                self.offset = start + _RECORD_HEAD.size + body_len
                self.index += 1
                continue
            self.offset = start + _RECORD_HEAD.size + body_len
            rec = Record(start, self.index, env, head, body)
            self.index += 1
            return rec

    def _concatenated(self, first: bytes) -> None:
        start = self.offset
        head = first + _read_exact(self._f, _FILE_HEAD.size - len(first))
        self.meta = _file_header_after(head, self._f, start, self.index)
        self.offset = start + self.meta.size


def _decode_body(body: memoryview) -> Envelope:
    topic_len, header_len = _BODY_HEAD.unpack_from(body)
    pos = _BODY_HEAD.size
    if pos + topic_len + header_len > len(body):
        raise EnvelopeError(
            f"topic ({topic_len}) and header ({header_len}) lengths exceed the record body"
        )
    try:
        topic = bytes(body[pos : pos + topic_len]).decode()
    except UnicodeDecodeError:
        raise EnvelopeError("topic is not UTF-8") from None
    pos += topic_len
    header = decode_header(body[pos : pos + header_len])
    pos += header_len
    return Envelope(topic, header, body[pos:])


def read_envelopes(fileobj: BinaryIO) -> Iterator[Envelope]:
    """Every envelope of a stream, in order (StreamDamage after the last good one)."""
    for rec in StreamReader(fileobj):
        yield rec.envelope
