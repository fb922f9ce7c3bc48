"""Helpers for supervisor tests: a `daq up` process, a witness subscriber, stored-row counting."""

from __future__ import annotations

import csv
import datetime as dt
import os
import re
import signal
import subprocess
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psutil

from conftest import Procs, wait_for, write
from enrgdaq_core.envelope import Kind
from enrgdaq_core.supervisor.control import request
from enrgdaq_core.transport import BrokerAddress

FAST_SUPERVISOR = """
shutdown_timeout = 20.0
store_start_timeout = 30.0
[restart]
initial_delay = 0.2
max_delay = 2.0
heartbeat_timeout = {heartbeat}
start_timeout = 30.0
[stats]
interval = 0.5
"""

# A fast sensor; each test appends the [store_config.*] it wants.
SENSOR_JOB = """
daq_job_type = "sensor"
name = "sensor1"
interval_seconds = 0.02
channels = 2
"""

SENSOR_CSV_JOB = (
    SENSOR_JOB
    + """
[store_config.csv]
file_path = "sensor1.csv"
"""
)
"""The sensor into one csv store: the smallest `daq up` with data."""

TEST_JOB = """
daq_job_type = "DAQJobTest"
interval_seconds = 0.05

[store_config.csv]
file_path = "test.csv"
"""


def config_dir(tmp_path: Path, jobs: dict[str, str], supervisor: str = "") -> Path:
    """tmp_path/cfg with these job files and FAST_SUPERVISOR (10 s heartbeat) + `supervisor`."""
    d = tmp_path / "cfg"
    d.mkdir()
    for name, text in jobs.items():
        write(d / name, text)
    write(d / "supervisor.toml", FAST_SUPERVISOR.format(heartbeat=10.0) + supervisor)
    return d


class Up:
    """One `daq up DIR --no-tty` process and what a test asks of it."""

    def __init__(
        self, procs: Procs, directory: Path, runtime_dir: Path, *args: str, debug: bool = False
    ) -> None:
        self.cwd = procs.cwd
        self.out = self.cwd / "out"
        self.log = self.cwd / "up.out"
        self._log_f = open(self.log, "wb")  # noqa: SIM115 - closed in close()
        argv = ["--debug"] if debug else []
        argv += ["up", str(directory), "--no-tty", *args]
        self.p = procs.start(*argv, stdout=self._log_f, stderr=subprocess.STDOUT)
        self.address = BrokerAddress.parse(f"ipc://{runtime_dir}/broker")
        self.control = f"ipc://{runtime_dir}/broker.sup"
        self.pids: set[int] = set()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def ask(self, cmd: str, **args: Any) -> dict[str, Any]:
        return request(self.control, cmd, timeout=5.0, **args)

    def status(self) -> dict[str, Any] | None:
        if self.p.poll() is not None:
            raise AssertionError(f"daq up exited {self.p.returncode}:\n{self.output()[-4000:]}")
        try:
            st = self.ask("status")
        except TimeoutError:
            return None
        self.track()
        for piece in st["pieces"]:
            if piece["pid"]:
                self.pids.add(piece["pid"])
        return st

    def track(self) -> None:
        """Remember every process under the supervisor (to prove later that none is left)."""
        try:
            for child in psutil.Process(self.p.pid).children(recursive=True):
                self.pids.add(child.pid)
        except psutil.NoSuchProcess:
            pass

    def piece(self, name: str) -> dict[str, Any]:
        st = self.status()
        assert st is not None
        return next(p for p in st["pieces"] if p["name"] == name)

    def wait(
        self, predicate: Callable[[dict[str, dict[str, Any]]], Any], timeout: float, what: str
    ) -> Any:
        def check() -> Any:
            st = self.status()
            if st is None:
                return None
            return predicate({p["name"]: p for p in st["pieces"]})

        return wait_for(check, timeout, interval=0.2, what=what)

    def wait_flowing(self, timeout: float = 60.0) -> None:
        """Every piece runs and reports from its current process; stores have written rows."""

        def ok(pieces: dict[str, dict[str, Any]]) -> bool:
            for p in pieces.values():
                r = p["report"]
                if p["state"] != "running" or r is None or r["pid"] != p["pid"]:
                    return False
                if p["role"] == "store" and not r.get("rows_out"):
                    return False
            return True

        self.wait(ok, timeout, "every piece running, reporting and storing")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60.0) -> int:
        self.track()
        self.p.send_signal(sig)
        try:
            return self.p.wait(timeout)
        finally:
            self._log_f.flush()

    def close(self) -> None:
        self._log_f.close()

    def finish(self) -> None:
        """Stop it if it still runs and prove that no process it started is left."""
        try:
            if self.p.poll() is None:
                self.stop(signal.SIGINT, timeout=60)
            self.assert_no_orphans()
        finally:
            self.close()

    def assert_no_orphans(self, timeout: float = 20.0) -> None:
        """No process the supervisor ever started is still running."""
        self.track()

        def gone() -> bool:
            for pid in self.pids:
                try:
                    if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                        return False
                except psutil.NoSuchProcess:
                    continue
            return True

        try:
            wait_for(gone, timeout, interval=0.1, what="every child of daq up to exit")
        except AssertionError:
            left = []
            for pid in self.pids:
                try:
                    proc = psutil.Process(pid)
                    left.append(f"{pid} {proc.status()} {' '.join(proc.cmdline()[3:7])}")
                except psutil.NoSuchProcess:
                    pass
            raise AssertionError(f"still running: {left}") from None
        finally:
            for pid in self.pids:  # never leave one behind, even when the test failed
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


class Witness:
    """A lossless subscriber recording (epoch, seq, kind) of every message it receives.

    It shows what left each source: per epoch, the highest sequence number seen (or the
    end-of-stream's number, which counts every data message before it).
    """

    def __init__(self, address: BrokerAddress, topics: Iterable[str]) -> None:
        self.address = address
        self.topics = list(topics)
        self.seen: dict[str, dict[int, list[int]]] = {}  # source -> epoch -> seqs
        self.eos: dict[str, dict[int, int]] = {}
        self.first: dict[str, dict[int, Any]] = {}  # source -> epoch -> its first data message
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        import zmq

        from enrgdaq_core.transport import Subscriber

        sub = Subscriber(self.address, self.topics, ctx=zmq.Context())
        self._ready.set()
        try:
            while not self._stop.is_set():
                env = sub.recv(0.1)
                if env is None:
                    continue
                h = env.header
                if h.kind is Kind.EOS:
                    self.eos.setdefault(h.source, {})[h.epoch] = h.seq
                else:
                    self.seen.setdefault(h.source, {}).setdefault(h.epoch, []).append(h.seq)
                    self.first.setdefault(h.source, {}).setdefault(h.epoch, env)
        finally:
            sub.close()

    def count(self, source: str) -> int:
        return sum(len(v) for v in self.seen.get(source, {}).values())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def tops(self, source: str) -> dict[int, int]:
        """Per epoch, how many data messages left `source` (its end-of-stream's number, which
        counts every data message before it, else the highest sequence number seen + 1)."""
        eos = self.eos.get(source, {})
        seen = self.seen.get(source, {})
        return {e: eos[e] if e in eos else max(seen[e]) + 1 for e in set(seen) | set(eos)}

    def sent(self, source: str) -> int:
        """Data messages that left `source`, over every epoch the witness saw."""
        return sum(self.tops(source).values())


def csv_rows(paths: Iterable[Path]) -> int:
    """Complete data rows (newline-terminated) in CSV files, without their header lines."""
    total = 0
    for path in paths:
        data = path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1].decode()
        lines = list(csv.reader(complete.splitlines()))
        total += max(0, len(lines) - 1)
    return total


def raw_records(paths: Iterable[Path]) -> list[Any]:
    """Every envelope of raw run files (what a torn tail leaves readable)."""
    from enrgdaq_core.stream import StreamDamage, StreamReader

    out: list[Any] = []
    for path in sorted(paths):
        with open(path, "rb") as f:
            try:
                for rec in StreamReader(f):
                    out.append(rec.envelope)
            except StreamDamage:
                pass
    return out


def stats_csv(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "stats.csv", newline="") as f:
        return {row["daq_job"]: row for row in csv.DictReader(f)}


def root_rows(paths: Iterable[Path], tree: str) -> int:
    """Entries of the tree `tree` in ROOT files (uproot)."""
    import uproot

    total = 0
    for path in paths:
        with uproot.open(path) as f:
            total += f[tree].num_entries
    return total


# `2026-11-25 14:30:05,123 INFO [store-csv] store-csv: 812 rows in 9 writes ... 0 lost upstream`
STORE_SUMMARY = re.compile(
    r"^(\S+ \S+) INFO \[(\S+)\] \2: (\d+) rows in .* (\d+) lost upstream(?:,.*)?$"
)


def log_time(stamp: str) -> dt.datetime:
    """The time of a log line's `2026-11-25 14:30:05,123` stamp."""
    return dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f")


def last_line(log: Path, pattern: re.Pattern[str]) -> re.Match[str] | None:
    """The last line of `log` that matches `pattern`."""
    for line in reversed(log.read_text(errors="replace").splitlines()):
        m = pattern.match(line)
        if m:
            return m
    return None
