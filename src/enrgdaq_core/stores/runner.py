"""Feeds one backend from an input: routing, batching, flushing, rotation, retries, stats.

One loop, one thread. Messages are grouped per (source, run) into buffers; a buffer is written
when it holds `flush_rows` rows or its oldest row is `flush_seconds` old, so a 1 kHz stream of
1-row messages becomes large batches. A backend that fails transiently keeps its rows here
(bounded by `max_pending_rows`; past that the runner stops reading, so backpressure reaches the
producer instead of anything being dropped) and is retried with backoff.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from enrgdaq_core.channels import EndOfInput, Input
from enrgdaq_core.envelope import Envelope, EnvelopeError, Kind, Source
from enrgdaq_core.jobs.runtime import StopFlag
from enrgdaq_core.stats import Meter
from enrgdaq_core.stores.base import Backend, Destination, TransientError, Writer
from enrgdaq_core.stores.paths import file_path, parse_period
from enrgdaq_core.transport import TelemetryPublisher

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger("enrgdaq.store")

RETRY_FIRST = 0.5
RETRY_MAX = 10.0
SHUTDOWN_RETRY_SECONDS = 15.0


@dataclass
class _Slot:
    """One source's open destination and its not-yet-written rows."""

    source: str
    run: int
    settings: Any
    settings_raw: dict[str, Any]
    dest: Destination
    writer: Writer | None = None
    schema: pa.Schema | None = None
    buffer: list[Any] = field(default_factory=list)  # tables, or envelopes for the raw store
    rows: int = 0
    since: float = 0.0  # monotonic time of the oldest buffered row
    retry_at: float = 0.0
    backoff: float = RETRY_FIRST
    ended: bool = False


@dataclass
class StoreResult:
    meter: Meter
    failed_rows: int = 0  # rows that could not be written before giving up at shutdown
    damage: Exception | None = None


class StoreRunner:
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
    ) -> None:
        self.backend = backend
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
        self._ended_sources: set[str] = set()
        self._seen_sources: set[str] = set()
        self.files: list[str] = []
        self.bad_messages = 0
        self.retries = 0
        self.schema_changes = 0
        self.last_flush_ms = 0.0
        opts = backend.options
        self.flush_rows = opts.flush_rows or backend.default_flush_rows
        self.flush_seconds = opts.flush_seconds or backend.default_flush_seconds
        self.max_pending = opts.max_pending_rows

    # -- settings and destinations -------------------------------------------------------

    def _settings(self, env: Envelope) -> tuple[Any, dict[str, Any]]:
        raw = dict(env.header.store.get(self.backend.name) or {})
        raw.update(self.override)
        try:
            return msgspec.convert(raw, self.backend.Settings), raw
        except msgspec.ValidationError as exc:
            raise EnvelopeError(
                f"bad store_config.{self.backend.name} from {env.header.source}: {exc}"
            ) from None

    def _destination(self, source: str, run: int, tag: str, settings: Any) -> Destination:
        dest = Destination(source=source, settings=settings, run=run, tag=tag)
        if self.backend.extension:
            rotating = bool(getattr(settings, "rotate", "") or getattr(settings, "rotate_mb", 0))
            template = self.destination or getattr(settings, "file_path", "")
            dest.path = file_path(
                template,
                source=source,
                extension=self.backend.extension,
                out_dir=self.backend.options.out_dir,
                run=run,
                tag=tag,
                add_date=getattr(settings, "add_date", False),
                rotating=rotating,
            )
        else:
            dest.name = self.destination or ""
        return dest

    def _slot_for(self, env: Envelope) -> _Slot:
        h = env.header
        key = (h.source, h.run)
        slot = self._slots.get(key)
        raw = dict(h.store.get(self.backend.name) or {})
        if slot is not None and slot.settings_raw == {**raw, **self.override}:
            return slot
        settings, merged = self._settings(env)
        if slot is not None:  # the source changed its settings: finish the old destination
            self._flush(slot, force=True)
            self._close(slot)
        for old_key in [k for k in self._slots if k[0] == h.source and k != key]:
            old = self._slots.pop(old_key)  # a new run of this source: close the old run's files
            self._flush(old, force=True)
            self._close(old)
        slot = _Slot(
            h.source, h.run, settings, merged, self._destination(h.source, h.run, h.tag, settings)
        )
        self._slots[key] = slot
        return slot

    # -- the loop ------------------------------------------------------------------------

    def handle(self, env: Envelope) -> None:
        h = env.header
        self.meter.received(h, env.nbytes)
        self._seen_sources.add(h.source)
        if h.kind is Kind.EOS:
            self._ended_sources.add(h.source)
            if Kind.EOS in self.backend.kinds:
                self._add(self._slot_for(env), env)
            for key in [k for k in self._slots if k[0] == h.source]:
                slot = self._slots.pop(key)
                self._flush(slot, force=True)
                self._close(slot)
            return
        if h.kind not in self.backend.kinds:
            return  # stats, logs: not data for this store
        if self.require_target and self.backend.name not in h.store:
            self.not_targeted += 1  # subscribed to all data: keep only what names this backend
            return
        try:
            slot = self._slot_for(env)
            self._add(slot, env)
        except EnvelopeError as exc:
            self.bad_messages += 1
            self.meter.undecodable += 1
            log.warning("dropped undecodable message from %s seq %d: %s", h.source, h.seq, exc)

    def _add(self, slot: _Slot, env: Envelope) -> None:
        if not slot.buffer:
            slot.since = time.monotonic()
        if self.backend.wants_envelopes:
            slot.buffer.append(env)
            slot.rows += max(env.header.rows, 1)
        else:
            table = env.table()
            slot.buffer.append(table)
            slot.rows += table.num_rows
        self.meter.queue = self.pending_rows
        if slot.rows >= self.flush_rows:
            self._flush(slot)

    @property
    def pending_rows(self) -> int:
        return sum(s.rows for s in self._slots.values())

    def _flush(self, slot: _Slot, *, force: bool = False) -> bool:
        """Write the slot's buffer; False if the backend failed (rows kept for a retry)."""
        if not slot.buffer:
            return True
        now = time.monotonic()
        if not force and now < slot.retry_at:
            return False
        t0 = time.perf_counter()
        try:
            if self.backend.wants_envelopes:
                self._open(slot, None)
                slot.writer.write_envelopes(slot.buffer)  # type: ignore[union-attr]
                slot.writer.flush()  # type: ignore[union-attr]
                self.meter.sent(0, slot.rows)
                slot.buffer.clear()
                slot.rows = 0
            else:
                self._write_tables(slot)
        except TransientError as exc:
            self.retries += 1
            slot.retry_at = now + slot.backoff
            log.warning(
                "%s: write of %d rows failed (%s); keeping them, retry in %.1fs",
                self.backend.name,
                slot.rows,
                exc,
                slot.backoff,
            )
            slot.backoff = min(slot.backoff * 2, RETRY_MAX)
            return False
        slot.backoff = RETRY_FIRST
        slot.retry_at = 0.0
        self.last_flush_ms = (time.perf_counter() - t0) * 1e3
        self._maybe_rotate(slot)
        self.meter.queue = self.pending_rows
        return True

    def _open(self, slot: _Slot, schema: pa.Schema | None) -> Writer:
        if slot.writer is None:
            slot.writer = self.backend.open(slot.dest, schema)
            where = str(slot.dest.path or slot.dest.name)
            if where and where not in self.files:
                self.files.append(where)
        return slot.writer

    def _write_tables(self, slot: _Slot) -> None:
        """Write runs of same-schema tables; a schema change goes through `Writer.accepts`."""
        import pyarrow as pa

        while slot.buffer:
            schema = slot.buffer[0].schema
            n = 1
            while n < len(slot.buffer) and slot.buffer[n].schema.equals(schema):
                n += 1
            group = slot.buffer[:n]
            if slot.schema is not None and not schema.equals(slot.schema):
                self.schema_changes += 1
                if slot.writer is not None and not slot.writer.accepts(schema):
                    self._close(slot)
                    slot.dest = self._destination(
                        slot.source, slot.run, slot.dest.tag, slot.settings
                    )
            writer = self._open(slot, schema)
            slot.schema = schema
            table = pa.Table.from_batches(
                [b for t in group for b in (t.to_batches() if isinstance(t, pa.Table) else [t])],
                schema=schema,
            )
            writer.write(table)
            writer.flush()
            rows = table.num_rows
            del slot.buffer[:n]
            slot.rows -= rows
            self.meter.sent(0, rows)

    def _maybe_rotate(self, slot: _Slot) -> None:
        if slot.writer is None or not self.backend.extension:
            return
        period = parse_period(getattr(slot.settings, "rotate", "") or "")
        limit = float(getattr(slot.settings, "rotate_mb", 0) or 0) * 1e6
        age = time.time() - slot.dest.opened_at
        if (period and age >= period) or (limit and slot.writer.size() >= limit):
            self._close(slot)
            slot.dest = self._destination(slot.source, slot.run, slot.dest.tag, slot.settings)

    def _close(self, slot: _Slot) -> None:
        if slot.writer is not None:
            try:
                slot.writer.close()
            except TransientError as exc:
                log.warning("%s: close failed: %s", self.backend.name, exc)
            slot.writer = None

    def tick(self) -> None:
        """Flush what is due, rotate, report."""
        now = time.monotonic()
        for slot in list(self._slots.values()):
            if slot.buffer and (now - slot.since >= self.flush_seconds or slot.retry_at):
                self._flush(slot)
            elif not slot.buffer and slot.writer is not None:
                self._maybe_rotate(slot)

    def report(self) -> None:
        m = self.meter
        m.extra = {
            "files": list(self.files[-20:]),
            "flush_ms": round(self.last_flush_ms, 3),
            "pending_rows": self.pending_rows,
            "retries": self.retries,
            "bad_messages": self.bad_messages,
            "schema_changes": self.schema_changes,
            "not_targeted": self.not_targeted,
            "lost_by_source": dict(m.sequences.lost),
            **self.backend.stats(),
        }
        report = m.report()
        if self.telemetry is not None:
            self.telemetry.send(
                self._stats_source.control(Kind.STATS, self._stats_source.topic, report)
            )

    def run(self, inp: Input, stop: StopFlag, *, exit_on_eos: bool = False) -> StoreResult:
        result = StoreResult(self.meter)
        next_report = time.monotonic() + self.stats_interval
        try:
            while not stop.is_set():
                now = time.monotonic()
                if self.pending_rows >= self.max_pending:
                    self.tick()  # backpressure: do not read until the backend takes rows
                    stop.wait(0.05)
                else:
                    timeout = min(0.2, self.flush_seconds, max(0.0, next_report - now))
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
            self.report()
        return result

    def _shutdown(self) -> int:
        deadline = time.monotonic() + SHUTDOWN_RETRY_SECONDS
        while True:
            pending = [s for s in self._slots.values() if s.buffer]
            for slot in pending:
                self._flush(slot, force=True)
            pending = [s for s in self._slots.values() if s.buffer]
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(min(1.0, max(s.backoff for s in pending)))
        failed = sum(s.rows for s in self._slots.values())
        if failed:
            log.error(
                "%s: %d rows could not be written before shutdown (backend still failing)",
                self.backend.name,
                failed,
            )
        for slot in self._slots.values():
            self._close(slot)
        self.backend.close()
        return failed
