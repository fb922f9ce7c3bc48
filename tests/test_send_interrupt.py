"""A job blocked on a dead broker's full queue still stops on SIGTERM (and says so)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from conftest import Procs, start_broker, wait_for, write
from enrgdaq_core.broker_client import query
from enrgdaq_core.channels import BrokerOutput
from enrgdaq_core.envelope import Source
from enrgdaq_core.transport import Subscriber

pytestmark = pytest.mark.e2e

FAST = """
daq_job_type = "sensor"
name = "fast"
interval_seconds = 0.0001
rows_per_step = 200
"""


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system, every thread) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_sigterm_ends_a_send_blocked_on_a_stopped_broker(
    procs: Procs, runtime_dir: Path, tmp_path: Path
) -> None:
    addr, broker = start_broker(procs, f"ipc://{runtime_dir}/broker")
    # A lossless consumer that never reads: backpressure fills every queue up to the job.
    sub = Subscriber(addr, ["data.fast"], hwm=10)
    cfg = write(tmp_path / "fast.toml", FAST)
    job = procs.start("job", "run", str(cfg), "-o", "broker", "--broker", addr.base)

    # Blocked in send: the broker forwards none of its data any more, and it stops using the
    # CPU (a job unpaced and running uses all it gets). Its heartbeat goes on (it travels
    # apart from the data, and a send held back by backpressure still reports): blocked by a
    # consumer is not hung.
    heartbeats = Subscriber(addr, ["stats.fast"], mode="monitor")
    try:
        wait_for(lambda: query(addr)["topics"].get("data.fast"), 30, what="the job's data")

        def blocked() -> bool:
            cpu = _cpu_seconds(job.pid)
            forwarded = query(addr)["topics"]["data.fast"][0]
            time.sleep(2.5)
            return (
                query(addr)["topics"]["data.fast"][0] == forwarded
                and _cpu_seconds(job.pid) - cpu < 0.1
            )

        wait_for(blocked, 60, interval=0, what="the job to block on backpressure")
        while heartbeats.recv(0) is not None:
            pass  # what came before
        assert heartbeats.recv(5.0) is not None, "no heartbeat while blocked"
    finally:
        heartbeats.close()
    broker.send_signal(signal.SIGSTOP)  # the broker takes nothing any more
    try:
        job.send_signal(signal.SIGTERM)
        rc = job.wait(40)
        err = job.stderr.read().decode()
    finally:
        broker.send_signal(signal.SIGCONT)
        sub.close()
    assert rc == 1
    assert "took nothing for 10 s after stop was requested" in err


def test_a_stop_bounds_the_drain_at_close_on_a_stopped_broker(
    procs: Procs, runtime_dir: Path
) -> None:
    """The stop came before the queue filled: the last sends went in, and close()'s drain,
    not a send, waits on the frozen broker. It gives up after the same grace, not 30 s."""
    addr, broker = start_broker(procs, f"ipc://{runtime_dir}/broker")
    out = BrokerOutput(addr, interrupt=lambda: True)
    out.publisher.interrupt_grace = 1.0
    broker.send_signal(signal.SIGSTOP)
    try:
        out.send(Source("late").raw(b"x"))  # room in our own queue: it goes in
        start = time.monotonic()
        with pytest.raises(ConnectionError) as info:
            out.close()
        took = time.monotonic() - start
    finally:
        broker.send_signal(signal.SIGCONT)
    assert "took nothing for 1 s after stop was requested" in str(info.value)
    assert "1 sent message(s) not confirmed" in str(info.value)
    assert took < out.drain_timeout
