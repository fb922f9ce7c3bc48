"""What every benchmark shares: its processes, the two receivers, statistics, output.

The receivers run in the benchmark's own process. Ours is the real `Subscriber` (decodes every
header, checks every sequence number with `SequenceTracker`); the baseline is a bare SUB
socket doing the least a receiver can do. Both take the same timestamps at the same points.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DAQ = [sys.executable, "-m", "enrgdaq_cli.main"]
PEERS = [sys.executable, str(HERE / "_peers.py")]


class BenchError(RuntimeError):
    """A run that did not deliver what it should: the figures of such a run are not reported."""


class Processes:
    """The processes one benchmark starts; every one is killed (by its own pid) at the end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.env = dict(os.environ)
        self.env["DAQ_RUNTIME_DIR"] = str(workdir)
        self.env.pop("DAQ_BROKER", None)
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(HERE), self.env.get("PYTHONPATH", "")) if p
        )
        self.started: list[subprocess.Popen] = []
        self.broker_pid = 0
        self.proxy_pid = 0

    def start(self, args: Sequence[str], *, stdout: Any = subprocess.DEVNULL) -> subprocess.Popen:
        p = subprocess.Popen(
            list(args),
            env=self.env,
            cwd=self.workdir,
            stdout=stdout,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self.started.append(p)
        return p

    def finish(self, p: subprocess.Popen, what: str, timeout: float = 60.0) -> None:
        """Wait for a process that should end by itself; its failure fails the run."""
        try:
            rc = p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill(p)
            raise BenchError(f"{what} did not finish in {timeout:g} s") from None
        err = p.stderr.read().decode(errors="replace") if p.stderr else ""
        if rc != 0:
            raise BenchError(f"{what} exited {rc}: {err.strip()[-2000:]}")

    def kill(self, p: subprocess.Popen) -> None:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        p.wait(10)
        for stream in (p.stdout, p.stderr):
            if stream is not None:
                stream.close()

    def close(self) -> None:
        for p in reversed(self.started):
            self.kill(p)


def _die_with_parent() -> None:
    """In the child: the kernel kills it when the benchmark dies, even by SIGKILL."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@contextmanager
def processes() -> Iterator[Processes]:
    workdir = Path(tempfile.mkdtemp(prefix="daqb-", dir="/tmp"))  # ipc paths must stay short
    procs = Processes(workdir)
    try:
        yield procs
    finally:
        procs.close()
        shutil.rmtree(workdir, ignore_errors=True)


def start_broker(procs: Processes) -> Any:
    """A real `daq broker` process; returns its BrokerAddress once it answers."""
    from enrgdaq_core.broker_client import query
    from enrgdaq_core.transport import BrokerAddress

    addr = BrokerAddress.parse(f"ipc://{procs.workdir}/broker")
    p = procs.start([*DAQ, "broker", "--broker", addr.base])
    procs.broker_pid = p.pid
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise BenchError(f"daq broker exited: {p.stderr.read().decode(errors='replace')}")
        try:
            query(addr, timeout=0.5)
            return addr
        except TimeoutError:
            continue
    raise BenchError("daq broker did not answer in 30 s")


def bare_address(procs: Processes) -> Any:
    """The bare proxy as a broker address (`ipc://DIR/raw` -> raw.in, raw.out), for our pieces."""
    from enrgdaq_core.transport import BrokerAddress

    return BrokerAddress.parse(f"ipc://{procs.workdir}/raw")


def start_raw_proxy(procs: Processes) -> tuple[str, str]:
    """The baseline's bare zmq.proxy process; returns its (in, out) endpoints once bound."""
    inbound = f"ipc://{procs.workdir}/raw.in"
    outbound = f"ipc://{procs.workdir}/raw.out"
    p = procs.start([*PEERS, "proxy", inbound, outbound], stdout=subprocess.PIPE)
    procs.proxy_pid = p.pid
    assert p.stdout is not None
    line = p.stdout.readline()
    if b"ready" not in line:
        raise BenchError(f"raw proxy did not start: {p.stderr.read().decode(errors='replace')}")
    return inbound, outbound


def write_job_config(procs: Processes, name: str, shape: str, interval: float) -> Path:
    path = procs.workdir / f"{name}.toml"
    path.write_text(
        f'daq_job_type = "_bench_job:ConstJob"\nname = "{name}"\n'
        f'shape = "{shape}"\ninterval_seconds = {interval!r}\n'
    )
    return path


@dataclass
class Received:
    """What one receiver saw: perf_counter times of the first and last data message, etc."""

    messages: int = 0
    payload_bytes: int = 0
    first: float = 0.0
    last: float = 0.0
    lost: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    cpu_us_per_msg: dict[str, float] = field(default_factory=dict)
    rss_mb: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return (self.messages - 1) / (self.last - self.first) if self.last > self.first else 0.0

    @property
    def mb_per_s(self) -> float:
        if self.last <= self.first or self.messages < 2:
            return 0.0
        return self.payload_bytes * (self.messages - 1) / self.messages / (self.last - self.first)


class CpuProbe:
    """CPU time of the producer, the hub and this receiver between two points of a run.

    Sampled at 10% and 90% of the messages, so start-up and shutdown are left out; divided by
    the messages in between: where each message's CPU goes (all threads of each process).
    """

    def __init__(self, count: int, pids: dict[str, int]) -> None:
        import psutil

        self.marks = (count // 10, count - count // 10)
        self.procs = {k: psutil.Process(pid) for k, pid in pids.items()}
        self.start: dict[str, float] = {}
        self.result: dict[str, float] = {}
        self.rss_mb: dict[str, float] = {}  # resident memory at the second mark

    def _now(self) -> dict[str, float]:
        out = {}
        for key, proc in self.procs.items():
            try:
                if proc.status() == "zombie":  # ended, not yet reaped: its figures are gone
                    raise ProcessLookupError
                t = proc.cpu_times()
                out[key] = t.user + t.system
            except Exception:  # the process already ended: no figure
                out[key] = float("nan")
        t = os.times()
        out["receiver"] = t.user + t.system
        return out

    def at(self, index: int) -> None:
        if index == self.marks[0]:
            self.start = self._now()
        elif index == self.marks[1] and self.start:
            end = self._now()
            n = self.marks[1] - self.marks[0]
            self.result = {k: (end[k] - self.start[k]) / n * 1e6 for k in end}
            for key, proc in self.procs.items():
                try:
                    if proc.status() == "zombie":
                        raise ProcessLookupError
                    self.rss_mb[key] = proc.memory_info().rss / 1e6
                except Exception:
                    self.rss_mb[key] = float("nan")


def run_ours(
    procs: Processes,
    addr: Any,
    name: str,
    shape: str,
    count: int,
    interval: float = 0.0,
    timeout: float = 60.0,
    *,
    bare: bool = False,
) -> Received:
    """`daq job run` -> `daq broker` -> Subscriber; every sequence number must arrive.

    With `bare`, the same job and Subscriber meet through the baseline's bare proxy instead of
    `daq broker` (`addr` names it): what the broker's counting side path costs, apart from
    our Python at both ends.
    """
    from enrgdaq_core.broker_client import wait_for_subscriptions
    from enrgdaq_core.envelope import Kind, data_topic
    from enrgdaq_core.stats import SequenceTracker
    from enrgdaq_core.transport import Subscriber

    topic = data_topic(name)
    sub = Subscriber(addr, [topic])
    try:
        # The bare proxy has no control endpoint; there the job's own wait for a subscription
        # (its XPUB sees ours through the proxy) guards against the slow joiner.
        if not bare and not wait_for_subscriptions(addr, [topic], timeout=10):
            raise BenchError("the broker never saw our subscription")
        cfg = write_job_config(procs, name, shape, interval)
        job = procs.start(
            [*DAQ, "job", "run", str(cfg), "-o", "broker", "--broker", addr.base]
            + ["--count", str(count)]
        )
        tracker = SequenceTracker()
        got = Received()
        hub = procs.proxy_pid if bare else procs.broker_pid
        probe = CpuProbe(count, {"producer": job.pid, "hub": hub})
        lat = got.latencies_ns
        perf = time.perf_counter
        now_ns = time.time_ns
        eos = Kind.EOS
        while True:
            env = sub.recv(timeout)
            t = perf()
            t_ns = now_ns()
            if env is None:
                raise BenchError(f"ours: nothing for {timeout:g} s after {got.messages}")
            header = env.header
            tracker.observe(header)
            if header.kind is eos:
                break
            lat.append(t_ns - header.time_ns)
            if got.messages == 0:
                got.first = t
            got.messages += 1
            got.payload_bytes += len(env.payload)
            got.last = t
            probe.at(got.messages)
        if bare:
            # All arrived (end-of-stream included), but the job's exit check asks the broker's
            # control endpoint, which the bare proxy does not have: it would wait, then fail.
            procs.kill(job)
        else:
            procs.finish(job, f"daq job run {name}")
        got.cpu_us_per_msg = probe.result
        got.rss_mb = probe.rss_mb
    finally:
        sub.close()
    got.lost = tracker.total_lost
    if got.messages != count or got.lost:
        raise BenchError(f"ours: received {got.messages} of {count}, {got.lost} lost")
    return got


def run_raw(
    procs: Processes,
    endpoints: tuple[str, str],
    name: str,
    header_size: int,
    payload_size: int,
    count: int,
    interval: float = 0.0,
    timeout: float = 60.0,
) -> Received:
    """Bare PUB -> zmq.proxy -> SUB with the same frame sizes; counts what arrives."""
    inbound, outbound = endpoints
    topic = name.encode() + b"\x00"
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.rcvhwm = 1000
    sock.linger = 0
    sock.rcvtimeo = int(timeout * 1000)
    sock.connect(outbound)
    sock.subscribe(topic)
    copy = payload_size < 65536
    try:
        pub = procs.start(
            [
                *PEERS,
                "publish",
                inbound,
                "--topic",
                name,
                "--header-size",
                str(header_size),
                "--payload-size",
                str(payload_size),
                "--count",
                str(count),
                "--interval",
                repr(interval),
            ]
        )
        got = Received()
        probe = CpuProbe(count, {"producer": pub.pid, "hub": procs.proxy_pid})
        lat = got.latencies_ns
        perf = time.perf_counter
        now_ns = time.time_ns
        while got.messages < count:
            try:  # the idiomatic pyzmq loop: blocking receive, RCVTIMEO as the timeout
                frames = sock.recv_multipart(copy=copy)
            except zmq.Again:
                raise BenchError(f"raw: nothing for {timeout:g} s after {got.messages}") from None
            t = perf()
            t_ns = now_ns()
            lat.append(t_ns - int.from_bytes(bytes(frames[1])[:8], "little", signed=True))
            if got.messages == 0:
                got.first = t
            got.messages += 1
            got.payload_bytes += len(frames[2])
            got.last = t
            probe.at(got.messages)
        procs.finish(pub, f"raw publisher {name}")
        got.cpu_us_per_msg = probe.result
        got.rss_mb = probe.rss_mb
    finally:
        sock.close()
    return got


def envelope_sizes(shape: str) -> tuple[int, int]:
    """(header, payload) bytes of the envelope our producer sends for `shape`."""
    from _bench_job import make_table
    from enrgdaq_core.envelope import Source, encode_header

    env = Source("bench").table(make_table(shape))  # type: ignore[arg-type]
    return len(encode_header(env.header)), len(env.payload)


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    i = min(len(ordered) - 1, max(0, int(round(q * (len(ordered) - 1)))))
    return ordered[i]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine() -> dict[str, Any]:
    try:
        load = os.getloadavg()
    except OSError:
        load = (0.0, 0.0, 0.0)
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "loadavg_at_start": [round(x, 2) for x in load],
    }


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print(
        "  ".join(
            h.rjust(w) if i else h.ljust(w)
            for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        )
    )
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {
        "benchmark": name,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        **data,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
