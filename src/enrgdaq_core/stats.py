"""Telemetry every piece sends each second: what it did, how late, what it lost.

Reports travel as msgpack (kind `stats`, topic `stats.<piece>`) so that `daq stats` never has
to load pyarrow. Loss is counted exactly from per-source sequence numbers; latency comes from
a log-bucketed histogram of (receive time - header send time), not an average.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import msgspec

from enrgdaq_core.envelope import Header, node_name

__all__ = [
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
    undecodable: int = 0
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


class SequenceTracker:
    """Per-source gap accounting. A new epoch (the source restarted) starts a new sequence."""

    __slots__ = ("expected", "epochs", "lost", "duplicates", "received")

    def __init__(self) -> None:
        self.expected: dict[str, int] = {}
        self.epochs: dict[str, int] = {}
        self.lost: dict[str, int] = {}
        self.duplicates: dict[str, int] = {}
        self.received: dict[str, int] = {}

    def observe(self, header: Header) -> int:
        """Record one message; returns how many were missed just before it."""
        src = header.source
        seq = header.seq
        self.received[src] = self.received.get(src, 0) + 1
        if self.epochs.get(src) != header.epoch:
            # First message of this source (or of its new incarnation): messages before seq 0
            # of a new epoch were never sent to us, unless we joined late, which a seq > 0 shows.
            known = src in self.epochs
            self.epochs[src] = header.epoch
            self.expected[src] = seq + 1
            gap = seq if known else 0
            if gap:
                self.lost[src] = self.lost.get(src, 0) + gap
            return gap
        want = self.expected[src]
        if seq == want:
            self.expected[src] = seq + 1
            return 0
        if seq > want:
            gap = seq - want
            self.lost[src] = self.lost.get(src, 0) + gap
            self.expected[src] = seq + 1
            return gap
        self.duplicates[src] = self.duplicates.get(src, 0) + 1
        return 0

    @property
    def total_lost(self) -> int:
        return sum(self.lost.values())


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
        """Count one incoming message; returns the sequence gap before it."""
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

        extra = dict(self.extra)
        if self.sequences.lost:
            extra.setdefault("lost_by_source", dict(self.sequences.lost))

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
            lost=self.sequences.total_lost,
            undecodable=self.undecodable,
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
