"""Raw run files: the envelope stream on disk, plus run metadata and a seek index.

A run file is a plain stream (`stream.py`): file header, then one checksummed record per
message. This module adds what a *run* needs on top (docs/raw-files.md is the specification):

- the file header meta: `format = "enrgdaq-run"`, run number, run start, node, part number,
  and the config snapshot when the store was given one;
- a sidecar index `FILE.idx` (for `run42.raw`: `run42.raw.idx`) written as records go: one
  fixed-size, checksummed entry per block of records (offset, first record number, count,
  byte length, min/max send time). It is written after the data it points to, at every flush,
  so after a kill -9 it never points past what is on disk. Replay uses it to seek by record
  number or time without reading from the start, and scans when it is missing or stale.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from enrgdaq_core.atomic import atomic_write
from enrgdaq_core.envelope import Envelope, node_name
from enrgdaq_core.stream import (
    RECORD_MARKER,
    Record,
    StreamDamage,
    StreamError,
    StreamMeta,
    StreamReader,
    StreamWriter,
    read_file_header,
)

__all__ = [
    "BLOCK_BYTES",
    "BLOCK_RECORDS",
    "FINAL",
    "FORMAT",
    "INDEX_MAGIC",
    "INDEX_SUFFIX",
    "INDEX_VERSION",
    "SNAPSHOT_MAX_BYTES",
    "IndexEntry",
    "RunFileError",
    "RunFileWriter",
    "RunIndex",
    "RunPart",
    "build_index",
    "config_snapshot",
    "index_path",
    "open_part",
    "order_parts",
    "read_index",
    "resync",
    "run_meta",
]

FORMAT = "enrgdaq-run"
INDEX_SUFFIX = ".idx"
INDEX_MAGIC = b"\x89EDAQIX\n"
INDEX_VERSION = 1
BLOCK_RECORDS = 1024  # an index entry closes after this many records...
BLOCK_BYTES = 1 << 20  # ...or this many bytes, whichever comes first
SNAPSHOT_MAX_BYTES = 16 << 20  # of TOML text; stream.MAX_META (the whole meta) leaves room

# magic, version, flags, data header size, data created_ns, block_records, block_bytes, crc
_INDEX_HEAD = struct.Struct("<8sHHIqIII")
# offset, first record, count, nbytes, min time, max time, flags, crc
_ENTRY = struct.Struct("<QQIIqqII")
_MIN_RECORD = 18  # record head (12) + body head (6): the smallest record a stream can hold
FINAL = 1  # entry flag: the writer closed the file cleanly right after this block


class RunFileError(StreamError):
    """A file that cannot be replayed at all (missing, not ours): the message names it."""


def index_path(path: str | Path) -> Path:
    """The sidecar index of a run file: `run42.raw` -> `run42.raw.idx`."""
    path = Path(path)
    return path.with_name(path.name + INDEX_SUFFIX)


# -- header meta --------------------------------------------------------------------------


def config_snapshot(spec: str | Path) -> dict[str, Any]:
    """The text of a config file, or of every *.toml under a directory, for the file header.

    Text, not parsed values: the snapshot reproduces the files byte for byte.
    """
    root = Path(spec)
    if root.is_dir():
        paths = sorted(p for p in root.rglob("*.toml") if p.is_file())
        names = [str(p.relative_to(root)) for p in paths]
    elif root.is_file():
        paths, names = [root], [root.name]
    else:
        raise FileNotFoundError(f"config snapshot {spec}: no such file or directory")
    files: dict[str, str] = {}
    total = 0
    for name, p in zip(names, paths, strict=True):
        text = p.read_text(errors="replace")
        total += len(text.encode())  # bytes, as the file header's meta limit counts them
        if total > SNAPSHOT_MAX_BYTES:
            raise ValueError(
                f"config snapshot {spec}: more than {SNAPSHOT_MAX_BYTES >> 20} MiB of TOML"
            )
        files[name] = text
    return {"path": str(root.resolve()), "taken_ns": time.time_ns(), "files": files}


def run_meta(
    *,
    run: int,
    run_start_ns: int,
    part: int = 0,
    snapshot: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    writer: str = "daq store raw",
) -> dict[str, Any]:
    """The file-header meta of one run file part. `extra` adds fields (it may set run_start_ns)."""
    meta: dict[str, Any] = {
        "run": run,
        "run_start_ns": run_start_ns,
        "node": node_name(),
        "part": part,
    }
    meta.update(extra or {})
    if snapshot is not None:
        meta["config"] = snapshot
    meta.update({"format": FORMAT, "writer": writer, "created_ns": time.time_ns()})
    return meta


# -- the index ----------------------------------------------------------------------------


@dataclass(slots=True)
class IndexEntry:
    """One index block: where it starts, its first record, how many, its time range."""

    offset: int
    record: int
    count: int
    nbytes: int
    tmin: int
    tmax: int
    flags: int = 0

    @property
    def end_offset(self) -> int:
        return self.offset + self.nbytes

    @property
    def end_record(self) -> int:
        return self.record + self.count

    def pack(self) -> bytes:
        body = _ENTRY.pack(
            self.offset, self.record, self.count, self.nbytes, self.tmin, self.tmax, self.flags, 0
        )[:-4]
        return body + struct.pack("<I", zlib.crc32(body))


@dataclass(slots=True)
class RunIndex:
    """A run file's index as read: its blocks, and whether they cover the whole file."""

    entries: list[IndexEntry]
    complete: bool  # the last entry ends the file (clean close): counts are exact without a scan
    path: Path | None = None
    _suffix_min: list[int] = field(default_factory=list, repr=False)

    @property
    def end_offset(self) -> int:
        return self.entries[-1].end_offset if self.entries else 0

    @property
    def end_record(self) -> int:
        return self.entries[-1].end_record if self.entries else 0

    def for_record(self, record: int) -> int:
        """Position of the block holding `record`; len(entries) if beyond the indexed part."""
        lo, hi = 0, len(self.entries)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.entries[mid].end_record <= record:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def for_time(self, time_ns: int) -> int:
        """Position of the first block holding a record sent at or after `time_ns`."""
        for pos, entry in enumerate(self.entries):  # max times are not monotonic across blocks
            if entry.count and entry.tmax >= time_ns:
                return pos
        return len(self.entries)

    def nothing_after(self, entry_pos: int, time_ns: int) -> bool:
        """True if no indexed block from `entry_pos` on has a record sent at or before time_ns."""
        if not self._suffix_min:
            out = [0] * len(self.entries)
            low = 2**63 - 1
            for i in range(len(self.entries) - 1, -1, -1):
                e = self.entries[i]
                if e.count:
                    low = min(low, e.tmin)
                out[i] = low
            self._suffix_min = out
        return entry_pos < len(self._suffix_min) and self._suffix_min[entry_pos] > time_ns


class _Blocks:
    """Cuts a sequence of records into index blocks (shared by the writer and `build_index`)."""

    def __init__(self, block_records: int = BLOCK_RECORDS, block_bytes: int = BLOCK_BYTES) -> None:
        self.block_records = block_records
        self.block_bytes = block_bytes
        self.current: IndexEntry | None = None
        self.done: list[IndexEntry] = []

    def add(self, offset: int, record: int, nbytes: int, time_ns: int) -> None:
        blk = self.current
        if blk is None:
            blk = self.current = IndexEntry(offset, record, 0, 0, time_ns, time_ns)
        blk.count += 1
        blk.nbytes += nbytes
        if time_ns < blk.tmin:
            blk.tmin = time_ns
        if time_ns > blk.tmax:
            blk.tmax = time_ns
        if blk.count >= self.block_records or blk.nbytes >= self.block_bytes:
            self.done.append(blk)
            self.current = None

    def finish(self, end_offset: int, end_record: int) -> None:
        """Close the open block and mark the file complete (an empty block if none is open)."""
        blk = self.current or IndexEntry(end_offset, end_record, 0, 0, 0, 0)
        blk.flags |= FINAL
        self.done.append(blk)
        self.current = None

    def take(self) -> bytes:
        out = b"".join(e.pack() for e in self.done)
        self.done.clear()
        return out


def _index_head(head: StreamMeta, block_records: int, block_bytes: int) -> bytes:
    created = int(head.meta.get("created_ns", 0))
    body = _INDEX_HEAD.pack(
        INDEX_MAGIC, INDEX_VERSION, 0, head.size, created, block_records, block_bytes, 0
    )[:-4]
    return body + struct.pack("<I", zlib.crc32(body))


def read_index(path: str | Path, head: StreamMeta, data_size: int) -> RunIndex | None:
    """The sidecar index of a run file, or None if missing, stale or unreadable.

    Entries are taken up to the first torn, corrupt or inconsistent one, and only as far as
    the data file reaches: a partial index only means more scanning, never a wrong answer.
    """
    ipath = index_path(path)
    # at most one entry per record: a longer index (damaged, forged) is not read past that
    most = _INDEX_HEAD.size + _ENTRY.size * (data_size // _MIN_RECORD + 1)
    try:
        with open(ipath, "rb") as f:
            raw = f.read(most)
    except OSError:
        return None
    if len(raw) < _INDEX_HEAD.size or raw[:8] != INDEX_MAGIC:
        return None
    fields = _INDEX_HEAD.unpack_from(raw)
    _, version, _flags, head_size, created, _br, _bb, crc = fields
    if version > INDEX_VERSION or zlib.crc32(raw[: _INDEX_HEAD.size - 4]) != crc:
        return None
    if head_size != head.size or created != int(head.meta.get("created_ns", 0)):
        return None  # an index of another file (the data file was replaced)
    entries: list[IndexEntry] = []
    complete = False
    pos = _INDEX_HEAD.size
    next_offset, next_record = head.size, 0
    while pos + _ENTRY.size <= len(raw):
        chunk = raw[pos : pos + _ENTRY.size]
        pos += _ENTRY.size
        *values, ecrc = _ENTRY.unpack(chunk)
        if zlib.crc32(chunk[:-4]) != ecrc:
            break
        e = IndexEntry(*values)
        if e.offset != next_offset or e.record != next_record or e.end_offset > data_size:
            break
        entries.append(e)
        next_offset, next_record = e.end_offset, e.end_record
        if e.flags & FINAL:
            complete = e.end_offset == data_size
            break
    return RunIndex(entries, complete, ipath)


# -- writing ------------------------------------------------------------------------------


class RunFileWriter:
    """Writes one run file part and its index. Never replaces an existing file unless asked.

    `flush()` pushes the data, then the index entries of completed blocks: what a kill -9
    leaves is a readable file and an index that points only at flushed records.
    """

    def __init__(
        self,
        path: str | Path,
        meta: dict[str, Any],
        *,
        overwrite: bool = False,
        index: bool = True,
        block_records: int = BLOCK_RECORDS,
        block_bytes: int = BLOCK_BYTES,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        meta = dict(meta)
        meta.setdefault("created_ns", time.time_ns())
        self._f: BinaryIO = open(self.path, "wb" if overwrite else "xb")  # noqa: SIM115
        self.writer = StreamWriter(self._f, meta)
        self.head = StreamMeta(1, meta, self.writer.bytes_written)
        self.opened = time.time()
        self._blocks = _Blocks(block_records, block_bytes)
        self._idx: BinaryIO | None = None
        if index:
            self._idx = open(index_path(self.path), "wb", buffering=0)  # noqa: SIM115
            self._idx.write(_index_head(self.head, block_records, block_bytes))
        self.closed = False

    @property
    def size(self) -> int:
        return self.writer.bytes_written

    @property
    def records(self) -> int:
        return self.writer.records

    def write(self, env: Envelope) -> int:
        offset = self.writer.write(env)
        self._blocks.add(
            offset, self.writer.records - 1, self.writer.bytes_written - offset, env.header.time_ns
        )
        return offset

    def write_record(self, record: Record) -> int:
        """A record exactly as it was read from another stream (see StreamWriter)."""
        offset = self.writer.write_record(record)
        self._blocks.add(
            offset,
            self.writer.records - 1,
            self.writer.bytes_written - offset,
            record.envelope.header.time_ns,
        )
        return offset

    def flush(self) -> None:
        self._f.flush()
        if self._idx is not None and self._blocks.done:
            self._idx.write(self._blocks.take())

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._blocks.finish(self.writer.bytes_written, self.writer.records)
        try:
            self.flush()
        finally:
            self._f.close()
            if self._idx is not None:
                self._idx.close()


# -- reading ------------------------------------------------------------------------------


@dataclass(slots=True)
class RunPart:
    """One file of a run as replay sees it: header meta, size, index (if usable)."""

    path: Path
    head: StreamMeta
    size: int
    index: RunIndex | None

    @property
    def meta(self) -> dict[str, Any]:
        return self.head.meta

    @property
    def run(self) -> int:
        return self.head.run

    @property
    def created_ns(self) -> int:
        return int(self.meta.get("created_ns", 0))

    @property
    def part(self) -> int:
        return int(self.meta.get("part", 0))

    def reader(self, f: BinaryIO, offset: int | None = None, record: int = 0) -> StreamReader:
        """A reader positioned at `offset` (default: the first record) numbering from `record`."""
        start = self.head.size if offset is None else offset
        f.seek(start)
        reader = StreamReader(f, offset=start, expect_header=False)
        reader.meta = self.head
        reader.index = record
        return reader


def open_part(path: str | Path, *, use_index: bool = True) -> RunPart:
    """Read a run file's header (and index); RunFileError with a clear message otherwise."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = read_file_header(f)
    except FileNotFoundError:
        raise RunFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise RunFileError(f"{path}: is a directory, expected a run file") from None
    except PermissionError:
        raise RunFileError(f"{path}: permission denied") from None
    except StreamDamage as exc:
        raise RunFileError(f"{path}: damaged file header ({exc.reason})") from None
    except StreamError as exc:
        raise RunFileError(f"{path}: not an enrgdaq run file ({exc})") from None
    index = read_index(path, head, size) if use_index else None
    return RunPart(path, head, size, index)


def order_parts(parts: list[RunPart]) -> list[RunPart]:
    """Parts in the order they were written: by the time each was opened, then part number."""
    return sorted(parts, key=lambda p: (p.created_ns, p.part, str(p.path)))


def resync(part: RunPart, f: BinaryIO, damage: StreamDamage) -> tuple[int, int | None] | None:
    """Where reading can go on after damage: (offset, record number or None if unknown).

    With an index: the next indexed block (exact record numbers). Without: the next record
    marker whose record checks out (length within the file, checksum good).
    """
    idx = part.index
    if idx is not None:
        for e in idx.entries:
            if e.offset > damage.offset and e.count:
                return e.offset, e.record
    pos = damage.offset + 1
    chunk = 1 << 20
    while pos < part.size:
        f.seek(pos)
        data = f.read(chunk + len(RECORD_MARKER) - 1)
        if not data:
            return None
        at = data.find(RECORD_MARKER)
        if at < 0:
            pos += max(1, len(data) - len(RECORD_MARKER) + 1)
            continue
        cand = pos + at
        # record head: marker(4) body_len:u32 body_crc:u32 (stream.py); a bogus length must not
        # make us read gigabytes, so check it fits in the file first
        f.seek(cand + len(RECORD_MARKER))
        raw_len = f.read(4)
        if len(raw_len) == 4 and cand + 12 + struct.unpack("<I", raw_len)[0] <= part.size:
            f.seek(cand)
            try:
                next(StreamReader(f, offset=cand, expect_header=False))
                return cand, None
            except (StreamDamage, StopIteration):
                pass
        pos = cand + 1
    return None


def build_index(
    path: str | Path,
    *,
    block_records: int = BLOCK_RECORDS,
    block_bytes: int = BLOCK_BYTES,
) -> tuple[int, StreamDamage | None]:
    """Write the sidecar index of an existing stream file by scanning it once.

    For files recorded without one (`daq tap -o - ... > x.raw`). Returns (records, damage): the
    index covers the records before any damage and is then marked incomplete.
    """
    part = open_part(path, use_index=False)
    blocks = _Blocks(block_records, block_bytes)
    damage: StreamDamage | None = None
    with open(part.path, "rb") as f:
        reader = part.reader(f)
        try:
            for rec in reader:
                blocks.add(
                    rec.offset, rec.index, reader.offset - rec.offset, rec.envelope.header.time_ns
                )
        except StreamDamage as exc:
            damage = exc
    if damage is None:
        blocks.finish(reader.offset, reader.index)
    elif blocks.current is not None:
        blocks.done.append(blocks.current)
    atomic_write(
        index_path(path), _index_head(part.head, block_records, block_bytes) + blocks.take()
    )
    return reader.index, damage
