"""Alert rules over the stats stream: conditions, hold-off, clear, and webhook delivery.

A rule names pieces (shell patterns on node, piece, role) and one condition. The engine
evaluates every rule against a Monitor's view a few times a second and keeps one state per
(rule, node, piece). Every transition (raised, cleared) goes to the broker, which is the live
truth a watch table shows; people are notified (log, webhooks) through a hold-off, so a
flapping fault sends one notice per hold-off period, not a thousand. A raise held back by the
hold-off is not forgotten: if the condition still holds when the hold-off ends, it is sent
then, with the number of raises held back.

Webhooks are plain HTTP POSTs (stdlib urllib): a generic JSON body (the Alert's fields plus a
`text` line) or a Slack-compatible body (`text` and an attachment), sent from a thread and
retried with backoff, so a slow or dead endpoint never delays the evaluation.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import queue
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import msgspec

from enrgdaq_core.alert_wire import Alert
from enrgdaq_core.backoff import Backoff

if TYPE_CHECKING:
    from enrgdaq_core.monitor import Monitor, PieceView

log = logging.getLogger("enrgdaq.alerts")

CONDITIONS = (
    "rate_below",
    "rate_above",
    "lost_above",
    "stale_seconds",
    "restarts_above",
    "queue_above",
)
Severity = Literal["info", "warning", "error", "critical"]


class AlertRule(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One `[[alert]]` table of an alerts job: which pieces, and exactly one condition."""

    name: str = ""  # default: the condition and the piece pattern
    piece: str = "*"  # shell pattern on piece names
    node: str = "*"
    role: str = "*"  # job, store, broker, ...
    severity: Severity = "warning"
    message: str = ""  # fixed text; {node} {piece} {value} {threshold} {name} are filled in
    rate_below: float | None = None  # messages/s; a piece that stopped reporting counts as 0
    rate_above: float | None = None
    direction: Literal["auto", "in", "out"] = "auto"  # auto: out for jobs, in for the rest
    lost_above: int | None = None  # messages lost within window_seconds (0: any loss)
    stale_seconds: float | None = None  # no report for this long (or never seen)
    restarts_above: int | None = None  # restarts within window_seconds
    queue_above: int | None = None  # a piece's queue (a store's pending rows)
    window_seconds: float = 60.0  # for lost_above and restarts_above
    for_seconds: float = 0.0  # the condition must hold this long before it is raised
    hold_off_seconds: float | None = None  # default: the job's hold_off_seconds

    def __post_init__(self) -> None:
        given = [c for c in CONDITIONS if getattr(self, c) is not None]
        if len(given) != 1:
            raise ValueError(
                "an [[alert]] needs exactly one condition of "
                + ", ".join(CONDITIONS)
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.window_seconds <= 0:
            raise ValueError("window_seconds must be > 0")
        if self.for_seconds < 0 or (self.hold_off_seconds or 0) < 0:
            raise ValueError("for_seconds and hold_off_seconds must be >= 0")
        if not self.name:
            self.name = f"{self.condition}:{self.piece}:{self.threshold:g}"

    @property
    def condition(self) -> str:
        return next(c for c in CONDITIONS if getattr(self, c) is not None)

    @property
    def threshold(self) -> float:
        return float(getattr(self, self.condition))

    @property
    def exact_piece(self) -> bool:
        """A rule about one named piece: its absence is a fault (stale rules only)."""
        return not any(ch in self.piece for ch in "*?[")


class WebhookConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One `[[webhook]]` table: where notices are POSTed and how hard to try."""

    url: str
    format: Literal["json", "slack"] = "json"
    retries: int = 3  # further attempts after a failed one
    retry_seconds: float = 1.0  # wait before the first retry; doubles each time (max 60 s)
    timeout_seconds: float = 5.0
    headers: dict[str, str] = {}
    channel: str = ""  # slack: override the hook's channel
    username: str = ""  # slack: the name the notice is posted under

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"webhook url {self.url!r}: expected http:// or https://")
        if self.retries < 0 or self.retry_seconds < 0 or self.timeout_seconds <= 0:
            raise ValueError("webhook retries/retry_seconds must be >= 0, timeout_seconds > 0")


# -- evaluation --------------------------------------------------------------------------------


class _Counter:
    """Samples of a cumulative count, to tell how much it grew within a window."""

    __slots__ = ("samples",)

    def __init__(self, t0: float) -> None:
        self.samples: deque[tuple[float, int]] = deque([(t0, 0)])  # a new piece starts at 0

    def add(self, t: float, value: int, keep: float) -> None:
        self.samples.append((t, value))
        while len(self.samples) > 2 and self.samples[1][0] < t - keep:
            self.samples.popleft()

    def increase(self, now: float, window: float) -> int:
        """Growth within the window; a drop (a new process) counts its new value as growth."""
        total = 0
        prev: int | None = None
        for t, v in self.samples:
            if prev is not None and t >= now - window:
                total += v - prev if v >= prev else v
            prev = v
        return total


@dataclass
class _State:
    active: bool = False
    pending_since: float | None = None  # condition true, waiting for for_seconds
    since_ns: int = 0
    notified: bool = False  # this episode's raise was sent to people
    last_notice: float = -math.inf  # monotonic time of the last raise notice
    suppressed: int = 0


@dataclass
class Transition:
    alert: Alert
    notify: bool  # True: also for people (log, webhooks); False: held back by the hold-off


@dataclass
class AlertEngine:
    """Evaluates rules against a Monitor; returns transitions, hold-off applied."""

    job: str
    rules: list[AlertRule]
    hold_off: float = 300.0
    exclude: set[tuple[str, str]] = field(default_factory=set)  # (node, piece): ourselves
    clock: Callable[[], float] = time.monotonic
    _states: dict[tuple[int, str, str], _State] = field(default_factory=dict)
    _lost: dict[tuple[str, str], _Counter] = field(default_factory=dict)
    _restarts: dict[tuple[str, str], _Counter] = field(default_factory=dict)
    _started: float | None = None

    def _hold_off(self, rule: AlertRule) -> float:
        return self.hold_off if rule.hold_off_seconds is None else rule.hold_off_seconds

    def _track(self, views: Iterable[PieceView], now: float) -> None:
        keep = max((r.window_seconds for r in self.rules), default=60.0) + 5.0
        for v in views:
            key = v.key
            lost = self._lost.get(key)
            if lost is None:
                lost = self._lost[key] = _Counter(now)
                self._restarts[key] = _Counter(now)
            lost.add(now, v.report.lost, keep)
            self._restarts[key].add(now, v.restarts, keep)

    def _value(
        self, rule: AlertRule, view: PieceView | None, monitor: Monitor, now: float
    ) -> tuple[bool, float]:
        """(condition holds, the measured value) for one piece."""
        cond = rule.condition
        limit = rule.threshold
        if view is None:  # an exact piece that was never seen: only a stale rule cares
            assert self._started is not None
            age = now - self._started
            return age > limit, age
        if cond == "stale_seconds":
            age = view.age(now)
            return age > limit, age
        if cond in ("rate_below", "rate_above"):
            r = view.report
            rate = {"auto": view.rate, "in": r.rate_in, "out": r.rate_out}[rule.direction]
            if view.stopped or view.age(now) > monitor.stale_after:
                rate = 0.0  # silent is not fast: a piece that stopped reporting moves nothing
            return (rate < limit if cond == "rate_below" else rate > limit), rate
        if cond == "lost_above":
            n = self._lost[view.key].increase(now, rule.window_seconds)
            return n > limit, float(n)
        if cond == "restarts_above":
            n = self._restarts[view.key].increase(now, rule.window_seconds)
            return n > limit, float(n)
        if cond == "queue_above":
            q = view.report.queue
            return q > limit, float(q)
        raise AssertionError(cond)

    def evaluate(self, monitor: Monitor, now: float | None = None) -> list[Transition]:
        now = self.clock() if now is None else now
        if self._started is None:
            self._started = now
        views = [v for v in monitor.pieces(now=now) if v.key not in self.exclude]
        self._track(views, now)
        out: list[Transition] = []
        for index, rule in enumerate(self.rules):
            targets: dict[tuple[str, str], PieceView | None] = {
                v.key: v
                for v in views
                if fnmatch.fnmatchcase(v.piece, rule.piece)
                and fnmatch.fnmatchcase(v.node, rule.node)
                and fnmatch.fnmatchcase(v.role, rule.role)
            }
            if not targets and rule.condition == "stale_seconds" and rule.exact_piece:
                targets[("", rule.piece)] = None
            for key, view in targets.items():
                holds, value = self._value(rule, view, monitor, now)
                out.extend(self._step(index, rule, key, holds, value, now))
            # a state whose piece no longer matches (a never-seen piece that appeared) ends
            for skey in [k for k in self._states if k[0] == index and k[1:] not in targets]:
                out.extend(self._step(index, rule, (skey[1], skey[2]), False, None, now))
                self._states.pop(skey, None)
        return out

    def _step(
        self,
        index: int,
        rule: AlertRule,
        key: tuple[str, str],
        holds: bool,
        value: float | None,
        now: float,
    ) -> list[Transition]:
        st = self._states.setdefault((index, *key), _State())
        hold_off = self._hold_off(rule)
        if holds:
            if not st.active:
                if st.pending_since is None:
                    st.pending_since = now
                    st.since_ns = time.time_ns()
                if now - st.pending_since < rule.for_seconds:
                    return []
                st.active = True
                if now - st.last_notice >= hold_off:
                    return [self._raise(rule, key, st, value, now)]
                st.suppressed += 1
                st.notified = False
                return [Transition(self._alert(rule, key, st, "raised", value), notify=False)]
            if not st.notified and now - st.last_notice >= hold_off:
                return [self._raise(rule, key, st, value, now)]  # held back, still true
            return []
        st.pending_since = None
        if not st.active:
            return []
        st.active = False
        alert = self._alert(rule, key, st, "cleared", value)
        notify = st.notified
        st.notified = False
        return [Transition(alert, notify=notify)]

    def _raise(
        self, rule: AlertRule, key: tuple[str, str], st: _State, value: float | None, now: float
    ) -> Transition:
        alert = self._alert(rule, key, st, "raised", value)
        st.notified = True
        st.last_notice = now
        st.suppressed = 0
        return Transition(alert, notify=True)

    def _alert(
        self, rule: AlertRule, key: tuple[str, str], st: _State, state: str, value: float | None
    ) -> Alert:
        node, piece = key
        alert = Alert(
            job=self.job,
            name=rule.name,
            condition=rule.condition,
            state=state,
            node=node,
            piece=piece,
            severity=rule.severity,
            value=None if value is None else round(value, 6),
            threshold=rule.threshold,
            since_ns=st.since_ns,
            suppressed=st.suppressed if state == "raised" else 0,
        )
        alert.message = describe(alert, rule)
        return alert

    def active(self) -> list[tuple[str, str, str]]:
        """(rule name, node, piece) of every alert now raised."""
        return [(self.rules[k[0]].name, k[1], k[2]) for k, s in self._states.items() if s.active]


def describe(alert: Alert, rule: AlertRule | None = None) -> str:
    """The human line of an alert: the rule's own message, or one made from the condition."""
    fields = {
        "node": alert.node,
        "piece": alert.piece,
        "value": alert.value,
        "threshold": alert.threshold,
        "name": alert.name,
    }
    if rule is not None and rule.message:
        try:
            return rule.message.format_map(fields)
        except (KeyError, ValueError, IndexError, AttributeError):
            return rule.message
    v = alert.value if alert.value is not None else 0.0
    t = alert.threshold if alert.threshold is not None else 0.0
    window = f" in the last {rule.window_seconds:g} s" if rule is not None else ""
    what = {
        "rate_below": f"rate {v:.3g}/s, below {t:g}/s",
        "rate_above": f"rate {v:.3g}/s, above {t:g}/s",
        "lost_above": f"{v:g} messages lost{window} (limit {t:g})",
        "stale_seconds": (f"no report for {v:.0f} s" if alert.node else f"never seen in {v:.0f} s"),
        "restarts_above": f"{v:g} restarts{window} (limit {t:g})",
        "queue_above": f"{v:g} waiting, above {t:g}",
    }.get(alert.condition, f"{alert.condition} {v:g} (limit {t:g})")
    if alert.state == "cleared":
        what = "back to normal" + (f" ({what})" if alert.value is not None else "")
    return what


def alert_text(alert: Alert) -> str:
    """One line for logs and chat: `RAISED [warning] sensor1@host: rate 0/s ... (rule)`."""
    where = f"{alert.piece}@{alert.node}" if alert.node else alert.piece
    held = f" ({alert.suppressed} more held back by the hold-off)" if alert.suppressed else ""
    return (
        f"{alert.state.upper()} [{alert.severity}] {where}: {alert.message}"
        f" (alert {alert.name!r}){held}"
    )


def log_alert(alert: Alert) -> None:
    if alert.state == "cleared":
        level = logging.INFO
    elif alert.severity in ("error", "critical"):
        level = logging.ERROR
    else:
        level = logging.WARNING
    log.log(level, "%s", alert_text(alert))


# -- webhooks ----------------------------------------------------------------------------------

_SLACK_COLOURS = {"raised": "#d03030", "cleared": "#30a030"}


def payload(alert: Alert, hook: WebhookConfig) -> bytes:
    """The POST body for one notice in the hook's format."""
    text = alert_text(alert)
    if hook.format == "json":
        return msgspec.json.encode({**msgspec.to_builtins(alert), "text": text})
    body: dict[str, object] = {
        "text": text,
        "attachments": [
            {
                "color": _SLACK_COLOURS.get(alert.state, "#d0a030"),
                "fields": [
                    {"title": "piece", "value": alert.piece, "short": True},
                    {"title": "node", "value": alert.node or "-", "short": True},
                    {"title": "alert", "value": alert.name, "short": True},
                    {"title": "severity", "value": alert.severity, "short": True},
                ],
                "ts": alert.time_ns // 1_000_000_000,
            }
        ],
    }
    if hook.channel:
        body["channel"] = hook.channel
    if hook.username:
        body["username"] = hook.username
    return msgspec.json.encode(body)


class DeliveryError(Exception):
    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


def post(url: str, body: bytes, *, timeout: float, headers: dict[str, str] | None = None) -> int:
    """POST once; returns the HTTP status or raises DeliveryError (retry says if worth it)."""
    req = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "enrgdaq-alerts"}
        | (headers or {}),
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - http(s) only
            resp.read()
            return resp.status
    except urllib.error.HTTPError as exc:
        retry = exc.code >= 500 or exc.code in (408, 429)
        raise DeliveryError(f"HTTP {exc.code} from {url}", retry=retry) from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DeliveryError(f"{url}: {reason}", retry=True) from None


_CLOSE = object()


class WebhookSender:
    """Posts notices to one webhook from its own thread, in order, retrying with backoff."""

    def __init__(
        self,
        hook: WebhookConfig,
        *,
        poster: Callable[..., int] = post,
        sleep: Callable[[float], bool] | None = None,
    ) -> None:
        self.hook = hook
        self.delivered = 0
        self.failed = 0
        self.attempts = 0
        self.last_error = ""
        self._poster = poster
        self._abort = threading.Event()
        self._sleep = sleep or self._abort.wait
        self._q: queue.Queue[object] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="webhook", daemon=True)
        self._thread.start()

    def send(self, alert: Alert) -> None:
        self._q.put(alert)

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is _CLOSE:
                return
            assert isinstance(item, Alert)
            self._deliver(item)

    def _deliver(self, alert: Alert) -> None:
        hook = self.hook
        body = payload(alert, hook)
        backoff = Backoff(hook.retry_seconds, 60.0)
        for attempt in range(hook.retries + 1):
            self.attempts += 1
            try:
                self._poster(hook.url, body, timeout=hook.timeout_seconds, headers=hook.headers)
                self.delivered += 1
                return
            except DeliveryError as exc:
                self.last_error = str(exc)
                last = attempt == hook.retries or not exc.retry or self._abort.is_set()
                log.warning(
                    "webhook %s: %s%s",
                    hook.url,
                    exc,
                    "; giving up on this notice" if last else f"; retry in {backoff.current:g} s",
                )
                if last:
                    break
                if self._sleep(backoff.next_delay()):  # the abort event: shutting down
                    break
        self.failed += 1

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued within `timeout`, then stop retrying and return."""
        self._q.put(_CLOSE)
        self._thread.join(timeout)
        self._abort.set()
        self._thread.join(1.0)
