"""Sources hold what they send while the broker is away and deliver it on its return (issue 16).

Real processes: a fast counting source and a raw store on a `daq broker`; the broker is killed
(SIGKILL) and a new one started on the same address ~3 s later. Every sequence number the
source sent is either in the raw file or counted lost by the store, exactly; and the loss is
only what was in flight, far less than what was sent during the outage (held and delivered).
With a tiny byte bound, what exceeded it is dropped and counted, by the source and the store.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest

from _supervision import raw_records
from conftest import Procs, start_broker, wait_for, write
from enrgdaq_core.broker_client import query, wait_for_subscriptions
from enrgdaq_core.envelope import Kind
from enrgdaq_core.transport import BrokerAddress

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SOURCE = """
daq_job_type = "sensor"
name = "sensor1"
interval_seconds = 0.005
channels = 2
{extra}
[store_config.raw]
file_path = "sensor1.raw"
"""
OUTAGE = 3.0  # seconds the broker is away


def _count(addr: BrokerAddress) -> int:
    try:
        return int(query(addr, "counters", timeout=0.5)["topics"].get("data.sensor1", [0])[0])
    except TimeoutError:
        return 0


def _run(procs: Procs, tmp_path: Path, runtime_dir: Path, extra: str = "") -> dict[str, object]:
    """Source and raw store through a broker that is killed and restarted; what each saw."""
    addr, broker = start_broker(procs, f"ipc://{runtime_dir}/broker")
    out = tmp_path / "out"
    store = procs.start(
        "store",
        "raw",
        "--from",
        "data.sensor1",
        "--exit-on-eos",
        "--out-dir",
        str(out),
        "--broker",
        addr.base,
    )
    assert wait_for_subscriptions(addr, ["data.sensor1"], timeout=30)
    cfg = write(tmp_path / "sensor.toml", SOURCE.format(extra=extra))
    job = procs.start("job", "run", str(cfg), "-o", "broker", "--broker", addr.base)
    wait_for(lambda: _count(addr) >= 100, 30, what="data through the first broker")
    broker.send_signal(signal.SIGKILL)
    broker.wait(10)
    time.sleep(OUTAGE)  # the outage itself: the source keeps sending meanwhile
    addr, broker = start_broker(procs, addr.base)
    wait_for(lambda: _count(addr) >= 200, 60, what="data through the new broker")
    assert procs.stop(job, signal.SIGTERM, timeout=60) == 0, job.stderr.read().decode()  # type: ignore[union-attr]
    job_log = job.stderr.read().decode()  # type: ignore[union-attr]
    assert store.wait(15) == 0  # it ends once the source's end-of-stream arrived
    store_log = store.stderr.read().decode()  # type: ignore[union-attr]
    procs.stop(broker)
    envs = [e for e in raw_records(out.glob("sensor1*.raw")) if e.header.source == "sensor1"]
    (eos,) = [e for e in envs if e.kind is Kind.EOS]
    summary = re.search(r"(\d+) lost upstream", store_log)
    assert summary is not None, store_log
    held = re.search(r"is back: delivered (\d+) held message", job_log)
    dropped = re.search(r"dropped (\d+) message\(s\) beyond", job_log)
    return {
        "sent": eos.header.seq,  # end-of-stream carries the count of data messages before it
        "stored": {e.header.seq for e in envs if e.kind is Kind.TABLE},
        "lost": int(summary.group(1)),
        "held": int(held.group(1)) if held else 0,
        "dropped": int(dropped.group(1)) if dropped else 0,
        "job_log": job_log,
    }


def test_a_source_holds_what_it_sends_while_the_broker_is_away(
    procs: Procs, tmp_path: Path, runtime_dir: Path
) -> None:
    r = _run(procs, tmp_path, runtime_dir)
    sent, stored, lost, held = r["sent"], r["stored"], r["lost"], r["held"]
    assert isinstance(stored, set) and isinstance(sent, int)
    assert len(stored) + lost == sent, (len(stored), lost, sent)
    assert stored <= set(range(sent))
    assert r["dropped"] == 0
    # an outage of 3 s at up to 200 messages/s: held and delivered, not lost
    assert isinstance(held, int) and held >= 50, r["job_log"]
    assert isinstance(lost, int) and lost * 5 < held, (lost, held)


def test_beyond_its_byte_bound_a_source_drops_and_counts(
    procs: Procs, tmp_path: Path, runtime_dir: Path
) -> None:
    r = _run(procs, tmp_path, runtime_dir, extra="broker_queue_mb = 0.01")
    sent, stored, lost, dropped = r["sent"], r["stored"], r["lost"], r["dropped"]
    assert isinstance(stored, set) and isinstance(sent, int)
    assert len(stored) + lost == sent, (len(stored), lost, sent)
    assert isinstance(dropped, int) and dropped > 0, r["job_log"]
    assert isinstance(lost, int) and lost >= dropped  # every drop is a gap the store counted
    assert r["held"], r["job_log"]  # what fitted was held and delivered
