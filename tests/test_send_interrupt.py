"""A job blocked on a dead broker's full queue still stops on SIGTERM (and says so)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from conftest import Procs, start_broker, wait_for, write
from enrgdaq_core.broker_client import query
from enrgdaq_core.transport import Subscriber

pytestmark = pytest.mark.e2e

FAST = """
daq_job_type = "sensor"
name = "fast"
interval_seconds = 0.0
rows_per_step = 200
"""


def test_sigterm_ends_a_send_blocked_on_a_stopped_broker(
    procs: Procs, runtime_dir: Path, tmp_path: Path
) -> None:
    addr, broker = start_broker(procs, f"ipc://{runtime_dir}/broker")
    # A lossless consumer that never reads: backpressure fills every queue up to the job.
    sub = Subscriber(addr, ["data.fast"], hwm=10)
    cfg = write(tmp_path / "fast.toml", FAST)
    job = procs.start("job", "run", str(cfg), "-o", "broker", "--broker", addr.base)

    # Blocked in send: its once-a-second heartbeat stops (the broker's own queue may still
    # have room when the broker's counters stop, so those alone do not show it).
    heartbeats = Subscriber(addr, ["stats.fast"], mode="monitor")
    try:
        wait_for(lambda: query(addr)["topics"].get("data.fast"), 30, what="the job's data")

        def blocked() -> bool:
            return heartbeats.recv(2.5) is None

        wait_for(blocked, 60, what="the job to block on backpressure")
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
