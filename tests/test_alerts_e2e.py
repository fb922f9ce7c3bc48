"""The alerts job in real runs: each condition raised and cleared, delivered to webhooks served
by the test on loopback (JSON and Slack bodies, a failed first POST retried), hold-off checked,
and every transition published on the broker."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Procs, wait_for, write
from enrgdaq_core.alert_wire import Alert
from enrgdaq_core.envelope import Kind, decode_body
from enrgdaq_core.transport import BrokerAddress, Subscriber
from test_alerts_unit import Hook

pytestmark = pytest.mark.e2e

SENSOR = """
daq_job_type = "sensor"
name = "{name}"
interval_seconds = 0.02
channels = 1
"""


class AlertStream:
    """Every Alert published on the broker (a lossless subscriber to `alert.`)."""

    def __init__(self, broker: BrokerAddress) -> None:
        self.alerts: list[Alert] = []
        self._sub = Subscriber(broker, ["alert."])
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            env = self._sub.recv(0.1)
            if env is not None and env.kind is Kind.ALERT:
                self.alerts.append(decode_body(env.payload, Alert))

    def states(self, name: str) -> list[str]:
        return [a.state for a in self.alerts if a.name == name]

    def close(self) -> None:
        self._stop.set()
        self._t.join(2)
        self._sub.close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook(fail=1)  # the first POST fails: the sender must retry it
    yield h
    h.close()


@pytest.fixture
def stream(broker: BrokerAddress) -> Iterator[AlertStream]:
    s = AlertStream(broker)
    yield s
    s.close()


def _notices(hook: Hook, fmt: str = "json") -> list[tuple[str, str]]:
    """(alert name, state) of what the webhook received, in order."""
    out = []
    for body in list(hook.bodies):
        if fmt == "json" and "state" in body:
            out.append((body["name"], body["state"]))
        elif fmt == "slack" and "attachments" in body:
            fields = {f["title"]: f["value"] for f in body["attachments"][0]["fields"]}
            out.append((fields["alert"], body["text"].split()[0].lower()))
    return out


def _wait_notice(hook: Hook, name: str, state: str, fmt: str = "json", timeout: float = 30) -> None:
    wait_for(lambda: (name, state) in _notices(hook, fmt), timeout, interval=0.1,
             what=f"{fmt} notice {name} {state} (have {_notices(hook, fmt)})")  # fmt: skip


def _alerts_job(procs: Procs, broker: BrokerAddress, path: Path, body: str) -> subprocess.Popen:
    cfg = write(path, 'daq_job_type = "alerts"\nname = "alerts"\ninterval_seconds = 0.2\n' + body)
    return procs.start("job", "run", str(cfg), "-o", "broker", "--broker", broker.base)


def test_rate_stale_and_restart_alerts_with_hold_off(
    procs: Procs, broker: BrokerAddress, tmp_path: Path, hook: Hook, stream: AlertStream
) -> None:
    sensor = write(tmp_path / "s1.toml", SENSOR.format(name="s1"))
    job_args = ("job", "run", str(sensor), "-o", "broker", "--broker", broker.base)
    job = procs.start(*job_args)
    alerts = _alerts_job(
        procs,
        broker,
        tmp_path / "alerts.toml",
        f"""
hold_off_seconds = 60
stale_after_seconds = 2

[[alert]]
name = "broker quiet"
piece = "broker"
rate_below = 10

[[alert]]
name = "broker busy"
piece = "broker"
rate_above = 20

[[alert]]
name = "s1 silent"
piece = "s1"
stale_seconds = 2
severity = "error"

[[alert]]
name = "s1 restarted"
piece = "s1"
restarts_above = 0
window_seconds = 3

[[webhook]]
url = "{hook.url}"
retry_seconds = 0.2

[[webhook]]
url = "{hook.url}/slack"
format = "slack"
retry_seconds = 0.2
""",
    )
    # running at 50 messages/s: the broker is busy (both hooks told; the failed POST retried)
    _wait_notice(hook, "broker busy", "raised")
    _wait_notice(hook, "broker busy", "raised", "slack")
    assert hook.requests >= 3

    # the source stops: the broker goes quiet and s1 goes silent
    job.send_signal(signal.SIGSTOP)
    try:
        _wait_notice(hook, "broker busy", "cleared")
        _wait_notice(hook, "broker quiet", "raised")
        _wait_notice(hook, "s1 silent", "raised")
    finally:
        job.send_signal(signal.SIGCONT)
    _wait_notice(hook, "broker quiet", "cleared")
    _wait_notice(hook, "s1 silent", "cleared")
    # busy again, within the hold-off: on the broker, but no second notice to people
    wait_for(lambda: stream.states("broker busy") == ["raised", "cleared", "raised"], 30,
             what=f"second busy on the broker ({stream.states('broker busy')})")  # fmt: skip

    # a crash and a restart under the same name: raised, then cleared after the window
    job.send_signal(signal.SIGKILL)
    job.wait(10)
    procs.start(*job_args)
    _wait_notice(hook, "s1 restarted", "raised")
    _wait_notice(hook, "s1 restarted", "cleared", timeout=30)

    notices = _notices(hook)
    assert notices.count(("broker busy", "raised")) == 1, notices  # held back by the hold-off
    assert notices.count(("broker busy", "cleared")) == 1, notices
    for name in ("broker quiet", "s1 silent", "s1 restarted"):
        assert notices.count((name, "raised")) == 1, notices
        assert notices.count((name, "cleared")) == 1, notices
    assert _notices(hook, "slack") == notices
    silent = next(b for b in hook.bodies if b.get("name") == "s1 silent")
    assert silent["severity"] == "error" and silent["piece"] == "s1" and silent["node"]
    assert silent["message"].startswith("no report for")
    assert stream.states("s1 silent")[:2] == ["raised", "cleared"]

    procs.stop(alerts)
    assert alerts.returncode == 0
    log = alerts.stderr.read().decode()
    assert "RAISED [error] s1@" in log and "CLEARED [warning] broker@" in log


FILTER = """
import sys
from enrgdaq_core.stream import StreamReader, StreamWriter
reader = StreamReader(sys.stdin.buffer)
writer = StreamWriter(sys.stdout.buffer, reader.meta.meta)
for rec in reader:
    if 20 <= rec.envelope.header.seq < 25:  # the lossy link: five messages never arrive
        continue
    writer.write_record(rec)
    writer.flush()
"""


def test_lost_and_queue_alerts_from_a_real_store(
    procs: Procs, broker: BrokerAddress, tmp_path: Path, hook: Hook, stream: AlertStream
) -> None:
    """job -> lossy pipe -> csv store (reporting to the broker): the store's loss and its
    pending rows raise alerts; end-of-stream flushes the rows and the window passes: cleared."""
    hook.fail = 0
    _alerts_job(
        procs,
        broker,
        tmp_path / "alerts.toml",
        f"""
hold_off_seconds = 60

[[alert]]
name = "st lost"
piece = "st"
lost_above = 0
window_seconds = 2

[[alert]]
name = "st backlog"
role = "store"
queue_above = 20

[[webhook]]
url = "{hook.url}"
""",
    )
    wait_for(lambda: _alerts_seen(procs, broker), 30, what="alerts job up")
    sensor = write(tmp_path / "s2.toml", SENSOR.format(name="s2"))
    out_csv = tmp_path / "out.csv"
    job = procs.start("job", "run", str(sensor), "-o", "-", "--count", "150",
                      "--broker", broker.base, stdout=subprocess.PIPE)  # fmt: skip
    lossy = subprocess.Popen(
        [sys.executable, "-c", FILTER], stdin=job.stdout, stdout=subprocess.PIPE,
        env=procs.env, start_new_session=True,
    )  # fmt: skip
    procs.started.append(lossy)
    job.stdout.close()
    store = procs.start("store", "csv", "-i", "-", "-o", str(out_csv), "--name", "st",
                        "--flush-rows", "100000", "--flush-seconds", "1000",
                        "--broker", broker.base, stdin=lossy.stdout)  # fmt: skip
    lossy.stdout.close()

    _wait_notice(hook, "st lost", "raised")
    _wait_notice(hook, "st backlog", "raised")
    assert store.wait(60) == 0, store.stderr.read().decode()
    _wait_notice(hook, "st backlog", "cleared")
    _wait_notice(hook, "st lost", "cleared")
    lost = next(b for b in hook.bodies if b["name"] == "st lost" and b["state"] == "raised")
    assert lost["value"] == 5 and lost["condition"] == "lost_above"
    backlog = next(b for b in hook.bodies if b["name"] == "st backlog")
    assert backlog["value"] > 20 and backlog["piece"] == "st"
    assert len(out_csv.read_text().splitlines()) == 1 + 145  # header + what arrived
    for name in ("st lost", "st backlog"):
        assert stream.states(name) == ["raised", "cleared"]


def _alerts_seen(procs: Procs, broker: BrokerAddress) -> bool:
    """The alerts job reports its stats (it is up and subscribed)."""
    out = procs.run("stats", "--json", "--broker", broker.base, "--wait", "1.1")
    return b'"piece": "alerts"' in out.stdout
