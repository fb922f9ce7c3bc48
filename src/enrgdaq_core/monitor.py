"""The live view of a running system, built from the stats stream: one entry per piece.

Every piece publishes a StatsReport each second on `stats.<piece>`; an alerts job publishes
Alert transitions on `alert.<job>`. A `Monitor` keeps the latest report of each (node, piece),
when it was last seen, how often its process changed (restarts), and the alerts active about
it. A piece that stops reporting is marked stale, never dropped: at 3 a.m. a missing row is
easy to miss, a yellow one is not.

`daq stats`, the Prometheus exporter and the alerts job all read through this one module, as
monitor consumers (the broker's dropping endpoint): watching never slows the experiment down,
and the reports a monitor misses are counted too.
"""

from __future__ import annotations

import fnmatch
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from enrgdaq_core.alert_wire import Alert
from enrgdaq_core.channels import BrokerInput
from enrgdaq_core.envelope import Envelope, EnvelopeError, Kind, decode_body
from enrgdaq_core.stats import SequenceTracker, StatsReport, primary_rate
from enrgdaq_core.transport import BrokerAddress, CurveKeys

__all__ = [
    "LOSSY_WINDOW",
    "ROLE_ORDER",
    "SORT_KEYS",
    "STALE_AFTER",
    "STATUSES",
    "Monitor",
    "PieceView",
    "StatsFeed",
    "Totals",
    "collect",
    "sort_pieces",
]

STALE_AFTER = 5.0  # seconds without a report before a piece is shown stale
LOSSY_WINDOW = 10.0  # a piece whose loss count grew this recently is shown lossy

STATUSES = ("ok", "lossy", "alert", "stale", "stopped")
ROLE_ORDER = {"broker": 0, "supervisor": 1, "bridge": 2, "job": 3, "store": 4, "monitor": 5}
SORT_KEYS = ("name", "rate", "lost", "latency", "age")


@dataclass
class PieceView:
    """What the monitor knows about one (node, piece)."""

    node: str
    piece: str
    report: StatsReport
    first_seen: float  # monotonic
    last_seen: float  # monotonic
    reports: int = 1
    restarts_seen: int = 0  # process changes (pid) we watched happen
    lost_changed_at: float | None = None  # monotonic time the loss count last grew
    alerts: dict[str, Alert] = field(default_factory=dict)
    reported: bool = True  # False: known only from the broker's topics, no report seen

    @property
    def key(self) -> tuple[str, str]:
        return (self.node, self.piece)

    @property
    def role(self) -> str:
        return self.report.role

    @property
    def stopped(self) -> bool:
        """The piece said goodbye (its last report is marked final)."""
        return bool(self.report.extra.get("final"))

    @property
    def restarts(self) -> int:
        """Restarts from the supervisor's count, or the process changes we saw ourselves."""
        return max(self.report.restarts, self.restarts_seen)

    @property
    def rate(self) -> float:
        """The figure people watch: messages out for a source, in for a store or the broker."""
        r = self.report
        return primary_rate(r.role, r.rate_in, r.rate_out)

    @property
    def mb_rate(self) -> float:
        r = self.report
        return r.mb_out if r.role == "job" else max(r.mb_in, r.mb_out)

    @property
    def lost_by_source(self) -> dict[str, int]:
        per = self.report.extra.get("lost_by_source")
        if isinstance(per, dict) and per:
            return {str(k): int(v) for k, v in per.items()}
        return {"": self.report.lost} if self.report.lost else {}

    def age(self, now: float) -> float:
        return max(0.0, now - self.last_seen)

    def status(
        self, now: float, stale_after: float = STALE_AFTER, lossy_window: float = LOSSY_WINDOW
    ) -> str:
        if self.stopped:
            return "stopped"
        if not self.reported or self.age(now) > stale_after:
            return "stale"
        if self.alerts:
            return "alert"
        if self.lost_changed_at is not None and now - self.lost_changed_at < lossy_window:
            return "lossy"
        return "ok"

    def to_dict(self, now: float, stale_after: float = STALE_AFTER) -> dict[str, Any]:
        """Plain data for --json and scripts: every field of the report (those at their
        default too: a script reads `lost` or `duplicates` as 0, not as missing) plus the
        monitor's view."""
        out: dict[str, Any] = {
            "node": self.node,
            "piece": self.piece,
            "role": self.role,
            "status": self.status(now, stale_after),
            "age_s": round(self.age(now), 3) if self.reported else None,
            "restarts": self.restarts,
            "rate": self.rate,
            "alerts": [msgspec.to_builtins(a) for a in self.alerts.values()],
        }
        report = msgspec.to_builtins(msgspec.structs.asdict(self.report))
        report.pop("restarts", None)
        return {**report, **out}


@dataclass
class Totals:
    """Counts over every piece, for a watch table's footer and the exporter."""

    pieces: int
    by_status: dict[str, int]
    lost: int  # messages lost, summed over every piece that counts gaps
    missed_reports: int  # stats messages this monitor itself did not receive
    active_alerts: int
    undecodable: int = 0  # summed over every piece, like the three below
    duplicates: int = 0
    jumps: int = 0
    out_of_epoch: int = 0
    monitor_undecodable: int = 0  # what this monitor itself could not decode


class Monitor:
    """Thread-safe per-piece view; feed it envelopes (`observe`) or reports (`add_report`)."""

    def __init__(
        self,
        *,
        stale_after: float = STALE_AFTER,
        lossy_window: float = LOSSY_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stale_after = stale_after
        self.lossy_window = lossy_window
        self.clock = clock
        self.started = clock()
        self._pieces: dict[tuple[str, str], PieceView] = {}
        self._alerts: dict[str, Alert] = {}
        self._gaps = SequenceTracker()  # per stats topic: reports we missed
        self.undecodable = 0  # reports and alerts whose payload did not decode
        self.input_undecodable = 0  # messages our input skipped (set by StatsFeed)
        self.lock = threading.Lock()
        self.listeners: list[Callable[[Envelope, Any], None]] = []

    # -- input ------------------------------------------------------------------------------

    def observe(self, env: Envelope) -> Any:
        """Take one envelope off the stats/alert stream; returns the decoded body or None."""
        kind = env.header.kind
        if kind not in (Kind.STATS, Kind.ALERT):
            return None
        # a piece's stats and its data share a source name but not a sequence: key by topic
        self._gaps.observe(msgspec.structs.replace(env.header, source=env.topic))
        try:
            if kind is Kind.STATS:
                body: Any = decode_body(env.payload, StatsReport)
                self.add_report(body)
            else:
                body = decode_body(env.payload, Alert)
                self.add_alert(body)
        except EnvelopeError:
            self.undecodable += 1
            return None
        for listener in self.listeners:
            listener(env, body)
        return body

    def add_report(self, report: StatsReport, now: float | None = None) -> PieceView:
        now = self.clock() if now is None else now
        key = (report.node, report.piece)
        with self.lock:
            view = self._pieces.get(key)
            if view is None:
                self._pieces.pop(("", report.piece), None)  # it was only known by name
                view = PieceView(report.node, report.piece, report, now, now)
                if report.lost:
                    view.lost_changed_at = now
                view.alerts = {k: a for k, a in self._alerts.items() if (a.node, a.piece) == key}
                self._pieces[key] = view
                return view
            old = view.report
            if report.pid != old.pid:
                view.restarts_seen += 1
                if report.lost:
                    view.lost_changed_at = now
            elif report.lost > old.lost:
                view.lost_changed_at = now
            view.report = report
            view.last_seen = now
            view.reports += 1
            return view

    def add_known(self, pieces: Iterable[str], now: float | None = None) -> list[str]:
        """Pieces that published stats before we listened (from the broker's topic counts).

        They get a row marked stale with no figures, so a snapshot shows a piece that died.
        Returns the names added.
        """
        now = self.clock() if now is None else now
        added = []
        with self.lock:
            have = {p for _, p in self._pieces}
            for piece in pieces:
                if piece and piece not in have:
                    report = StatsReport(piece=piece, role="?", node="", pid=0, time_ns=0)
                    self._pieces[("", piece)] = PieceView(
                        "", piece, report, now, now, reported=False
                    )
                    added.append(piece)
        return added

    def known_from_broker(self) -> list[str]:
        """Piece names whose stats topic the broker has carried (from its own reports)."""
        names: set[str] = set()
        for v in self.pieces():
            topics = v.report.extra.get("topics") if v.role == "broker" else None
            if isinstance(topics, dict):
                names.update(t[len("stats.") :] for t in topics if t.startswith("stats."))
        return sorted(names)

    def add_alert(self, alert: Alert, now: float | None = None) -> None:
        with self.lock:
            view = self._pieces.get((alert.node, alert.piece))
            if alert.state == "cleared":
                self._alerts.pop(alert.key, None)
                if view is not None:
                    view.alerts.pop(alert.key, None)
            else:
                self._alerts[alert.key] = alert
                if view is not None:
                    view.alerts[alert.key] = alert

    # -- output -----------------------------------------------------------------------------

    def pieces(self, sort: str = "name", *, now: float | None = None) -> list[PieceView]:
        """A sorted copy of every piece ever seen (stale ones included)."""
        now = self.clock() if now is None else now
        with self.lock:
            views = list(self._pieces.values())
        return sort_pieces(views, sort, now)

    def get(self, node: str, piece: str) -> PieceView | None:
        with self.lock:
            return self._pieces.get((node, piece))

    def matching(self, piece: str = "*", node: str = "*", role: str = "*") -> list[PieceView]:
        """Pieces whose names match shell-style patterns (`sensor*`, `store-?sv`)."""
        with self.lock:
            views = list(self._pieces.values())
        return [
            v
            for v in views
            if fnmatch.fnmatchcase(v.piece, piece)
            and fnmatch.fnmatchcase(v.node, node)
            and fnmatch.fnmatchcase(v.role, role)
        ]

    def alerts(self) -> list[Alert]:
        """Active alerts (raised, not yet cleared), oldest first."""
        with self.lock:
            return sorted(self._alerts.values(), key=lambda a: a.since_ns or a.time_ns)

    @property
    def missed_reports(self) -> int:
        return self._gaps.total_lost

    def totals(self, now: float | None = None) -> Totals:
        now = self.clock() if now is None else now
        views = self.pieces(now=now)
        by_status = dict.fromkeys(STATUSES, 0)
        for v in views:
            by_status[v.status(now, self.stale_after, self.lossy_window)] += 1
        return Totals(
            pieces=len(views),
            by_status=by_status,
            lost=sum(v.report.lost for v in views),
            missed_reports=self.missed_reports,
            active_alerts=len(self._alerts),
            undecodable=sum(v.report.undecodable for v in views),
            duplicates=sum(v.report.duplicates for v in views),
            jumps=sum(v.report.jumps for v in views),
            out_of_epoch=sum(v.report.out_of_epoch for v in views),
            monitor_undecodable=self.undecodable + self.input_undecodable,
        )

    def snapshot(self, sort: str = "name") -> dict[str, Any]:
        """Everything as plain data (`daq stats --json`)."""
        now = self.clock()
        totals = self.totals(now)
        return {
            "time_ns": time.time_ns(),
            "pieces": [v.to_dict(now, self.stale_after) for v in self.pieces(sort, now=now)],
            "alerts": [msgspec.to_builtins(a) for a in self.alerts()],
            "totals": {
                "pieces": totals.pieces,
                "by_status": totals.by_status,
                "lost": totals.lost,
                "undecodable": totals.undecodable,
                "duplicates": totals.duplicates,
                "jumps": totals.jumps,
                "out_of_epoch": totals.out_of_epoch,
                "missed_reports": totals.missed_reports,
                "monitor_undecodable": totals.monitor_undecodable,
                "active_alerts": totals.active_alerts,
            },
        }


def sort_pieces(views: Iterable[PieceView], sort: str, now: float) -> list[PieceView]:
    """`views` in display order: node, role, name; then by `sort` (SORT_KEYS), largest first."""

    def by_name(v: PieceView) -> tuple[Any, ...]:
        return (v.node, ROLE_ORDER.get(v.role, 9), v.piece)

    views = sorted(views, key=by_name)
    if sort == "rate":
        views.sort(key=lambda v: -v.rate)
    elif sort == "lost":
        views.sort(key=lambda v: -v.report.lost)
    elif sort == "latency":
        views.sort(key=lambda v: -(v.report.latency_p99_ms or -1.0))
    elif sort == "age":
        views.sort(key=lambda v: -v.age(now))
    elif sort != "name":
        raise ValueError(f"unknown sort key {sort!r} (expected one of: {', '.join(SORT_KEYS)})")
    return views


class StatsFeed:
    """A monitor consumer of the stats and alert topics that keeps a Monitor current."""

    def __init__(
        self,
        address: BrokerAddress,
        monitor: Monitor,
        *,
        topics: Iterable[str] = ("stats.", "alert."),
        hwm: int | None = None,
        keys: CurveKeys | None = None,
    ) -> None:
        self.monitor = monitor
        self.input = BrokerInput(address, list(topics), mode="monitor", hwm=hwm, keys=keys)

    @property
    def socket(self) -> Any:
        return self.input.subscriber.socket

    @property
    def undecodable(self) -> int:
        return self.input.undecodable + self.monitor.undecodable

    def poll(self, timeout: float = 0.0, limit: int = 10_000) -> int:
        """Take what has arrived (waiting up to `timeout` for the first); returns how many."""
        n = 0
        env = self.input.recv(timeout)
        while env is not None:
            self.monitor.observe(env)
            n += 1
            if n >= limit:
                break
            env = self.input.recv(0)
        self.monitor.input_undecodable = self.input.undecodable
        return n

    def run_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.poll(min(left, 0.2))

    def close(self) -> None:
        self.input.close()


def collect(
    address: BrokerAddress,
    seconds: float = 1.5,
    *,
    stale_after: float = STALE_AFTER,
    keys: CurveKeys | None = None,
) -> Monitor:
    """Listen for `seconds` (a report comes every second) and return what was seen."""
    monitor = Monitor(stale_after=stale_after)
    feed = StatsFeed(address, monitor, keys=keys)
    try:
        feed.run_for(seconds)
    finally:
        feed.close()
    monitor.add_known(monitor.known_from_broker())
    return monitor
