"""`daq stats` with real processes: exact loss on a lossy monitor link, the snapshot, the watch
table in a real terminal (tmux), Prometheus over HTTP, the history file and its plot."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import DAQ, Procs, wait_for, write
from enrgdaq_core.broker_client import query
from enrgdaq_core.envelope import Kind
from enrgdaq_core.stats import Meter
from enrgdaq_core.transport import BrokerAddress, Subscriber

pytestmark = pytest.mark.e2e

SENSOR = """
daq_job_type = "sensor"
name = "{name}"
interval_seconds = {interval}
channels = 1
"""


def _sensor(tmp_path: Path, name: str = "sensor1", interval: float = 0.02) -> Path:
    return write(tmp_path / f"{name}.toml", SENSOR.format(name=name, interval=interval))


def _start_job(procs: Procs, cfg: Path, broker: BrokerAddress, *args: str) -> subprocess.Popen:
    return procs.start("job", "run", str(cfg), "-o", "broker", "--broker", broker.base, *args)


class _Lines:
    """Collects a process's stderr lines on a thread (so waiting never blocks the test)."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._t.start()

    def _read(self, stream) -> None:
        for raw in iter(stream.readline, b""):
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def find(self, pattern: str) -> re.Match | None:
        for line in self.lines:
            m = re.search(pattern, line)
            if m:
                return m
        return None


def test_lossy_monitor_link_counts_exactly_what_did_not_arrive(
    procs: Procs, broker: BrokerAddress, tmp_path: Path
) -> None:
    """A monitor subscriber with a high-water mark of 1 that stops reading while a source
    publishes at 2 kHz: the broker drops for it, and the loss it reports is exactly
    (messages sent) - (messages received)."""
    total = 4000  # data messages; the job then sends end-of-stream (seq = total)
    sub = Subscriber(broker, ["data.lossy", "stats.broker"], mode="monitor", hwm=1)
    try:
        # the link is up once the broker's own stats arrive (same socket, same subscriptions)
        wait_for(
            lambda: (e := sub.recv(0.2)) is not None and e.topic == "stats.broker",
            15,
            what="monitor link",
        )
        job = _start_job(procs, _sensor(tmp_path, "lossy", 0.0005), broker, "--count", str(total))

        def forwarded() -> int:
            topics = query(broker, "status")["topics"]
            return topics.get("data.lossy", [0])[0]

        # do not read until far more was sent than any queue on the way can hold
        wait_for(lambda: forwarded() >= 2600, 60, what="the source to overrun the monitor")
        meter = Meter("lossy-monitor", "monitor")
        received = 0
        saw_eos = False
        deadline = time.monotonic() + 60
        while not saw_eos and time.monotonic() < deadline:
            env = sub.recv(0.5)
            if env is None or env.topic != "data.lossy":
                continue
            received += 1
            meter.received(env.header, env.nbytes)
            saw_eos = env.kind is Kind.EOS
        assert saw_eos, "end-of-stream never arrived"
        assert job.wait(30) == 0
    finally:
        sub.close()
    report = meter.report()
    sent = total + 1
    assert 0 < report.lost < total
    assert report.lost == sent - received
    assert report.extra["lost_by_source"] == {"lossy": sent - received}


def test_snapshot_json_and_table(procs: Procs, broker: BrokerAddress, tmp_path: Path) -> None:
    job = _start_job(procs, _sensor(tmp_path), broker)
    # pyarrow is made unimportable: `daq stats` must not need it
    runner = "import sys; sys.modules['pyarrow'] = None; from enrgdaq_cli.main import run; run()"

    def snapshot() -> dict | None:
        out = subprocess.run(
            [sys.executable, "-c", runner, "stats", "--json", "--broker", broker.base],
            env=procs.env,
            capture_output=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr.decode()
        data = json.loads(out.stdout)
        pieces = {p["piece"]: p for p in data["pieces"]}
        if "sensor1" in pieces and pieces["sensor1"]["msgs_out"] > 0:
            return data
        return None

    data = wait_for(snapshot, 30, interval=0.2, what="sensor1 in daq stats --json")
    pieces = {p["piece"]: p for p in data["pieces"]}
    s1 = pieces["sensor1"]
    assert s1["role"] == "job" and s1["status"] == "ok" and s1["node"]
    assert s1["rate_out"] > 0 and s1["rate"] == s1["rate_out"]
    assert pieces["broker"]["role"] == "broker"
    assert data["totals"]["lost"] == 0
    procs.stop(job)
    # a plain table, and the stopped job still listed (its stats topic is known to the broker)
    out = procs.run("stats", "--broker", broker.base, "--wait", "1.2")
    assert out.returncode == 0, out.stderr.decode()
    text = out.stdout.decode()
    assert re.search(r"^piece\s+status\s+in/s\s+out/s", text, re.M), text
    assert re.search(r"^sensor1\s+(stale|stopped)", text, re.M), text


def test_no_broker_is_a_clear_error(procs: Procs, runtime_dir: Path) -> None:
    out = procs.run("stats", "--broker", f"ipc://{runtime_dir}/nobody")
    assert out.returncode == 1
    assert "no broker answers at" in out.stderr.decode()


def _free_tcp_base() -> int:
    """A port P with P..P+4 free on loopback (the broker binds five)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base > 65000:
            continue
        ok = True
        for port in range(base, base + 5):
            with socket.socket() as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise AssertionError("no five free ports")


def test_remote_broker_over_tcp(procs: Procs, tmp_path: Path) -> None:
    addr = BrokerAddress.parse(f"tcp://127.0.0.1:{_free_tcp_base()}")
    procs.start("broker", "--broker", addr.base)
    wait_for(lambda: _answers(addr), 15, what="tcp broker")
    _start_job(procs, _sensor(tmp_path), addr)

    def seen() -> bool:
        out = procs.run("stats", "--json", "--broker", addr.base, "--wait", "1.2")
        assert out.returncode == 0, out.stderr.decode()
        return any(p["piece"] == "sensor1" for p in json.loads(out.stdout)["pieces"])

    wait_for(seen, 30, interval=0.2, what="sensor1 through the tcp broker")


def _answers(addr: BrokerAddress) -> bool:
    try:
        query(addr, timeout=0.5)
        return True
    except TimeoutError:
        return False


# -- the watch table in a real terminal ---------------------------------------------------------


class Tmux:
    """A private tmux server (its own socket), 80x24, killed at the end."""

    def __init__(self) -> None:
        self.sock = f"daqt-{uuid.uuid4().hex[:8]}"
        self.session = "w"

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["tmux", "-L", self.sock, *args], capture_output=True, text=True, timeout=20,
            check=check,
        )  # fmt: skip

    def start(self, command: str) -> None:
        self.run("new-session", "-d", "-s", self.session, "-x", "80", "-y", "24", command)

    def capture(self, escapes: bool = False) -> str:
        args = ["capture-pane", "-p", "-t", self.session] + (["-e"] if escapes else [])
        return self.run(*args).stdout

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", self.session, *keys)

    def kill(self) -> None:
        self.run("kill-server", check=False)


@pytest.fixture
def tmux():
    if shutil.which("tmux") is None:
        pytest.fail("tmux is needed for the watch-table test: apt-get install -y tmux")
    t = Tmux()
    yield t
    t.kill()


def _row(screen: str, piece: str) -> str | None:
    for line in screen.splitlines():
        if line.startswith(piece + " "):
            return line
    return None


def test_watch_table_in_a_real_terminal(
    procs: Procs, broker: BrokerAddress, tmp_path: Path, tmux: Tmux
) -> None:
    job = _start_job(procs, _sensor(tmp_path), broker)
    env = " ".join(
        f"{k}={shlex.quote(procs.env[k])}"
        for k in ("DAQ_RUNTIME_DIR", "PATH", "PYTHONPATH", "HOME")
        if k in procs.env
    )
    watch = " ".join(
        shlex.quote(a)
        for a in [
            *DAQ,
            "stats",
            "--watch",
            "--broker",
            broker.base,
            "--stale",
            "2",
            "--refresh",
            "0.25",
        ]  # fmt: skip
    )
    tmux.start(
        f"cd {shlex.quote(str(tmp_path))}; export {env}; {watch}; echo EXIT1=$?; "
        f"stty -a | grep -o -- '-\\?icanon' | head -1; {watch}; echo EXIT2=$?; sleep 60"
    )

    def rows_ok() -> str | None:
        screen = tmux.capture()
        row = _row(screen, "sensor1")
        if row and re.match(r"sensor1\s+ok\s+\S+\s+[\d.]+k?\s", row) and _row(screen, "broker"):
            return screen
        return None

    screen = wait_for(rows_ok, 30, interval=0.2, what="sensor1 and broker rows")
    assert re.search(
        r"^piece\s+status\s+in/s\s+out/s\s+MB/s\s+p50ms\s+p99ms\s+lost\s+rst", screen, re.M
    )
    assert "q quits" in screen
    out_rate = float(_row(screen, "sensor1").split()[3].rstrip("k"))
    assert out_rate > 0

    # a piece that stops reporting turns stale (in yellow) and stays listed
    job.send_signal(signal.SIGSTOP)
    try:
        wait_for(
            lambda: re.match(r"sensor1\s+stale", _row(tmux.capture(), "sensor1") or ""),
            30,
            interval=0.2,
            what="sensor1 stale",
        )
        coloured = next(
            line for line in tmux.capture(escapes=True).splitlines() if "sensor1" in line
        )
        assert re.search(r"\x1b\[[0-9;]*33m", coloured), repr(coloured)
    finally:
        job.send_signal(signal.SIGCONT)
    wait_for(
        lambda: re.match(r"sensor1\s+ok", _row(tmux.capture(), "sensor1") or ""),
        30,
        interval=0.2,
        what="sensor1 back to ok",
    )

    tmux.keys("q")
    # wait for the stty line too: it is printed after EXIT1, and may lag it under load
    screen = wait_for(
        lambda: s if re.search(r"^-?icanon$", s := tmux.capture(), re.M) else None,
        20,
        what="exit on q, then the terminal's mode",
    )
    assert "EXIT1=0" in screen
    assert "Traceback" not in screen
    assert re.search(r"^icanon$", screen, re.M), "terminal left in cbreak mode"

    # the second watch: Ctrl-C exits cleanly too
    wait_for(lambda: "q quits" in tmux.capture().split("EXIT1=0")[-1], 30, what="second watch")
    tmux.keys("C-c")
    screen = wait_for(
        lambda: s if "EXIT2=" in (s := tmux.capture()) else None, 20, what="exit on Ctrl-C"
    )
    assert "EXIT2=0" in screen and "Traceback" not in screen


# -- Prometheus, history, plot -------------------------------------------------------------------


def test_metrics_over_http_history_and_plot(
    procs: Procs, broker: BrokerAddress, tmp_path: Path
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    _start_job(procs, _sensor(tmp_path), broker)
    history = tmp_path / "stats.csv"
    exporter = procs.start(
        "stats", "--serve", "127.0.0.1:0", "--record", str(history), "--broker", broker.base
    )
    lines = _Lines(exporter.stderr)
    url = wait_for(
        lambda: (m := lines.find(r"serving metrics on (http://\S+)")) and m.group(1),
        30,
        what="exporter address",
    )

    def scrape() -> dict | None:
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            text = resp.read().decode()
        samples = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                samples[(s.name, s.labels.get("piece"))] = s
        out = samples.get(("daq_messages_out_total", "sensor1"))
        topics = samples.get(("daq_broker_topic_messages_total", "broker"))
        return samples if out is not None and out.value > 0 and topics else None

    samples = wait_for(scrape, 30, interval=0.3, what="sensor1 in /metrics")
    s1 = samples[("daq_messages_out_total", "sensor1")]
    assert set(s1.labels) == {"node", "piece"} and s1.labels["node"]
    assert samples[("daq_piece_up", "sensor1")].value == 1
    assert samples[("daq_messages_out_rate", "sensor1")].value > 0
    assert samples[("daq_piece_up", "broker")].labels["role"] == "broker"
    assert samples[("daq_broker_topic_messages_total", "broker")].labels["topic"]

    wait_for(lambda: history.exists() and history.read_text().count("sensor1") >= 2, 30,
             what="history rows")  # fmt: skip
    exporter.send_signal(signal.SIGINT)
    assert exporter.wait(20) == 0
    from enrgdaq_core.stats_history import read_history

    series = {s.piece: s for s in read_history(history)}
    assert {"sensor1", "broker"} <= set(series)
    assert all(v and v > 0 for v in series["sensor1"].column("msgs_out"))

    png = tmp_path / "rates.png"
    out = procs.run("stats", "plot", str(history), "-o", str(png))
    assert out.returncode == 0, out.stderr.decode()
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
