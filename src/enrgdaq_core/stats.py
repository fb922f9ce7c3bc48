"""Telemetry every piece sends each second: what it did, how late, what it lost.

Reports travel as msgpack (kind `stats`, topic `stats.<piece>`) so that `daq stats` never has
to load pyarrow. Loss is counted exactly from per-source sequence numbers; latency comes from
a log-bucketed histogram of (receive time - header send time), not an average.
"""

from __future__ import annotations

import bisect
import math
import os
import time
from typing import Any

import msgspec

from enrgdaq_core.envelope import Header, node_name

__all__ = [
    "DUPLICATE",
    "EPOCH_AHEAD_LIMIT_NS",
    "JUMP_LIMIT",
    "LatencyHistogram",
    "Meter",
    "ProcessSampler",
    "SequenceTracker",
    "StatsReport",
    "primary_rate",
]


class StatsReport(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One piece's heartbeat, sent every second on `stats.<piece>` (msgpack).

    The fields are the documented metrics (docs/metrics.md): counters since start, rates over
    the last interval, `lost` from sequence gaps, latency percentiles, `queue` inside the piece,
    CPU and memory; `extra` holds a piece's own figures (a store's `bad_messages`, ...).
    `undecodable`, `duplicates`, `jumps` and `out_of_epoch` count the other ways a message can be
    wrong, each apart from loss (docs/metrics.md). New fields have defaults, so a report of an
    older piece still decodes.
    """

    piece: str
    role: str  # job, store, broker, monitor, supervisor, bridge
    node: str = msgspec.field(default_factory=node_name)
    pid: int = msgspec.field(default_factory=os.getpid)
    time_ns: int = msgspec.field(default_factory=time.time_ns)
    uptime_s: float = 0.0
    msgs_in: int = 0
    msgs_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    rows_in: int = 0
    rows_out: int = 0
    rate_in: float = 0.0  # messages/s over the last interval
    rate_out: float = 0.0
    mb_in: float = 0.0  # MB/s over the last interval
    mb_out: float = 0.0
    lost: int = 0  # messages missed, from sequence gaps
    undecodable: int = 0  # messages or records that did not decode (skipped)
    duplicates: int = 0  # messages seen before (same source, epoch, seq): not stored again
    jumps: int = 0  # lone sequence numbers far off their source's sequence (not loss)
    out_of_epoch: int = (
        0  # of an older epoch than their source's (replays), or one ahead of the clock
    )
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_max_ms: float | None = None
    latency_count: int = 0  # delays measured since start (the percentiles' are per interval)
    latency_sum_ms: float = 0.0  # their sum: with the count, the mean latency over any window
    queue: int = 0  # messages or rows waiting inside the piece
    restarts: int = 0
    cpu_percent: float = 0.0
    rss_mb: float = 0.0
    last_in_ns: int = 0
    last_out_ns: int = 0
    extra: dict[str, Any] = {}


def primary_rate(role: str, rate_in: float, rate_out: float) -> float:
    """The rate people watch: out for a source job, in for a store, the broker or a monitor."""
    if role == "job":
        return rate_out
    if role in ("store", "broker", "monitor"):
        return rate_in
    return max(rate_in, rate_out)


class LatencyHistogram:
    """Latency histogram in integer nanoseconds, log-linear buckets (as in HdrHistogram).

    Delays below 64 ns have a bucket each; above, each power of two is split into 32 equal
    buckets, so a bucket is at most 1/32 (3.1%) of its values wide, over any range. Finding a
    bucket takes two integer shifts (no logarithm): cheap enough for every message.

    A percentile is the nearest-rank sample (the ceil(q*n)-th smallest), placed linearly inside
    its bucket and clamped to the smallest and largest values seen: it is within one bucket of
    the exact value (the first version returned the bucket's upper edge, up to a bucket high),
    and a constant delay comes out exact. `max` is exact.
    """

    SUB_BITS = 5  # 2**5 = 32 buckets per power of two
    LINEAR = 1 << (SUB_BITS + 1)  # below this, one bucket per nanosecond
    BUCKETS = 64 << SUB_BITS  # covers every 64-bit delay

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.counts = [0] * self.BUCKETS
        self._min = -1
        self._max = 0
        self.sum_ns = 0

    def add_ns(self, ns: int) -> None:
        """Record one delay in nanoseconds (negative ones, from clock skew, count as 0)."""
        if ns < 64:  # LINEAR, inlined
            i = ns if ns > 0 else 0
            ns = i
        else:
            shift = ns.bit_length() - 6  # SUB_BITS + 1
            i = (shift << 5) + (ns >> shift)
        self.counts[i] += 1
        self.sum_ns += ns
        if ns > self._max:
            self._max = ns
        if ns < self._min or self._min < 0:
            self._min = ns

    def add(self, seconds: float) -> None:
        self.add_ns(int(seconds * 1e9))

    def bounds_ns(self, i: int) -> tuple[int, int]:
        """[low, high) of bucket i, in ns."""
        if i < self.LINEAR:
            return i, i + 1
        shift = (i >> self.SUB_BITS) - 1
        mantissa = i - (shift << self.SUB_BITS)
        return mantissa << shift, (mantissa + 1) << shift

    @property
    def n(self) -> int:
        return sum(self.counts)

    @property
    def max(self) -> float:
        """Largest delay seen (seconds); 0 when empty."""
        return self._max / 1e9

    @property
    def min(self) -> float:
        return max(self._min, 0) / 1e9

    def percentile(self, q: float) -> float | None:
        """The q-quantile (0..1) in seconds, None when empty."""
        n = self.n
        if n == 0:
            return None
        if q <= 0:
            return self.min
        if q >= 1:
            return self.max
        rank = max(1, math.ceil(q * n - 1e-9))  # nearest rank, 1-based
        before = 0
        for i, c in enumerate(self.counts):
            if c and before + c >= rank:
                lo, hi = self.bounds_ns(i)
                lo, hi = max(lo, self._min), min(hi, self._max)
                value = lo + (hi - lo) * (rank - before - 0.5) / c
                return min(max(value, self._min), self._max) / 1e9
            before += c
        return self.max


JUMP_LIMIT = 100_000
"""A forward gap of more than this many sequence numbers is not loss on sight: the message past
it counts as a `jump` until its source's next message continues from it (then the gap was real,
it is counted as lost and the jump taken back). One forged or corrupt sequence number costs one
jump, never a million lost messages, and the source's real messages go on as before."""

EPOCH_AHEAD_LIMIT_NS = 86_400 * 10**9
"""A new epoch further than this (a day) ahead of the receiver's clock is no restart: epochs are
start times, and no source starts tomorrow. Its message counts as out_of_epoch."""

MAX_HOLES = 256  # gaps remembered per epoch, for duplicates and late arrivals (then forgotten)
MAX_EPOCHS = 4  # earlier epochs remembered per source, for duplicates of their messages

DUPLICATE = -1
"""What `SequenceTracker.observe` returns for a message already seen (same source, epoch, seq)."""


def _lo(run: list[int]) -> int:
    return run[0]


class _Track:
    """The sequence numbers seen of one (source, epoch), as sorted disjoint runs `[lo, hi]`.

    The holes between runs are the lost messages, except around an *outlier*: a lone message
    further than JUMP_LIMIT from each neighbour (a jump, not loss). An `anchor` is a virtual
    message where the source is known to have been (a store's state file; -1 before a restarted
    source's first message): it and the JUMP_LIMIT numbers below it count as seen, never as
    received, until messages further below contradict it (a state file written after a forged
    number): then it is an outlier.
    """

    __slots__ = (
        "epoch",
        "runs",
        "tail",
        "anchor",
        "pinned",
        "floor",
        "lost",
        "jumps",
        "settled",
        "counted",
        "doubted",
        "_base",
    )

    def __init__(self, epoch: int, anchor: int | None = None, *, counted: bool = True) -> None:
        self.epoch = epoch
        self.anchor = anchor
        self.pinned = anchor is not None  # the anchor is still a run of its own
        self.runs: list[list[int]] = [] if anchor is None else [[anchor, anchor]]
        self.tail: list[int] = self.runs[-1] if self.runs else [0, -2]
        self.floor: int | None = None  # up to here forgotten (more than MAX_HOLES holes)
        self.lost = 0
        self.jumps = 0
        self.settled = 0 if self.runs else -1  # the newest run that is no outlier
        self.counted = counted  # False: an epoch known only from out_of_epoch messages
        self.doubted = False  # the anchor was contradicted from below: it no longer vouches
        self._base = (0, 0)  # lost and jumps of forgotten runs

    def add(self, seq: int) -> int:
        """Record `seq`: DUPLICATE if it was seen, else how much `lost` grew (0 or more)."""
        if self.floor is not None and seq <= self.floor:
            self._base = (self._base[0], self._base[1] + 1)  # older than remembered: kept
            self.jumps += 1
            return 0
        a = self.anchor
        if a is not None and a - JUMP_LIMIT < seq < a and not self.doubted:
            return DUPLICATE  # settled before the anchor was set (by the store's last process)
        runs = self.runs
        i = bisect.bisect_right(runs, seq, key=_lo)  # runs[:i] start at or before seq
        if i and seq <= runs[i - 1][1]:
            return DUPLICATE
        before = self.lost
        left = runs[i - 1] if i else None
        right = runs[i] if i < len(runs) else None
        if left is not None and left[1] + 1 == seq:
            left[1] = seq
            if right is not None and right[0] == seq + 1:
                left[1] = right[1]
                del runs[i]
        elif right is not None and right[0] == seq + 1:
            right[0] = seq
        else:
            runs.insert(i, [seq, seq])
        if len(runs) > MAX_HOLES:
            self._account()
            lost, jumps = self.lost, self.jumps
            self.floor = runs.pop(0)[1]
            self._account()
            self._base = (self._base[0] + lost - self.lost, self._base[1] + jumps - self.jumps)
        self.tail = runs[-1]
        self._account()
        return max(0, self.lost - before)

    def _account(self) -> None:
        """Recount lost and jumps from the runs (after any change off the fast path)."""
        runs = self.runs
        n = len(runs)
        limit = JUMP_LIMIT
        anchor = self.anchor if self.pinned else None
        pinned = False
        outlier = [False] * n
        for i, (lo, hi) in enumerate(runs):
            if lo != hi:
                continue
            left: int | None = None
            if i:
                left = lo - runs[i - 1][1] - 1
            elif self.floor is not None:
                left = lo - self.floor - 1
            right = runs[i + 1][0] - hi - 1 if i + 1 < n else None
            if lo == anchor:
                pinned = True
                outlier[i] = left is not None and left > limit and (right is None or right > limit)
                self.doubted = outlier[i]
            elif left is not None or right is not None:
                outlier[i] = (left is None or left > limit) and (right is None or right > limit)
        self.pinned = pinned
        lost = jumps = between = 0
        prev: int | None = None
        self.settled = -1
        for i, (lo, hi) in enumerate(runs):
            if outlier[i]:
                jumps += 1
                between += 1
                continue
            if prev is not None:
                lost += lo - prev - 1 - between
            prev, between, self.settled = hi, 0, i
        self.lost = self._base[0] + lost
        self.jumps = self._base[1] + jumps

    def messages(self) -> int:
        """How many messages were received (the anchor is not one)."""
        seen = sum(hi - lo + 1 for lo, hi in self.runs)
        a = self.anchor
        if a is not None and any(lo <= a <= hi for lo, hi in self.runs):
            seen -= 1
        return seen

    def position(self) -> int | None:
        """The newest sequence number on the source's track (outliers left out)."""
        return self.runs[self.settled][1] if self.settled >= 0 else None


class SequenceTracker:
    """Per-source sequence accounting: lost, duplicate, jumped and out-of-epoch messages.

    A source numbers its messages 0, 1, 2, ... per epoch (its start time). A hole is `lost`;
    a number seen before is a `duplicate` (`observe` returns DUPLICATE: a store does not write
    it again); a lone number more than JUMP_LIMIT away is a `jump` (not loss, see JUMP_LIMIT); a
    newer epoch is a restart (its first messages missed are lost); a message of an older epoch
    (a replayed or delayed one) is `out_of_epoch`, kept, and changes nothing: no restart. Docs:
    docs/metrics.md "Loss".
    """

    __slots__ = (
        "received",
        "duplicates",
        "out_of_epoch",
        "lost",
        "jumps",
        "odd",
        "last_odd",
        "_tracks",
        "_old",
        "_base",
    )

    def __init__(self) -> None:
        self.received: dict[str, int] = {}
        self.duplicates: dict[str, int] = {}
        self.out_of_epoch: dict[str, int] = {}
        self.lost: dict[str, int] = {}  # sources with a loss only
        self.jumps: dict[str, int] = {}
        self._tracks: dict[str, _Track] = {}  # each source's current epoch
        self._old: dict[str, dict[int, _Track]] = {}  # its earlier epochs, newest MAX_EPOCHS
        self._base: dict[str, tuple[int, int]] = {}  # lost and jumps of forgotten epochs
        self.odd = 0  # duplicates, jumps and out-of-epoch messages so far: a change says "log it"
        self.last_odd = ""  # what the latest of them was

    def observe(self, header: Header) -> int:
        """Record one message: DUPLICATE, else how many were missed just before it."""
        src = header.source
        self.received[src] = self.received.get(src, 0) + 1
        t = self._tracks.get(src)
        if t is not None and header.epoch == t.epoch:
            tail = t.tail
            if header.seq == tail[1] + 1 and tail[0] < tail[1]:  # the next one: nothing changes
                tail[1] = header.seq
                return 0
        return self._observe(src, t, header)

    def _observe(self, src: str, t: _Track | None, header: Header) -> int:
        seq, epoch = header.seq, header.epoch
        if t is None:  # the first message: those before it were not sent to us (joined late)
            t = self._tracks[src] = _Track(epoch)
            t.add(seq)
            return 0
        jumps = self.jumps.get(src, 0)
        old = self.out_of_epoch.get(src, 0)
        if epoch == t.epoch:
            gap = t.add(seq)
        elif epoch > t.epoch:
            if epoch - time.time_ns() > EPOCH_AHEAD_LIMIT_NS:
                self.out_of_epoch[src] = old + 1
                self._odd("out-of-epoch (its epoch is ahead of the clock)")
                return 0
            self._retire(src, t)  # restarted: the new epoch counts from -1
            t = self._tracks[src] = _Track(epoch, anchor=-1)
            gap = t.add(seq)
        else:
            gap = self._older(src, t, header)
        if gap == DUPLICATE:
            self.duplicates[src] = self.duplicates.get(src, 0) + 1
            self._odd("duplicate")
            return gap
        self._recount(src)
        if self.jumps.get(src, 0) > jumps:
            self._odd("out-of-sequence (a jump)")
        elif self.out_of_epoch.get(src, 0) > old:
            self._odd("out-of-epoch (an older epoch)")
        return gap

    def _odd(self, what: str) -> None:
        self.odd += 1
        self.last_odd = what

    def _older(self, src: str, current: _Track, header: Header) -> int:
        """A message of an epoch before the current one: a duplicate, out of epoch, or proof that
        the current epoch is no restart (its one message came while the old one still sent)."""
        old = self._old.setdefault(src, {})
        t = old.get(header.epoch)
        if t is None:
            t = old[header.epoch] = _Track(header.epoch, counted=False)
            self._trim(src)
        gap = t.add(header.seq)
        if gap == DUPLICATE:
            return gap
        if (
            t.counted
            and header.epoch == max(old)
            and t.tail[1] == header.seq
            and current.messages() == 1
            and header.time_ns > current.epoch
        ):  # sent after the "new" epoch began: the old process lives, the new epoch was bogus
            del old[header.epoch]
            self._tracks[src] = t
            lost, jumps = self._base.get(src, (0, 0))
            self._base[src] = (lost, jumps + 1)  # the bogus epoch's one message: a jump
            return gap
        self.out_of_epoch[src] = self.out_of_epoch.get(src, 0) + 1
        return 0

    def _retire(self, src: str, t: _Track) -> None:
        self._old.setdefault(src, {})[t.epoch] = t
        self._trim(src)

    def _trim(self, src: str) -> None:
        old = self._old[src]
        while len(old) > MAX_EPOCHS:
            gone = old.pop(min(old))
            if gone.counted:
                lost, jumps = self._base.get(src, (0, 0))
                self._base[src] = (lost + gone.lost, jumps + gone.jumps)

    def _recount(self, src: str) -> None:
        lost, jumps = self._base.get(src, (0, 0))
        t = self._tracks[src]
        lost += t.lost
        jumps += t.jumps
        for o in self._old.get(src, {}).values():
            if o.counted:
                lost += o.lost
                jumps += o.jumps
        for counts, n in ((self.lost, lost), (self.jumps, jumps)):
            if n:
                counts[src] = n
            else:
                counts.pop(src, None)

    def resume(self, source: str, epoch: int, last: int) -> None:
        """Continue a source known to have reached `last` in `epoch` (a store's state file)."""
        self._tracks[source] = _Track(epoch, anchor=last)
        self._old.pop(source, None)

    def position(self, source: str) -> tuple[int, int] | None:
        """(epoch, newest sequence number) of the source's track, jumps left out."""
        t = self._tracks.get(source)
        if t is None:
            return None
        pos = t.position()
        return None if pos is None else (t.epoch, pos)

    @property
    def epochs(self) -> dict[str, int]:
        """Each source's current epoch."""
        return {s: t.epoch for s, t in self._tracks.items()}

    @property
    def expected(self) -> dict[str, int]:
        """The next sequence number each source's track expects."""
        return {s: p[1] + 1 for s in self._tracks if (p := self.position(s)) is not None}

    @property
    def total_lost(self) -> int:
        return sum(self.lost.values())

    @property
    def total_duplicates(self) -> int:
        return sum(self.duplicates.values())

    @property
    def total_jumps(self) -> int:
        return sum(self.jumps.values())

    @property
    def total_out_of_epoch(self) -> int:
        return sum(self.out_of_epoch.values())


class ProcessSampler:
    """CPU% and RSS of this process, cheap enough for a 1 s heartbeat."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        try:
            import psutil

            self._proc: Any = psutil.Process()
            self._proc.cpu_percent(None)
        except Exception:  # psutil missing or no /proc: report zeros, never fail the piece
            self._proc = None

    def sample(self) -> dict[str, float]:
        out = {"uptime_s": time.monotonic() - self.started, "cpu_percent": 0.0, "rss_mb": 0.0}
        if self._proc is not None:
            try:
                out["cpu_percent"] = self._proc.cpu_percent(None)
                out["rss_mb"] = self._proc.memory_info().rss / 1e6
            except Exception:
                pass
        return out


def _restarts_from_env() -> int:
    """How often this piece was restarted: a supervisor passes it as DAQ_RESTARTS."""
    try:
        return max(0, int(os.environ.get("DAQ_RESTARTS", "0") or 0))
    except ValueError:
        return 0


class Meter:
    """Counters of one piece plus the bookkeeping to turn them into a StatsReport each second.

    `received` and `sent` run for every message: keep them lean (slots, no float maths).
    """

    __slots__ = (
        "piece",
        "role",
        "msgs_in",
        "msgs_out",
        "bytes_in",
        "bytes_out",
        "rows_in",
        "rows_out",
        "undecodable",
        "queue",
        "restarts",
        "last_in_ns",
        "last_out_ns",
        "latency",
        "latency_count",
        "latency_sum_ns",
        "sequences",
        "extra",
        "_sampler",
        "_last",
    )

    def __init__(self, piece: str, role: str) -> None:
        self.piece = piece
        self.role = role
        self.msgs_in = self.msgs_out = 0
        self.bytes_in = self.bytes_out = 0
        self.rows_in = self.rows_out = 0
        self.undecodable = 0
        self.queue = 0
        self.restarts = _restarts_from_env()
        self.last_in_ns = self.last_out_ns = 0
        self.latency = LatencyHistogram()
        self.latency_count = 0  # totals since start, for a Prometheus summary's _count/_sum
        self.latency_sum_ns = 0
        self.sequences = SequenceTracker()
        self.extra: dict[str, Any] = {}
        self._sampler = ProcessSampler()
        self._last = (time.monotonic(), 0, 0, 0, 0)

    def received(self, header: Header, nbytes: int, now_ns: int | None = None) -> int:
        """Count one incoming message; returns the sequence gap before it, or DUPLICATE."""
        if now_ns is None:
            now_ns = time.time_ns()
        self.msgs_in += 1
        self.bytes_in += nbytes
        self.rows_in += header.rows
        self.last_in_ns = now_ns
        sent_ns = header.time_ns
        if sent_ns:
            self.latency.add_ns(now_ns - sent_ns)
        return self.sequences.observe(header)

    def sent(self, nbytes: int, rows: int = 0) -> None:
        # no clock read here (a source's hot path): `report` stamps last_out_ns to the interval
        self.msgs_out += 1
        self.bytes_out += nbytes
        self.rows_out += rows

    def report(self) -> StatsReport:
        """Build this interval's report and start a new interval."""
        now = time.monotonic()
        t0, mi, mo, bi, bo = self._last
        dt = max(now - t0, 1e-9)
        hist = self.latency
        self.latency_count += hist.n
        self.latency_sum_ns += hist.sum_ns
        if self.msgs_out != mo:
            self.last_out_ns = time.time_ns()

        def ms(v: float | None) -> float | None:
            return None if v is None else round(v * 1e3, 4)

        seqs = self.sequences
        extra = dict(self.extra)
        for key, counts in (
            ("lost_by_source", seqs.lost),
            ("duplicates_by_source", seqs.duplicates),
            ("jumps_by_source", seqs.jumps),
            ("out_of_epoch_by_source", seqs.out_of_epoch),
        ):
            if counts:
                extra.setdefault(key, dict(counts))

        report = StatsReport(
            piece=self.piece,
            role=self.role,
            msgs_in=self.msgs_in,
            msgs_out=self.msgs_out,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            rows_in=self.rows_in,
            rows_out=self.rows_out,
            rate_in=(self.msgs_in - mi) / dt,
            rate_out=(self.msgs_out - mo) / dt,
            mb_in=(self.bytes_in - bi) / dt / 1e6,
            mb_out=(self.bytes_out - bo) / dt / 1e6,
            lost=seqs.total_lost,
            undecodable=self.undecodable,
            duplicates=seqs.total_duplicates,
            jumps=seqs.total_jumps,
            out_of_epoch=seqs.total_out_of_epoch,
            latency_p50_ms=ms(hist.percentile(0.5)),
            latency_p99_ms=ms(hist.percentile(0.99)),
            latency_max_ms=ms(hist.max) if hist.n else None,
            latency_count=self.latency_count,
            latency_sum_ms=self.latency_sum_ns / 1e6,
            queue=self.queue,
            restarts=self.restarts,
            last_in_ns=self.last_in_ns,
            last_out_ns=self.last_out_ns,
            extra=extra,
            **self._sampler.sample(),
        )
        hist.reset()
        self._last = (now, self.msgs_in, self.msgs_out, self.bytes_in, self.bytes_out)
        return report
