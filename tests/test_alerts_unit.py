"""Alert rules without processes: every condition raised and cleared, hold-off, for_seconds,
config errors, and webhook delivery (JSON and Slack bodies, retries) to a loopback server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import msgspec
import pytest

from enrgdaq_core.alert_wire import Alert
from enrgdaq_core.alerts import (
    AlertEngine,
    AlertRule,
    DeliveryError,
    WebhookConfig,
    WebhookSender,
    alert_text,
    payload,
    post,
)
from enrgdaq_core.config import ConfigError
from enrgdaq_core.monitor import Monitor
from enrgdaq_core.stats import StatsReport


class Clock:
    def __init__(self) -> None:
        self.t = 500.0

    def __call__(self) -> float:
        return self.t


def _report(piece: str = "s1", role: str = "job", **kw: object) -> StatsReport:
    kw.setdefault("node", "n1")
    kw.setdefault("pid", 10)
    return StatsReport(piece=piece, role=role, **kw)  # type: ignore[arg-type]


def _rule(**kw: object) -> AlertRule:
    return msgspec.convert(kw, AlertRule)


def _engine(clock: Clock, *rules: AlertRule, hold_off: float = 0.0) -> AlertEngine:
    return AlertEngine("alerts", list(rules), hold_off=hold_off, clock=clock)


def _states(transitions: list) -> list[tuple[str, str, bool]]:
    return [(t.alert.name, t.alert.state, t.notify) for t in transitions]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def mon(clock: Clock) -> Monitor:
    return Monitor(stale_after=3.0, clock=clock)


def test_rate_below_and_above(clock: Clock, mon: Monitor) -> None:
    eng = _engine(clock, _rule(name="low", rate_below=10), _rule(name="high", rate_above=100))
    mon.add_report(_report(rate_out=50))
    assert eng.evaluate(mon) == []
    mon.add_report(_report(rate_out=2))
    out = eng.evaluate(mon)
    assert _states(out) == [("low", "raised", True)]
    a = out[0].alert
    assert (a.condition, a.node, a.piece, a.value, a.threshold) == ("rate_below", "n1", "s1", 2, 10)
    assert "rate 2/s, below 10/s" in a.message
    mon.add_report(_report(rate_out=500))
    assert _states(eng.evaluate(mon)) == [("low", "cleared", True), ("high", "raised", True)]
    mon.add_report(_report(rate_out=50))
    assert _states(eng.evaluate(mon)) == [("high", "cleared", True)]


def test_a_silent_piece_counts_as_rate_zero(clock: Clock, mon: Monitor) -> None:
    eng = _engine(clock, _rule(name="low", rate_below=10), _rule(name="high", rate_above=20))
    mon.add_report(_report(rate_out=50))
    assert _states(eng.evaluate(mon)) == [("high", "raised", True)]
    clock.t += 4  # no report for longer than stale_after: its last rate is not believed
    assert _states(eng.evaluate(mon)) == [("low", "raised", True), ("high", "cleared", True)]


def test_direction_and_role_filters(clock: Clock, mon: Monitor) -> None:
    eng = _engine(
        clock,
        _rule(name="store-in", role="store", rate_below=5, direction="in"),
        _rule(name="job-in", piece="s*", role="job", rate_below=5, direction="in"),
    )
    mon.add_report(_report("st", "store", rate_in=50, rate_out=0))
    mon.add_report(_report("s1", "job", rate_in=0, rate_out=50))
    assert _states(eng.evaluate(mon)) == [("job-in", "raised", True)]


def test_lost_within_a_window(clock: Clock, mon: Monitor) -> None:
    eng = _engine(clock, _rule(name="loss", lost_above=0, window_seconds=10))
    mon.add_report(_report(lost=0))
    assert eng.evaluate(mon) == []
    clock.t += 1
    mon.add_report(_report(lost=7))
    out = eng.evaluate(mon)
    assert _states(out) == [("loss", "raised", True)] and out[0].alert.value == 7
    clock.t += 5
    mon.add_report(_report(lost=7))
    assert eng.evaluate(mon) == []  # still inside the window
    clock.t += 6
    mon.add_report(_report(lost=7))
    assert _states(eng.evaluate(mon)) == [("loss", "cleared", True)]
    # a new process starts counting from 0: its losses count, the drop does not
    clock.t += 1
    mon.add_report(_report(lost=2, pid=11))
    out = eng.evaluate(mon)
    assert _states(out) == [("loss", "raised", True)] and out[0].alert.value == 2


def test_lost_above_a_bound_and_a_piece_first_seen_lossy(clock: Clock, mon: Monitor) -> None:
    eng = _engine(clock, _rule(name="loss", lost_above=5, window_seconds=10))
    mon.add_report(_report(lost=3))
    assert eng.evaluate(mon) == []  # 3 is not above 5
    clock.t += 1
    mon.add_report(_report(lost=9))
    assert _states(eng.evaluate(mon)) == [("loss", "raised", True)]


def test_stale_and_never_seen(clock: Clock, mon: Monitor) -> None:
    eng = _engine(
        clock,
        _rule(name="silent", piece="s*", stale_seconds=2),
        _rule(name="missing", piece="digi", stale_seconds=5),
    )
    mon.add_report(_report("s1"))
    assert eng.evaluate(mon) == []
    clock.t += 3
    out = eng.evaluate(mon)
    assert _states(out) == [("silent", "raised", True)]
    assert out[0].alert.message == "no report for 3 s"
    clock.t += 3  # digi never reported in 6 s
    out = eng.evaluate(mon)
    assert _states(out) == [("missing", "raised", True)]
    assert (out[0].alert.node, out[0].alert.piece) == ("", "digi")
    assert "never seen" in out[0].alert.message
    mon.add_report(_report("s1"))
    mon.add_report(_report("digi"))
    assert sorted(_states(eng.evaluate(mon))) == [
        ("missing", "cleared", True),
        ("silent", "cleared", True),
    ]


def test_restarts_within_a_window(clock: Clock, mon: Monitor) -> None:
    eng = _engine(clock, _rule(name="flappy", restarts_above=1, window_seconds=30))
    mon.add_report(_report(pid=1))
    eng.evaluate(mon)
    for pid in (2, 3):  # two new processes under the same name
        clock.t += 1
        mon.add_report(_report(pid=pid))
        out = eng.evaluate(mon)
    assert _states(out) == [("flappy", "raised", True)] and out[0].alert.value == 2
    clock.t += 31
    mon.add_report(_report(pid=3))
    assert _states(eng.evaluate(mon)) == [("flappy", "cleared", True)]
    # the supervisor's count (report.restarts) is used when it is higher
    clock.t += 1
    mon.add_report(_report(pid=3, restarts=5))
    assert _states(eng.evaluate(mon)) == [("flappy", "raised", True)]


def test_queue_above(clock: Clock, mon: Monitor) -> None:
    eng = _engine(clock, _rule(name="backlog", role="store", queue_above=1000))
    mon.add_report(_report("st", "store", queue=10))
    assert eng.evaluate(mon) == []
    mon.add_report(_report("st", "store", queue=5000))
    assert _states(eng.evaluate(mon)) == [("backlog", "raised", True)]
    mon.add_report(_report("st", "store", queue=0))
    assert _states(eng.evaluate(mon)) == [("backlog", "cleared", True)]


def test_hold_off_holds_back_a_flapping_fault(clock: Clock, mon: Monitor) -> None:
    """One notice per hold-off period; every transition still goes to the broker; a raise
    held back is sent when the hold-off ends if the fault is still there."""
    eng = _engine(clock, _rule(name="low", rate_below=10), hold_off=60)
    notices: list[tuple[str, int]] = []
    broker: list[str] = []
    for i in range(20):  # flaps every evaluation for 20 s
        clock.t += 1
        mon.add_report(_report(rate_out=0 if i % 2 == 0 else 50))
        for t in eng.evaluate(mon):
            broker.append(t.alert.state)
            if t.notify:
                notices.append((t.alert.state, t.alert.suppressed))
    assert broker == ["raised", "cleared"] * 10
    assert notices == [("raised", 0), ("cleared", 0)]
    clock.t += 50  # hold-off over, and the fault is back
    mon.add_report(_report(rate_out=0))
    out = eng.evaluate(mon)
    assert [(t.alert.state, t.notify, t.alert.suppressed) for t in out] == [("raised", True, 9)]
    assert "9 more held back" in alert_text(out[0].alert)


def test_a_raise_held_back_is_sent_when_the_hold_off_ends(clock: Clock, mon: Monitor) -> None:
    eng = _engine(clock, _rule(name="low", rate_below=10), hold_off=30)
    mon.add_report(_report(rate_out=0))
    assert _states(eng.evaluate(mon)) == [("low", "raised", True)]
    mon.add_report(_report(rate_out=50))
    assert _states(eng.evaluate(mon)) == [("low", "cleared", True)]
    clock.t += 5
    mon.add_report(_report(rate_out=0))
    assert _states(eng.evaluate(mon)) == [("low", "raised", False)]  # held back
    clock.t += 10
    assert eng.evaluate(mon) == []  # still held back, still true
    clock.t += 16
    out = eng.evaluate(mon)
    assert _states(out) == [("low", "raised", True)] and out[0].alert.suppressed == 1
    mon.add_report(_report(rate_out=50))
    assert _states(eng.evaluate(mon)) == [("low", "cleared", True)]


def test_for_seconds_debounces(clock: Clock, mon: Monitor) -> None:
    eng = _engine(clock, _rule(name="low", rate_below=10, for_seconds=5))
    mon.add_report(_report(rate_out=0))
    assert eng.evaluate(mon) == []
    clock.t += 3
    mon.add_report(_report(rate_out=50))  # recovered before for_seconds: nothing to say
    assert eng.evaluate(mon) == []
    mon.add_report(_report(rate_out=0))
    eng.evaluate(mon)
    clock.t += 5
    mon.add_report(_report(rate_out=0))
    assert _states(eng.evaluate(mon)) == [("low", "raised", True)]


def test_alerts_job_excludes_itself(clock: Clock, mon: Monitor) -> None:
    eng = AlertEngine("al", [_rule(name="any", rate_below=1)], clock=clock, exclude={("n1", "al")})
    mon.add_report(_report("al", rate_out=0))
    assert eng.evaluate(mon) == []


def test_custom_message(clock: Clock, mon: Monitor) -> None:
    eng = _engine(clock, _rule(name="low", rate_below=10, message="{piece} on {node} is slow"))
    mon.add_report(_report(rate_out=1))
    assert eng.evaluate(mon)[0].alert.message == "s1 on n1 is slow"


# -- configs ------------------------------------------------------------------------------------


def _load(tmp_path: Path, text: str) -> object:
    from enrgdaq_core.jobs import load_job

    path = tmp_path / "alerts.toml"
    path.write_text(text)
    return load_job(path)


def test_config_loads(tmp_path: Path) -> None:
    job = _load(
        tmp_path,
        """
daq_job_type = "alerts"
hold_off_seconds = 60

[[alert]]
name = "slow sensors"
piece = "sensor*"
rate_below = 5.0

[[alert]]
role = "store"
queue_above = 10000
severity = "error"

[[webhook]]
url = "https://hooks.slack.com/services/T/B/X"
format = "slack"
""",
    )
    cfg = job.config  # type: ignore[attr-defined]
    assert [r.name for r in cfg.alert] == ["slow sensors", "queue_above:*:10000"]
    assert cfg.webhook[0].format == "slack" and cfg.interval_seconds == 0.5


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("[[alert]]\npiece = 'x'\n", "an [[alert]] needs exactly one condition of rate_below"),
        ("[[alert]]\nrate_below = 1\nqueue_above = 2\n", "(got rate_below, queue_above)"),
        ("[[alert]]\nrate_bellow = 1\n", "alert[0].rate_bellow: unknown key, did you mean 'rate_below'?"),
        ("[[webhook]]\nurl = 'file:///etc/passwd'\n", "expected http:// or https://"),
        ("[[webhook]]\nurl = 'http://x'\nformat = 'teams'\n", "webhook[0].format: expected one of 'json', 'slack'"),
        ("[[alert]]\nname='a'\nrate_below=1\n[[alert]]\nname='a'\nrate_above=2\n", "two [[alert]] tables are named 'a'"),
    ],
)  # fmt: skip
def test_config_errors(tmp_path: Path, body: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, "daq_job_type = 'alerts'\n" + body)
    assert expected in str(err.value)


# -- webhooks -------------------------------------------------------------------------------------


class Hook:
    """A webhook endpoint on loopback: records bodies; fails the first `fail` requests."""

    def __init__(self, fail: int = 0, status: int = 500) -> None:
        self.bodies: list[dict] = []
        self.requests = 0
        self.fail = fail
        self.status = status
        self.cond = threading.Condition()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with hook.cond:
                    hook.requests += 1
                    failing = hook.requests <= hook.fail
                    if not failing:
                        hook.bodies.append(json.loads(body))
                    hook.cond.notify_all()
                self.send_response(hook.status if failing else 200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.close()


def _alert(state: str = "raised") -> Alert:
    return Alert(
        job="al", name="slow", condition="rate_below", state=state, node="n1", piece="s1",
        value=0.0, threshold=5.0, message="rate 0/s, below 5/s",
    )  # fmt: skip


def test_json_webhook_with_retries(hook: Hook) -> None:
    hook.fail = 2
    sender = WebhookSender(
        msgspec.convert({"url": hook.url, "retries": 3, "retry_seconds": 0.05}, WebhookConfig)
    )
    sender.send(_alert())
    sender.close(timeout=10)
    assert hook.requests == 3 and sender.delivered == 1 and sender.attempts == 3
    body = hook.bodies[0]
    assert body["piece"] == "s1" and body["state"] == "raised" and body["name"] == "slow"
    assert body["text"].startswith("RAISED [warning] s1@n1: rate 0/s, below 5/s")


def test_slack_webhook_body(hook: Hook) -> None:
    cfg = msgspec.convert(
        {"url": hook.url, "format": "slack", "channel": "#daq", "username": "daq"}, WebhookConfig
    )
    sender = WebhookSender(cfg)
    sender.send(_alert("cleared"))
    sender.close(timeout=10)
    body = hook.bodies[0]
    assert body["text"].startswith("CLEARED [warning] s1@n1")
    assert body["channel"] == "#daq" and body["username"] == "daq"
    att = body["attachments"][0]
    assert att["color"] == "#30a030"
    assert {f["title"]: f["value"] for f in att["fields"]}["piece"] == "s1"
    assert json.loads(payload(_alert(), cfg))["attachments"][0]["color"] == "#d03030"


def test_webhook_gives_up_after_retries_and_on_client_errors(hook: Hook) -> None:
    hook.fail, hook.status = 100, 503
    sender = WebhookSender(
        msgspec.convert({"url": hook.url, "retries": 2, "retry_seconds": 0.01}, WebhookConfig)
    )
    sender.send(_alert())
    sender.close(timeout=10)
    assert (hook.requests, sender.failed, sender.delivered) == (3, 1, 0)
    hook.requests, hook.status = 0, 404  # a wrong URL: retrying will not help
    sender = WebhookSender(
        msgspec.convert({"url": hook.url, "retries": 5, "retry_seconds": 0.01}, WebhookConfig)
    )
    sender.send(_alert())
    sender.close(timeout=10)
    assert (hook.requests, sender.failed) == (1, 1)


def test_post_to_nowhere_is_a_retryable_error() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DeliveryError) as err:
        post(f"http://127.0.0.1:{port}/x", b"{}", timeout=2)
    assert err.value.retry
