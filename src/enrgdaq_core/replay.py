"""Playing run files back: choose records, pace them, hand them on unchanged.

Replay never restamps a header: the sequence numbers, send times, epochs and store settings a
store sees are those of the live run, so re-storing a run gives the same rows in the same
order. (One exception, asked for: `--loop` passes after the first add the pass number to the
epoch, so consumers see a restarted source instead of duplicates.)

Parts are played in the order they were written (file header `created_ns`, then `part`);
record numbers count from 0 at the first record of the first part, through all parts.
"""

from __future__ import annotations

import datetime as dt
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from enrgdaq_core import timefmt
from enrgdaq_core.envelope import TOPIC_END, Envelope, Kind, subscription
from enrgdaq_core.runfile import (
    RunPart,
    open_part,
    order_parts,
    resync,
)
from enrgdaq_core.stats import SequenceTracker
from enrgdaq_core.stream import Record, StreamDamage, StreamReader

if TYPE_CHECKING:
    from enrgdaq_core.channels import Output
    from enrgdaq_core.transport import BrokerAddress

__all__ = [
    "POSITION_HELP",
    "Damage",
    "Opener",
    "Position",
    "Progress",
    "Replay",
    "ReplayResult",
    "Selection",
    "parse_position",
    "replay_output",
    "run_info",
]

POSITION_HELP = (
    "rec:N (record number, from 0), seconds from the first record (90, 90s, 1.5m, 2h), "
    "a time of day (14:30:05) or an ISO time (2026-11-25T14:30:05, local unless it has an offset)"
)


# -- positions ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Position:
    """Where --from / --until point: a record number, or a time (absolute or relative)."""

    record: int | None = None
    time_ns: int | None = None  # absolute
    seconds: float | None = None  # from the first record
    clock: float | None = None  # seconds after local midnight of the first record's day

    def resolve(self, start_ns: int) -> int | None:
        """The absolute time in ns (None for a record position)."""
        if self.time_ns is not None:
            return self.time_ns
        if self.seconds is not None:
            return start_ns + round(self.seconds * 1e9)
        if self.clock is not None:
            day = dt.datetime.fromtimestamp(start_ns // 10**9).astimezone()
            midnight = day.replace(hour=0, minute=0, second=0, microsecond=0)
            at = timefmt.to_ns(midnight) + round(self.clock * 1e9)
            return at + 86_400 * 10**9 if at < start_ns - 10**9 else at  # a run past midnight
        return None


_CLOCK = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}(?:\.\d+)?))?")
_RELATIVE = re.compile(r"\+?\d+(?:\.\d*)?[smhd]?")


def parse_position(text: str) -> Position:
    """`rec:1000`, `90`, `90s`, `1.5m`, `14:30:05`, `2026-11-25T14:30:05[+01:00]`."""
    t = text.strip()
    low = t.lower()
    for prefix in ("rec:", "record:"):
        if low.startswith(prefix):
            number = low[len(prefix) :]
            if not number.isdigit():
                raise ValueError(f"{text!r}: expected a record number after {prefix!r}")
            return Position(record=int(number))
    if _RELATIVE.fullmatch(low):
        value = low.lstrip("+")
        if float(value.rstrip("smhd") or 0) == 0:
            return Position(seconds=0.0)
        return Position(seconds=timefmt.parse_period(value))
    m = _CLOCK.fullmatch(t)
    if m:
        hours, minutes, seconds = int(m[1]), int(m[2]), float(m[3] or 0)
        if hours > 23 or minutes > 59 or seconds >= 60:
            raise ValueError(f"{text!r}: not a time of day")
        return Position(clock=hours * 3600 + minutes * 60 + seconds)
    try:
        moment = dt.datetime.fromisoformat(t)
    except ValueError:
        raise ValueError(f"{text!r}: expected {POSITION_HELP}") from None
    return Position(time_ns=timefmt.to_ns(moment))  # a naive time is local


# -- selection ----------------------------------------------------------------------------


@dataclass
class Selection:
    """Which records to play: a range (record numbers or times, both ends inclusive), filters."""

    start: Position | None = None
    until: Position | None = None
    topics: list[str] = field(default_factory=list)  # exact, `prefix.` or `prefix*`
    sources: list[str] = field(default_factory=list)
    _prefixes: list[bytes] = field(default_factory=list, repr=False)
    _seen: dict[str, bool] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._prefixes = [subscription(t) for t in self.topics]

    def matches(self, env: Envelope) -> bool:
        if self.sources and env.header.source not in self.sources:
            return False
        if not self._prefixes:
            return True
        hit = self._seen.get(env.topic)
        if hit is None:
            frame = env.topic.encode() + TOPIC_END
            hit = self._seen[env.topic] = any(frame.startswith(p) for p in self._prefixes)
        return hit


@dataclass(slots=True)
class Damage:
    """A torn or corrupt place in a run file: where, why, and where reading went on."""

    path: Path
    reason: str
    offset: int
    record: int  # record number within the file
    resumed_at: int | None = None  # byte offset where reading went on (--ignore-damage)

    def __str__(self) -> str:
        text = f"{self.path}: {self.reason} at byte {self.offset} (record {self.record})"
        if self.resumed_at is not None:
            text += f"; skipped {self.resumed_at - self.offset} bytes, went on at byte {self.resumed_at}"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "reason": self.reason,
            "offset": self.offset,
            "record": self.record,
            "resumed_at": self.resumed_at,
        }


@dataclass(slots=True)
class Progress:
    """How far a replay is (for a progress line): pass, bytes, messages, time."""

    pass_no: int
    bytes_done: int
    bytes_total: int
    messages: int
    elapsed: float


@dataclass
class ReplayResult:
    """What a replay did: messages and bytes sent, passes, damage met, stopped or not."""

    messages: int = 0
    bytes: int = 0  # payload bytes of the messages sent
    bytes_read: int = 0  # bytes of run file read (records scanned, sent or not)
    passes: int = 0
    elapsed: float = 0.0
    damage: list[Damage] = field(default_factory=list)
    stopped: bool = False  # by the caller (Ctrl-C) rather than at the end

    @property
    def damaged(self) -> bool:
        return bool(self.damage)


Opener = Callable[[Path], BinaryIO]


class _Stop(Protocol):
    def is_set(self) -> bool: ...
    def wait(self, timeout: float) -> bool: ...


def _open(path: Path) -> BinaryIO:
    return open(path, "rb", buffering=1 << 20)  # noqa: SIM115 - closed by the caller


class Replay:
    """One replay of a set of run file parts (see the module docstring for the order)."""

    def __init__(
        self,
        paths: list[str | Path],
        selection: Selection | None = None,
        *,
        ignore_damage: bool = False,
        use_index: bool = True,
        opener: Opener = _open,
    ) -> None:
        if not paths:
            raise ValueError("no run files given")
        self.parts: list[RunPart] = order_parts([open_part(p, use_index=use_index) for p in paths])
        self.selection = selection or Selection()
        self.ignore_damage = ignore_damage
        self.opener = opener
        self.damage: list[Damage] = []
        self.bytes_read = 0
        self.bytes_total = sum(p.size for p in self.parts)
        self.bytes_skipped = 0
        self._start_ns: int | None = None
        self._reported: set[tuple[Path, int]] = set()
        self._stop_all = False
        self._part_records = 0

    # -- where the run starts ------------------------------------------------------------

    @property
    def start_ns(self) -> int:
        """Send time of the first record of the first part (the origin of relative times)."""
        if self._start_ns is None:
            self._start_ns = 0
            for part in self.parts:
                with self.opener(part.path) as f:
                    try:
                        rec = next(part.reader(f), None)
                    except StreamDamage:
                        rec = None
                if rec is not None:
                    self._start_ns = rec.envelope.header.time_ns
                    break
        return self._start_ns

    def _bound(self, pos: Position | None) -> tuple[int | None, int | None]:
        if pos is None:
            return None, None
        if pos.record is not None:
            return pos.record, None
        if pos.time_ns is not None:
            return None, pos.time_ns
        return None, pos.resolve(self.start_ns)

    # -- one pass ------------------------------------------------------------------------

    def _damaged(self, part: RunPart, exc: StreamDamage) -> Damage:
        d = Damage(part.path, exc.reason, exc.offset, exc.record)
        key = (part.path, exc.offset)
        if key not in self._reported:
            self._reported.add(key)
            self.damage.append(d)
        return d

    def records(self) -> Iterator[tuple[int, RunPart, Record]]:
        """(record number, part, record) of every selected record, in file order.

        Stops after the first damage unless `ignore_damage`, which goes on past it (at the next
        indexed block, or the next good record marker) and in the following parts.
        """
        from_rec, from_ns = self._bound(self.selection.start)
        until_rec, until_ns = self._bound(self.selection.until)
        self.bytes_read = 0
        self.bytes_skipped = 0
        self._stop_all = False
        base = 0
        for part in self.parts:
            if until_rec is not None and base > until_rec:
                return
            idx = part.index
            entries = idx.entries if idx is not None else []
            if idx is not None and idx.complete:
                # a cleanly closed part: its index says whether anything in it is wanted
                total = idx.end_record
                if until_ns is not None and idx.nothing_after(0, until_ns):
                    return  # parts are in time order: nothing later is in range either
                if (from_rec is not None and base + total <= from_rec) or (
                    from_ns is not None and all(e.tmax < from_ns for e in entries if e.count)
                ):
                    base += total
                    self.bytes_skipped += part.size
                    continue
            block = 0
            if entries:
                if from_rec is not None and from_rec > base:
                    block = idx.for_record(from_rec - base)  # type: ignore[union-attr]
                elif from_ns is not None:
                    block = idx.for_time(from_ns)  # type: ignore[union-attr]
            if block == 0:
                offset, first = part.head.size, 0
            elif block < len(entries):
                offset, first = entries[block].offset, entries[block].record
            else:
                offset, first = entries[-1].end_offset, entries[-1].end_record
            self.bytes_skipped += offset
            with self.opener(part.path) as f:
                reader = part.reader(f, offset, first)
                yield from self._read_part(
                    part, f, reader, base, block, (from_rec, from_ns, until_rec, until_ns)
                )
                base += self._part_records
            if self._stop_all:
                return

    def _read_part(
        self,
        part: RunPart,
        f: BinaryIO,
        reader: StreamReader,
        base: int,
        block: int,
        bounds: tuple[int | None, int | None, int | None, int | None],
    ) -> Iterator[tuple[int, RunPart, Record]]:
        """One part from the reader's position; sets _part_records and _stop_all."""
        from_rec, from_ns, until_rec, until_ns = bounds
        sel = self.selection
        idx = part.index
        entries = idx.entries if idx is not None else []
        next_boundary = entries[block].end_offset if block < len(entries) else None
        while True:
            last = reader.offset
            self._part_records = reader.index
            try:
                rec = next(reader)
            except StopIteration:
                return
            except StreamDamage as exc:
                d = self._damaged(part, exc)
                if not self.ignore_damage:
                    self._stop_all = True
                    return
                where = resync(part, f, exc)
                if where is None:
                    return
                offset, number = where
                d.resumed_at = offset
                self.bytes_skipped += offset - exc.offset
                reader = part.reader(f, offset, exc.record if number is None else number)
                if idx is not None:
                    block = next(
                        (i for i, e in enumerate(entries) if e.offset >= offset), len(entries)
                    )
                    next_boundary = entries[block].end_offset if block < len(entries) else None
                continue
            self.bytes_read += reader.offset - last
            self._part_records = reader.index
            if next_boundary is not None and rec.offset >= next_boundary:
                block += 1
                next_boundary = entries[block].end_offset if block < len(entries) else None
                if until_ns is not None and idx is not None and idx.nothing_after(block, until_ns):
                    if idx.complete:
                        self._stop_all = True
                    return
            number = base + rec.index
            if until_rec is not None and number > until_rec:
                self._stop_all = True
                return
            if from_rec is not None and number < from_rec:
                continue
            t = rec.envelope.header.time_ns
            if (from_ns is not None and t < from_ns) or (until_ns is not None and t > until_ns):
                continue
            if sel.matches(rec.envelope):
                yield number, part, rec

    # -- playing -------------------------------------------------------------------------

    def run(
        self,
        send: Callable[[Envelope], None],
        *,
        speed: float = 0.0,
        loop: bool = False,
        count: int | None = None,
        stop: _Stop | None = None,
        on_record: Callable[[int, Envelope], None] | None = None,
        progress: Callable[[Progress], None] | None = None,
        progress_every: float = 0.2,
        before_wait: Callable[[], None] | None = None,
        verbatim: Callable[[Record], None] | None = None,
    ) -> ReplayResult:
        """Send the selected records; `speed` 0 is as fast as possible, 1 the recorded pace.

        `before_wait` runs before each pacing pause (flush a pipe so the reader gets the
        message on time); `stop` (set by Ctrl-C) ends the replay between two messages.
        `verbatim`, when given, takes the records of the first pass instead of `send`, to
        copy their bytes as read (a stream or run file output: faster, and exact).
        """
        stop = stop or threading.Event()
        result = ReplayResult()
        t_start = time.monotonic()
        next_progress = t_start
        pass_no = 0
        done = False
        while not done and not stop.is_set():
            sent_this_pass = 0
            pace_t0: int | None = None
            wall_t0 = 0.0
            for number, _part, rec in self.records():
                env = rec.envelope
                if speed > 0:
                    t = env.header.time_ns
                    if pace_t0 is None:
                        pace_t0, wall_t0 = t, time.monotonic()
                    delay = wall_t0 + (t - pace_t0) / 1e9 / speed - time.monotonic()
                    if delay > 0:
                        if before_wait is not None:
                            before_wait()
                        if stop.wait(delay):
                            break
                if stop.is_set():
                    break
                if pass_no:
                    env.header.epoch += pass_no
                    send(env)
                elif verbatim is not None and rec.body:
                    verbatim(rec)
                else:
                    send(env)
                if on_record is not None:
                    on_record(number, env)
                result.messages += 1
                sent_this_pass += 1
                result.bytes += len(env.payload)
                if progress is not None and time.monotonic() >= next_progress:
                    progress(self._progress(pass_no, result, t_start))
                    next_progress = time.monotonic() + progress_every
                if count is not None and result.messages >= count:
                    done = True
                    break
            result.passes = pass_no + 1
            result.bytes_read += self.bytes_read
            if progress is not None:
                progress(self._progress(pass_no, result, t_start))
            if (self.damage and not self.ignore_damage) or not loop or sent_this_pass == 0:
                break
            pass_no += 1
        result.stopped = stop.is_set()
        result.elapsed = time.monotonic() - t_start
        result.damage = list(self.damage)
        return result

    def _progress(self, pass_no: int, result: ReplayResult, t_start: float) -> Progress:
        return Progress(
            pass_no,
            self.bytes_read,
            max(self.bytes_total - self.bytes_skipped, self.bytes_read),
            result.messages,
            time.monotonic() - t_start,
        )

    def play(
        self,
        out: Output | None,
        *,
        speed: float = 0.0,
        loop: bool = False,
        count: int | None = None,
        stop: _Stop | None = None,
        on_record: Callable[[int, Envelope], None] | None = None,
        progress: Callable[[Progress], None] | None = None,
    ) -> ReplayResult:
        """`run` into an output (None: only `on_record` sees the messages), then close it.

        A stream or run file output gets each record's bytes as read (no re-encoding: exact
        and fast); a pipe is flushed before each pacing pause.
        """

        def send(env: Envelope) -> None:
            if out is not None:
                out.send(env)

        writer = getattr(out, "writer", None)
        try:
            return self.run(
                send,
                speed=speed,
                loop=loop,
                count=count,
                stop=stop,
                on_record=on_record,
                progress=progress,
                before_wait=out.flush if out is not None else None,
                verbatim=writer.write_record if writer is not None else None,
            )
        finally:
            if out is not None:
                out.flush()
                out.close()


# -- where a replay goes --------------------------------------------------------------------


def replay_output(
    rp: Replay,
    *,
    broker: BrokerAddress | None = None,
    output: str | None = None,
    pipe: bool | None = None,
    stdout: BinaryIO | None = None,
    wait: float = 10.0,
    wait_for: Sequence[str] = (),
) -> Output | None:
    """The output `daq replay` writes to; None means a line per message on the terminal.

    In order: a broker (waiting up to `wait` for it, then for a lossless consumer of each
    `wait_for` topic: ConnectionError if none comes); the stream on `stdout` when `output`
    is `-`, or unset and stdout is a pipe; a new run file at `output` (FileExistsError if it
    exists), with the first part's run settings.
    """
    from enrgdaq_core.channels import BrokerOutput, RunFileOutput, StreamOutput, stdout_is_pipe

    replay_of = [str(p.path) for p in rp.parts]
    first = rp.parts[0]
    if broker is not None:
        out = BrokerOutput(broker, wait=wait)
        if wait_for:
            from enrgdaq_core.broker_client import wait_for_subscriptions

            if not wait_for_subscriptions(broker, list(wait_for), timeout=wait):
                out.close()
                raise ConnectionError(
                    f"no consumer subscribed to {', '.join(wait_for)} within {wait:g} s"
                )
        return out
    if pipe is None:
        pipe = stdout_is_pipe()
    if output == "-" or (output is None and pipe):
        meta = {"writer": "daq replay", "run": first.run, "replay_of": replay_of}
        return StreamOutput(stdout if stdout is not None else sys.stdout.buffer, meta)
    if output is not None:
        run_meta = {k: v for k, v in first.meta.items() if k != "created_ns"}
        run_meta.update(writer="daq replay", replay_of=replay_of)
        return RunFileOutput(output, run_meta)
    return None


# -- --info -------------------------------------------------------------------------------


def _schema_reader() -> Callable[[bytes | memoryview], str]:
    """Schema of an Arrow IPC payload as text, cached by its schema message bytes."""
    import pyarrow as pa

    cache: dict[bytes, str] = {}

    def schema_of(payload: bytes | memoryview) -> str:
        view = memoryview(payload)
        key = b""
        if len(view) >= 8 and bytes(view[:4]) == b"\xff\xff\xff\xff":
            key = bytes(view[: 8 + int.from_bytes(view[4:8], "little")])
            hit = cache.get(key)
            if hit is not None:
                return hit
        try:
            schema = pa.ipc.read_schema(pa.py_buffer(payload))
            text = ", ".join(f"{f.name}: {f.type}" for f in schema)
        except (pa.ArrowInvalid, OSError) as exc:
            text = f"(undecodable schema: {exc})"
        if key:
            cache[key] = text
        return text

    return schema_of


def run_info(
    paths: list[str | Path],
    *,
    progress: Callable[[Progress], None] | None = None,
    opener: Opener = _open,
) -> dict[str, Any]:
    """What a run holds: parts, run number, time span, sources, counts, schemas, config."""
    replay = Replay(paths, ignore_damage=True, opener=opener)
    schema_of = _schema_reader()
    seqs = SequenceTracker()
    sources: dict[str, dict[str, Any]] = {}
    first_ns = last_ns = 0
    records = 0
    runs: set[int] = set()
    t0 = time.monotonic()
    tick = t0
    for _n, _part, rec in replay.records():
        env = rec.envelope
        h = env.header
        records += 1
        if h.time_ns:
            first_ns = h.time_ns if not first_ns else min(first_ns, h.time_ns)
            last_ns = max(last_ns, h.time_ns)
        runs.add(h.run)
        s = sources.get(h.source)
        if s is None:
            s = sources[h.source] = {
                "topics": [],
                "messages": 0,
                "rows": 0,
                "bytes": 0,
                "kinds": {},
                "first_ns": h.time_ns,
                "last_ns": h.time_ns,
                "first_seq": h.seq,
                "last_seq": h.seq,
                "epochs": 0,
                "schemas": [],
                "nodes": [],
                "store": h.store,
            }
        if env.topic not in s["topics"]:
            s["topics"].append(env.topic)
        if h.node and h.node not in s["nodes"]:
            s["nodes"].append(h.node)
        s["messages"] += 1
        s["rows"] += h.rows
        s["bytes"] += len(env.payload)
        s["kinds"][h.kind.value] = s["kinds"].get(h.kind.value, 0) + 1
        s["first_ns"] = min(s["first_ns"], h.time_ns)
        s["last_ns"] = max(s["last_ns"], h.time_ns)
        s["last_seq"] = h.seq
        if seqs.epochs.get(h.source) != h.epoch:
            s["epochs"] += 1
        seqs.observe(h)
        if h.kind is Kind.TABLE:
            text = schema_of(env.payload)
            if text not in s["schemas"]:
                s["schemas"].append(text)
        if progress is not None and time.monotonic() - tick > 0.2:
            tick = time.monotonic()
            progress(Progress(0, replay.bytes_read, replay.bytes_total, records, tick - t0))
    for name, s in sources.items():
        s["lost"] = seqs.lost.get(name, 0)
        s["duplicates"] = seqs.duplicates.get(name, 0)
    head = replay.parts[0].meta
    config = next((p.meta["config"] for p in replay.parts if "config" in p.meta), None)
    parts = []
    for p in replay.parts:
        meta = {k: v for k, v in p.meta.items() if k != "config"}
        parts.append(
            {
                "path": str(p.path),
                "size": p.size,
                "meta": meta,
                "index": None
                if p.index is None
                else {"entries": len(p.index.entries), "complete": p.index.complete},
            }
        )
    return {
        "run": head.get("run", 0),
        "runs_in_headers": sorted(runs),
        "run_start_ns": head.get("run_start_ns", first_ns),
        "first_ns": first_ns,
        "last_ns": last_ns,
        "duration_s": (last_ns - first_ns) / 1e9 if records else 0.0,
        "records": records,
        "rows": sum(s["rows"] for s in sources.values()),
        "bytes": sum(p.size for p in replay.parts),
        "parts": parts,
        "sources": sources,
        "config": config,
        "damage": [d.as_dict() for d in replay.damage],
    }
