"""Feeds one backend from an input: routing, batching, flushing, rotation, retries, stats.

One loop, one thread. Messages are grouped per (source, run) into buffers; a buffer is written
when it holds `flush_rows` rows, `flush_mb` of payload, or its oldest row is `flush_seconds`
old, so a 1 kHz stream of 1-row messages becomes large batches. A backend that fails
transiently keeps its rows here (bounded by `max_pending_rows` / `max_pending_mb`; past that
the runner stops reading, so backpressure reaches the producer instead of anything being
dropped) and is retried with backoff.

Errors never stop the store: an undecodable message or one of a kind the backend does not
store is counted (`bad_messages`) and logged; a duplicate (a source, epoch and sequence number
already seen) is counted (`duplicates`) and not written again; a file write that fails with an OS error (disk
full) keeps the rows and retries into a new file part; rows a backend rejects outright (a
value it cannot represent) are counted (`rejected_rows`) and logged with the reason.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import msgspec

from enrgdaq_core.atomic import atomic_write
from enrgdaq_core.backoff import Backoff
from enrgdaq_core.channels import EndOfInput, Input
from enrgdaq_core.envelope import DATA_KINDS, Envelope, EnvelopeError, Header, Kind, Source
from enrgdaq_core.signals import StopFlag
from enrgdaq_core.stats import DUPLICATE, Meter
from enrgdaq_core.stores.base import (
    Backend,
    Destination,
    EnvelopeBackend,
    EnvelopeWriter,
    TableBackend,
    TableWriter,
    TransientError,
)
from enrgdaq_core.stores.outputs import check_store_outputs
from enrgdaq_core.stores.paths import date_string, file_path, outside
from enrgdaq_core.timefmt import parse_period
from enrgdaq_core.transport import TelemetryPublisher

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger("enrgdaq.store")

__all__ = ["StoreResult", "StoreRunner"]

RETRY_FIRST = 0.5
RETRY_MAX = 10.0
SHUTDOWN_RETRY_SECONDS = 15.0
TICK_SECONDS = 0.2  # the longest the loop waits for input before checking timers


@dataclass
class _Slot:
    """One source's open destination and its not-yet-written rows."""

    source: str
    run: int
    settings: Any
    settings_raw: dict[str, Any]
    dest: Destination
    flush_rows: int
    flush_seconds: float
    flush_bytes: int
    writer: TableWriter | EnvelopeWriter | None = None
    schema: pa.Schema | None = None
    buffer: list[Any] = field(default_factory=list)  # tables, or envelopes for the raw store
    rows: int = 0
    nbytes: int = 0
    since: float = 0.0  # monotonic time of the oldest buffered row
    retry_at: float = 0.0
    retry: Backoff = field(default_factory=lambda: Backoff(RETRY_FIRST, RETRY_MAX))
    last: tuple[int, int] | None = None  # (epoch, seq) of the newest buffered message
    refused: bool = False  # the header's file_path left out_dir: writes the default name


@dataclass(slots=True)
class _Series:
    """The current file of one file name (before rotation stamps): what its slots share.

    Every source whose destination resolves to the same name writes the same current file,
    and they rotate together: the runner is the one owner of rotation.
    """

    path: Path  # the current file (with its rotation stamp)
    opened_at: float
    run: int
    append: bool = True  # False right after a rotation: the new file must be a new one


@dataclass
class StoreResult:
    meter: Meter
    failed_rows: int = 0  # rows that could not be written before giving up at shutdown
    damage: Exception | None = None


class _Throttle:
    """At most one log line per key and interval, with the count of what it held back."""

    def __init__(self, interval: float = 5.0) -> None:
        self.interval = interval
        self._next: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def __call__(self, key: str) -> int | None:
        """None: stay quiet; else how many lines were held back since the last one."""
        now = time.monotonic()
        if now < self._next.get(key, 0.0):
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._next[key] = now + self.interval
        return self._held.pop(key, 0)


class StoreRunner:
    """Feeds one backend from an input: the store loop every backend shares.

    Routes each message by its header's `[store_config.<backend>]` settings (or `destination`
    and `settings_override`, the `daq store` flags), batches rows per source, flushes by rows,
    bytes or age, rotates, opens new destinations on schema changes, retries a failing
    backend without dropping rows (backpressure past `max_pending_*`), checks sequence
    numbers and sends a stats heartbeat.

    Parameters: `backend` (a TableBackend or an EnvelopeBackend), `name` (the piece name in
    stats), `telemetry` (where heartbeats go; None sends none), `stats_interval` (seconds),
    `require_target` (count and skip messages whose header does not name this backend),
    `state_file` (the last written sequence number per source, so a restarted store counts
    exactly what it missed). `run(input, stop)` drives it; `handle(env)` feeds one message.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        name: str,
        settings_override: dict[str, Any] | None = None,
        destination: str | None = None,
        telemetry: TelemetryPublisher | None = None,
        stats_interval: float = 1.0,
        require_target: bool = False,
        state_file: Path | None = None,
    ) -> None:
        if not isinstance(backend, (TableBackend, EnvelopeBackend)):
            raise TypeError(
                f"{type(backend).__name__} must subclass TableBackend or EnvelopeBackend"
            )
        check_store_outputs(
            backend, name=name, destination=destination, overrides=settings_override or {}
        )
        self.backend = backend
        self._envelopes = isinstance(backend, EnvelopeBackend)  # whole envelopes, not rows
        self.require_target = require_target
        self.not_targeted = 0
        self.name = name
        self.override = settings_override or {}
        self.destination = destination
        self.telemetry = telemetry
        self.stats_interval = stats_interval
        self.meter = Meter(name, "store")
        self._stats_source = Source(name, topic=f"stats.{name}")
        self._slots: dict[tuple[str, int], _Slot] = {}
        # finished slots (end of stream, new run, new settings) whose rows a failing
        # backend has not taken yet: retried like the others, closed once written
        self._retiring: list[_Slot] = []
        self._ended_sources: set[str] = set()
        self._seen_sources: set[str] = set()
        self._series: dict[Path, _Series] = {}  # file name without stamp -> current file
        self._written_paths: set[str] = set()  # files this process opened (overwrite once)
        self._sizes: dict[str, int] = {}  # bytes of each open file at its last write
        self._throttle = _Throttle()
        self.files: list[str] = []
        self.files_opened = 0
        self.bad_messages = 0  # undecodable here, or of a kind this backend does not store
        self.undecodable = 0  # here: bad store settings, a payload that does not decode
        self.wrong_kind = 0
        self._input: Input | None = None  # its own `undecodable`: what never reached us
        self.retries = 0
        self.write_errors = 0
        self.rejected_rows = 0
        self.refused_paths = 0  # messages whose header file_path left out_dir
        self.schema_changes = 0
        self.rotations = 0
        self.last_flush_ms = 0.0
        self.max_flush_ms = 0.0  # the slowest write since the last report
        self.rows_by_source: dict[str, int] = {}
        opts = backend.options
        self.flush_rows = opts.flush_rows or backend.default_flush_rows
        self.flush_seconds = opts.flush_seconds or backend.default_flush_seconds
        self.flush_bytes = int(opts.flush_mb * 1e6) or backend.default_flush_bytes
        self.max_pending = opts.max_pending_rows
        self.max_pending_bytes = int(opts.max_pending_mb * 1e6)
        self._tick_seconds = min(TICK_SECONDS, self.flush_seconds)
        self._state_file = state_file
        self._marks: dict[str, list[int]] = {}  # source -> [epoch, last seq written]
        if state_file is not None:
            self._load_marks()

    # -- written marks: a restarted store counts exactly what it missed ------------------

    def _load_marks(self) -> None:
        """Continue each source's sequence where the last process of this store wrote it.

        Rows a killed store had buffered, and messages sent while it was down, then show as
        a sequence gap (`lost`) in this process instead of vanishing uncounted.
        """
        assert self._state_file is not None
        try:
            data = json.loads(self._state_file.read_text())
            marks = {str(k): [int(v[0]), int(v[1])] for k, v in data["written"].items()}
        except FileNotFoundError:
            return
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            log.warning(
                "%s: ignoring unreadable state file %s: %s", self.name, self._state_file, exc
            )
            return
        seq = self.meter.sequences
        for source, (epoch, last) in marks.items():
            seq.resume(source, epoch, last)
        self._marks = marks

    def _mark(self, source: str) -> None:
        """Record where the source's sequence stands, once nothing of it is buffered: every
        message received is then written or counted. The sequence tracker's position leaves
        out jumps, so a forged number is never written as a mark."""
        if self._state_file is None:
            return
        pos = self.meter.sequences.position(source)
        if pos is None or self._marks.get(source) == list(pos):
            return
        self._marks[source] = list(pos)
        self._write_marks()

    def _mark_first(self, h: Header, gap: int) -> None:
        """Record a source's position on its first receipt, before its first row is buffered.

        Until now a source without a mark was new to a restarted store, which took its first
        message for the start of the stream: a store killed before its first completed write
        lost those rows uncounted. The mark says "nothing of this epoch written below here":
        the message's number, less one and less the gap counted just before it (the numbers
        below it were never ours, or are lost and counted again by a restarted store). One
        write per source the state file does not know; a later epoch needs none, since a
        restarted store counts a newer epoch than its mark from -1 anyway.
        """
        pos = self.meter.sequences.position(h.source)
        if pos is None or pos[0] != h.epoch:
            return  # out of epoch: the source's track did not move
        self._marks[h.source] = [h.epoch, min(pos[1], h.seq - 1 - gap)]
        self._write_marks()

    def _write_marks(self) -> None:
        assert self._state_file is not None
        try:
            atomic_write(self._state_file, json.dumps({"written": self._marks}))
        except OSError as exc:
            self._warn("state", "%s: cannot write %s: %s", self.name, self._state_file, exc)

    # -- settings and destinations -------------------------------------------------------

    def _header_settings(self, h: Header) -> dict[str, Any]:
        """The header's settings for this backend merged with the store's own (which win);
        `overwrite` only ever comes from the store's own (docs/stores.md)."""
        raw = dict(h.store.get(self.backend.name) or {})
        raw.pop("overwrite", None)
        raw.update(self.override)
        if h.source in self.backend.options.overwrite_sources and "overwrite" not in raw:
            raw["overwrite"] = True
        return raw

    def _settings(self, env: Envelope) -> tuple[Any, dict[str, Any]]:
        raw = self._header_settings(env.header)
        try:
            return msgspec.convert(raw, self.backend.Settings), raw
        except msgspec.ValidationError as exc:
            raise EnvelopeError(
                f"bad store_config.{self.backend.name} from {env.header.source}: {exc}"
            ) from None

    def _confine(self, h: Header, settings: Any) -> tuple[Any, bool]:
        """The settings with a header's `file_path` that leaves out_dir replaced by the
        default name (`<source>.<ext>` in out_dir), so the rows are kept; True if refused."""
        opts = self.backend.options
        template = getattr(settings, "file_path", "")
        if (
            not template
            or not self.backend.extension
            or self.destination
            or "file_path" in self.override
            or opts.allow_outside_out_dir
        ):
            return settings, False  # the store's own choice, or no header path at all
        try:
            path = self._path(h.source, h.run, h.tag, settings, time.time(), stamp=False)
            why = outside(path, opts.out_dir)
        except ValueError as exc:  # a name file_path cannot make (empty, ".")
            why = str(exc)
        if not why:
            return settings, False
        self._warn(
            f"path:{h.source}",
            "%s: refused file_path %r from %s (%s): writing its default file in out_dir",
            self.backend.name,
            template,
            h.source,
            why,
        )
        return msgspec.structs.replace(settings, file_path=""), True

    def _template(self, settings: Any) -> str:
        return self.destination or getattr(settings, "file_path", "")

    def _path(
        self, source: str, run: int, tag: str, settings: Any, now: float, *, stamp: bool
    ) -> Path:
        return file_path(
            self._template(settings),
            source=source,
            extension=self.backend.extension_for(settings),
            out_dir=self.backend.options.out_dir,
            run=run,
            tag=tag,
            add_date=getattr(settings, "add_date", False),
            rotating=stamp,
            now=now,
        )

    def _destination(
        self,
        source: str,
        run: int,
        tag: str,
        settings: Any,
        *,
        append: bool = True,
        new_file_at: float | None = None,
    ) -> Destination:
        """Where a slot writes: for files, the current file of its series (see _Series).

        `append` False: this slot needs a new file (a failed write, refused columns);
        `new_file_at`: the series rotates, its next file is named by this time.
        """
        dest = Destination(source=source, settings=settings, run=run, tag=tag, append=append)
        if not self.backend.extension:
            dest.name = self.destination or ""
            return dest
        now = dest.opened_at if new_file_at is None else new_file_at
        base = self._path(source, run, tag, settings, now, stamp=False)
        series = self._series.get(base)
        if series is None or (new_file_at is not None and series.opened_at < new_file_at):
            rotating = bool(getattr(settings, "rotate", "") or getattr(settings, "rotate_mb", 0))
            path = self._path(source, run, tag, settings, now, stamp=rotating)
            series = _Series(path, now, run, append=new_file_at is None)
            for key in [k for k, v in self._series.items() if v.run < run]:
                del self._series[key]  # names of runs before this one: nothing joins them
            self._series[base] = series
        dest.path, dest.series, dest.opened_at = series.path, base, series.opened_at
        dest.append = append and series.append
        dest.overwrite = bool(getattr(settings, "overwrite", False)) and (
            str(dest.path) not in self._written_paths
        )
        return dest

    def _slot_for(self, env: Envelope) -> _Slot:
        h = env.header
        key = (h.source, h.run)
        slot = self._slots.get(key)
        if slot is not None and slot.settings_raw == self._header_settings(h):
            self.refused_paths += slot.refused
            return slot
        settings, merged = self._settings(env)
        settings, refused = self._confine(h, settings)
        self.refused_paths += refused
        if slot is not None:  # the source changed its settings: finish the old destination
            self._retire(slot)
        for old_key in [k for k in self._slots if k[0] == h.source and k != key]:
            old = self._slots.pop(old_key)  # a new run of this source: close the old run's files
            self._retire(old)
        opts = self.backend.options
        slot = _Slot(
            h.source,
            h.run,
            settings,
            merged,
            self._destination(h.source, h.run, h.tag, settings),
            flush_rows=opts.flush_rows
            or getattr(settings, "flush_rows", 0)
            or self.backend.default_flush_rows,
            flush_seconds=opts.flush_seconds
            or getattr(settings, "flush_seconds", 0.0)
            or self.backend.default_flush_seconds,
            flush_bytes=self.flush_bytes,
            refused=refused,
        )
        self._tick_seconds = min(self._tick_seconds, slot.flush_seconds)
        self._slots[key] = slot
        return slot

    # -- the loop ------------------------------------------------------------------------

    def _warn(self, key: str, message: str, *args: Any) -> None:
        held = self._throttle(key)
        if held is not None:
            suffix = f" (and {held} more like it)" if held else ""
            log.warning(message + suffix, *args)

    def handle(self, env: Envelope) -> None:
        h = env.header
        seqs = self.meter.sequences
        odd = seqs.odd
        gap = self.meter.received(h, env.nbytes)
        if seqs.odd != odd:  # a duplicate, a jump or out of epoch: say so, now and then
            self._warn(
                f"seq:{h.source}",
                "%s: %s message from %s (epoch %d, seq %d)%s",
                self.name,
                seqs.last_odd,
                h.source,
                h.epoch,
                h.seq,
                " not stored again" if gap == DUPLICATE else "",
            )
            if gap == DUPLICATE:
                return
        self._seen_sources.add(h.source)
        if h.kind is Kind.EOS:
            self._ended_sources.add(h.source)
            if Kind.EOS in self.backend.kinds:
                try:
                    self._add(self._slot_for(env), env)
                except EnvelopeError as exc:  # bad settings: counted like the data was
                    self.bad_messages += 1
                    self.undecodable += 1
                    log.warning("end of stream from %s not recorded: %s", h.source, exc)
            for key in [k for k in self._slots if k[0] == h.source]:
                self._retire(self._slots.pop(key))
            if not any(s.buffer for s in self._retiring if s.source == h.source):
                self._mark(h.source)
            return
        self._ended_sources.discard(h.source)  # a source that ended and came back is open
        if h.kind not in self.backend.kinds:
            if h.kind in DATA_KINDS:  # data this backend cannot store: say so, never crash
                self.bad_messages += 1
                self.wrong_kind += 1
                self._warn(
                    f"kind:{h.source}",
                    "%s: ignored a %s message from %s (this store takes %s)",
                    self.backend.name,
                    h.kind,
                    h.source,
                    ", ".join(sorted(self.backend.kinds - {Kind.EOS})),
                )
            return  # stats, logs, run markers: not data for this store
        if self.require_target and self.backend.name not in h.store:
            self.not_targeted += 1  # subscribed to all data: keep only what names this backend
            return
        if h.source not in self._marks and self._state_file is not None:
            self._mark_first(h, gap)
        try:
            slot = self._slot_for(env)
            self._add(slot, env)
        except EnvelopeError as exc:
            self.bad_messages += 1
            self.undecodable += 1
            self._warn(
                f"bad:{h.source}",
                "dropped undecodable message from %s seq %d: %s",
                h.source,
                h.seq,
                exc,
            )

    def _add(self, slot: _Slot, env: Envelope) -> None:
        if self._envelopes:
            item: Any = env
            # a raw payload counts as one row; the end-of-stream marker as none (it is no data)
            rows = 0 if env.header.kind is Kind.EOS else max(env.header.rows, 1)
        else:
            if env.new_schema:
                self._flush_held()
            item = env.table()
            rows = item.num_rows
        if not slot.buffer:
            slot.since = time.monotonic()
        slot.buffer.append(item)
        slot.rows += rows
        slot.nbytes += env.nbytes
        slot.last = (env.header.epoch, env.header.seq)
        if slot.rows >= slot.flush_rows or slot.nbytes >= slot.flush_bytes:
            self._flush(slot)

    def _flush_held(self) -> None:
        """Write every buffered row before a risky step: decoding a payload of a schema not
        seen before (tables.familiar). Rows are checked when they arrive (tables.decode_table),
        so a crash there, if one still happens, costs nothing already received."""
        for slot in self._all_slots():
            if slot.buffer:
                self._flush(slot)

    def _all_slots(self) -> list[_Slot]:
        return [*self._slots.values(), *self._retiring]

    def _retire(self, slot: _Slot) -> None:
        """Flush and close a finished slot; if the backend fails, keep it (and its rows)."""
        if self._flush(slot, force=True):
            self._close(slot)
        else:
            self._retiring.append(slot)

    @property
    def pending_rows(self) -> int:
        return sum(s.rows for s in self._all_slots())

    @property
    def pending_bytes(self) -> int:
        return sum(s.nbytes for s in self._all_slots())

    def _over_limit(self) -> bool:
        """Whether the buffered rows reached max_pending_rows / max_pending_mb (one pass)."""
        rows = nbytes = 0
        for s in self._slots.values():
            rows += s.rows
            nbytes += s.nbytes
        for s in self._retiring:
            rows += s.rows
            nbytes += s.nbytes
        return rows >= self.max_pending or nbytes >= self.max_pending_bytes

    def _flush(self, slot: _Slot, *, force: bool = False) -> bool:
        """Write the slot's buffer; False if the backend failed (rows kept for a retry)."""
        if not slot.buffer:
            return True
        now = time.monotonic()
        if not force and now < slot.retry_at:
            return False
        t0 = time.perf_counter()
        try:
            if self._envelopes:
                self._write_envelopes(slot)
            else:
                self._write_tables(slot)
        except (TransientError, OSError) as exc:
            self.retries += 1
            if isinstance(exc, OSError) and not isinstance(exc, ConnectionError):
                # A file that failed mid-write may end in a torn record: never append to it.
                self.write_errors += 1
                if self.backend.extension:
                    self._close(slot, quiet=True)
                    slot.dest = self._destination(
                        slot.source, slot.run, slot.dest.tag, slot.settings, append=False
                    )
            delay = slot.retry.next_delay()
            slot.retry_at = now + delay
            log.warning(
                "%s: write of %d rows failed (%s); keeping them, retry in %.1fs",
                self.backend.name,
                slot.rows,
                exc,
                delay,
            )
            return False
        slot.retry.reset()
        slot.retry_at = 0.0
        if (
            not slot.buffer
            and slot.last is not None
            and not any(s.buffer for s in self._all_slots() if s.source == slot.source)
        ):  # another slot of the source (a retiring one) may still hold older rows
            self._mark(slot.source)
        self.last_flush_ms = (time.perf_counter() - t0) * 1e3
        self.max_flush_ms = max(self.max_flush_ms, self.last_flush_ms)
        self._maybe_rotate(slot)
        return True

    def _open(self, slot: _Slot, schema: pa.Schema | None) -> TableWriter | EnvelopeWriter:
        if slot.writer is None:
            candidate = str(slot.dest.path) if slot.dest.path else ""
            if candidate in self._written_paths:
                slot.dest.overwrite = False  # another slot of this process wrote it since
            if isinstance(self.backend, EnvelopeBackend):
                slot.writer = self.backend.open(slot.dest)
            else:
                assert isinstance(self.backend, TableBackend) and schema is not None
                slot.writer = self.backend.open(slot.dest, schema)
            where = str(slot.dest.path or slot.dest.name)
            self._written_paths.update(p for p in (candidate, where) if p)
            self.files_opened += 1
            if where:
                shown = str(slot.dest.path.absolute()) if slot.dest.path else where
                if shown in self.files:
                    self.files.remove(shown)
                self.files.append(shown)  # absolute: stats are read from anywhere
                self._sizes.setdefault(where, slot.writer.size())
        return slot.writer

    def _written(self, slot: _Slot, rows: int, payload_bytes: int) -> None:
        """Count one write: rows, and bytes (file growth for files, payload for servers)."""
        nbytes = payload_bytes
        if slot.dest.path is not None and slot.writer is not None:
            where = str(slot.dest.path)
            size = slot.writer.size()
            nbytes = max(0, size - self._sizes.get(where, 0))
            self._sizes[where] = size
        self.meter.sent(nbytes, rows)
        self.rows_by_source[slot.source] = self.rows_by_source.get(slot.source, 0) + rows

    def _write_envelopes(self, slot: _Slot) -> None:
        writer = cast("EnvelopeWriter", self._open(slot, None))  # no isinstance: hot path
        writer.write_envelopes(slot.buffer)
        writer.flush()
        self._written(slot, slot.rows, slot.nbytes)
        slot.buffer.clear()
        slot.rows = slot.nbytes = 0

    def _write_tables(self, slot: _Slot) -> None:
        """Write runs of same-schema tables; a schema change goes through `accepts`."""
        import pyarrow as pa

        while slot.buffer:
            schema = slot.buffer[0].schema
            n = 1
            while n < len(slot.buffer) and slot.buffer[n].schema.equals(schema):
                n += 1
            group = slot.buffer[:n]
            rows = sum(t.num_rows for t in group)
            if slot.schema is not None and not schema.equals(slot.schema):
                self.schema_changes += 1
                log.info(
                    "%s: schema of %s changed: %s -> %s",
                    self.backend.name,
                    slot.source,
                    _describe(slot.schema),
                    _describe(schema),
                )
                writer = cast("TableWriter | None", slot.writer)
                if writer is not None and not writer.accepts(schema):
                    self._close(slot)  # the writer asks for a new file: never append to one
                    slot.dest = self._destination(
                        slot.source, slot.run, slot.dest.tag, slot.settings, append=False
                    )
            try:
                writer = cast("TableWriter", self._open(slot, schema))
                table = pa.Table.from_batches(
                    [b for t in group for b in t.to_batches()], schema=schema
                )
                writer.write(table)
                writer.flush()
            except (TransientError, OSError):
                raise
            except Exception as exc:  # a value the backend cannot take: count, log, go on
                self.rejected_rows += rows
                log.error(
                    "%s: rejected %d rows from %s (%s): %s",
                    self.backend.name,
                    rows,
                    slot.source,
                    _describe(schema),
                    exc,
                    exc_info=log.isEnabledFor(logging.DEBUG),
                )
            else:
                slot.schema = schema
                self._written(slot, rows, 0)
            nbytes = _payload_share(slot, n)
            del slot.buffer[:n]
            slot.rows -= rows
            slot.nbytes -= nbytes

    def _maybe_rotate(self, slot: _Slot) -> None:
        if slot.writer is None or not self.backend.extension:
            return
        settings = slot.settings
        period = parse_period(getattr(settings, "rotate", "") or "")
        limit = float(getattr(settings, "rotate_mb", 0) or 0) * 1e6
        now = time.time()
        dated = getattr(settings, "add_date", False) or "{date}" in self._template(settings)
        if (
            (period and now - slot.dest.opened_at >= period)
            or (limit and slot.writer.size() >= limit)
            or (dated and date_string(now) != date_string(slot.dest.opened_at))
        ):
            self._rotate(slot, now)

    def _rotate(self, slot: _Slot, now: float) -> None:
        """Close the slot's file and open the next one, for every slot that writes it."""
        self.rotations += 1
        path = slot.dest.path
        sharing = [
            s
            for s in self._all_slots()
            if s is slot or (s.writer is not None and s.dest.path == path)
        ]
        for s in sharing:
            self._close(s)
        for s in sharing:
            s.dest = self._destination(s.source, s.run, s.dest.tag, s.settings, new_file_at=now)

    def _close(self, slot: _Slot, *, quiet: bool = False) -> None:
        if slot.writer is not None:
            writer, slot.writer = slot.writer, None
            if slot.dest.path is not None:
                self._sizes.pop(str(slot.dest.path), None)
            try:
                writer.close()
            except (TransientError, OSError) as exc:
                if not quiet:
                    log.warning("%s: close failed: %s", self.backend.name, exc)

    def tick(self) -> None:
        """Flush what is due, rotate, report."""
        now = time.monotonic()
        for slot in list(self._slots.values()):
            if slot.buffer and (now - slot.since >= slot.flush_seconds or slot.retry_at):
                self._flush(slot)
            elif not slot.buffer and slot.writer is not None:
                self._maybe_rotate(slot)
        for slot in list(self._retiring):
            if self._flush(slot):
                self._close(slot)
                self._retiring.remove(slot)

    def report(self, *, final: bool = False) -> None:
        m = self.meter
        m.queue = self.pending_rows
        # what the input could not decode (a ZeroMQ message, a stream record) never reached
        # handle(): it is counted there, and reported here with ours; a stream that ended on
        # a damaged record (torn, corrupt) counts that record too, and says why
        inp = self._input
        not_read = getattr(inp, "undecodable", 0) if inp is not None else 0
        damage = getattr(inp, "damage", None) if inp is not None else None
        not_read += damage is not None
        m.undecodable = self.undecodable + not_read
        m.extra = {
            "files": list(self.files[-20:]),
            "files_opened": self.files_opened,
            "writes": m.msgs_out,
            "flush_ms": round(self.last_flush_ms, 3),
            "flush_ms_max": round(self.max_flush_ms, 3),
            "pending_rows": self.pending_rows,
            "pending_mb": round(self.pending_bytes / 1e6, 3),
            "retries": self.retries,
            "write_errors": self.write_errors,
            "rejected_rows": self.rejected_rows,
            "refused_paths": self.refused_paths,
            "bad_messages": self.bad_messages + not_read,
            "wrong_kind": self.wrong_kind,
            "schema_changes": self.schema_changes,
            "rotations": self.rotations,
            "not_targeted": self.not_targeted,
            "rows_by_source": dict(self.rows_by_source),
            "lost_by_source": dict(m.sequences.lost),
            # sources whose last message was not end-of-stream: `daq up` stops a store only
            # once this is empty, so nothing in flight is cut off
            "open_sources": sorted(self.open_sources),
            **self.backend.stats(),
        }
        if damage is not None:
            m.extra["input_damage"] = str(damage)
        if final:
            m.extra["final"] = True
        self.max_flush_ms = 0.0
        report = m.report()
        if self.telemetry is not None:
            self.telemetry.send(
                self._stats_source.control(Kind.STATS, self._stats_source.topic, report)
            )

    @property
    def open_sources(self) -> set[str]:
        """Sources seen whose last message was not end-of-stream (their data may still come)."""
        return self._seen_sources - self._ended_sources

    def expect_sources(self, topics: list[str]) -> None:
        """With exit-on-EOS, also wait for these topics' sources: exact `data.<source>` topics
        name a source that must end before the store does, even if it has not spoken yet."""
        for topic in topics:
            if topic.startswith("data.") and not topic.endswith((".", "*")) and len(topic) > 5:
                self._seen_sources.add(topic[len("data.") :])

    def run(self, inp: Input, stop: StopFlag, *, exit_on_eos: bool = False) -> StoreResult:
        result = StoreResult(self.meter)
        self._input = inp
        next_report = time.monotonic() + self.stats_interval
        try:
            while not stop.is_set():
                now = time.monotonic()
                if self._over_limit():
                    self.tick()  # backpressure: do not read until the backend takes rows
                    stop.wait(0.05)
                else:
                    timeout = min(self._tick_seconds, max(0.0, next_report - now))
                    try:
                        env = inp.recv(timeout)
                    except EndOfInput:
                        result.damage = getattr(inp, "damage", None)
                        break
                    if env is not None:
                        self.handle(env)
                        if (
                            exit_on_eos
                            and self._seen_sources
                            and self._seen_sources <= self._ended_sources
                        ):
                            break
                self.tick()
                if time.monotonic() >= next_report:
                    self.report()
                    next_report = time.monotonic() + self.stats_interval
        finally:
            result.failed_rows = self._shutdown()
            self.report(final=True)
            seqs = self.meter.sequences
            log.info(
                "%s: %d rows in %d writes to %d file(s)/destination(s); %d bad messages "
                "(%d undecodable), %d rejected rows, %d lost upstream, %d duplicates "
                "(not stored again), %d sequence jumps, %d out of epoch",
                self.name,
                self.meter.rows_out,
                self.meter.msgs_out,
                self.files_opened,
                self.bad_messages + self.meter.undecodable - self.undecodable,
                self.meter.undecodable,
                self.rejected_rows,
                seqs.total_lost,
                seqs.total_duplicates,
                seqs.total_jumps,
                seqs.total_out_of_epoch,
            )
        return result

    def _shutdown(self) -> int:
        deadline = time.monotonic() + SHUTDOWN_RETRY_SECONDS
        while True:
            pending = [s for s in self._all_slots() if s.buffer]
            for slot in pending:
                self._flush(slot, force=True)
            pending = [s for s in self._all_slots() if s.buffer]
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(min(1.0, max(s.retry.current for s in pending)))
        failed = sum(s.rows for s in self._all_slots())
        if failed:
            log.error(
                "%s: %d rows could not be written before shutdown (backend still failing)",
                self.backend.name,
                failed,
            )
        for slot in self._all_slots():
            self._close(slot)
        self.backend.close()
        return failed


def _payload_share(slot: _Slot, n: int) -> int:
    """The buffered payload bytes of the first `n` items (split evenly by rows)."""
    if n >= len(slot.buffer) or not slot.rows:
        return slot.nbytes
    rows = sum(t.num_rows for t in slot.buffer[:n])
    return slot.nbytes * rows // slot.rows


def _describe(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name}: {f.type}" for f in schema)
