"""kill -9 of `daq up` itself: its children stop in order by themselves and lose nothing.

With real processes: a fast source into csv, ROOT and raw stores; the supervisor is killed -9
while data flows. Sources stop at once (end-of-stream), stores drain until every source ended,
the broker leaves last; every row sent is stored (read back with the csv module, uproot and
the stream reader) or counted lost in the store's last log line; runs.json and stats.csv say
the run was aborted; each child's last lines are in its log file.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest

from _supervision import (
    SENSOR_JOB,
    STORE_SUMMARY,
    Up,
    Witness,
    csv_rows,
    last_line,
    log_time,
    raw_records,
    root_rows,
    stats_csv,
)
from _supervision import config_dir as make_config_dir
from conftest import Procs, wait_for
from enrgdaq_core.envelope import Kind

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FAST_SENSOR = (
    SENSOR_JOB.replace("interval_seconds = 0.02", "interval_seconds = 0.002")
    + """
[store_config.csv]
file_path = "sensor1.csv"

[store_config.root]
file_path = "sensor1.root"

[store_config.raw]
file_path = "sensor1.raw"
"""
)
STORES = ("store-csv", "store-root", "store-raw")


def test_kill_9_of_daq_up_stops_the_children_in_order_losing_nothing(
    procs: Procs, runtime_dir: Path, tmp_path: Path
) -> None:
    cfg = make_config_dir(tmp_path, {"sensor.toml": FAST_SENSOR})
    u = Up(procs, cfg, runtime_dir)
    try:
        u.wait_flowing(timeout=90)
        pieces = {p["name"]: p["pid"] for p in u.status()["pieces"]}  # type: ignore[index]
        assert set(pieces) == {"broker", "sensor1", *STORES}
        witness = Witness(u.address, ["data.sensor1"])
        try:
            wait_for(lambda: witness.count("sensor1") >= 300, 60, what="data before the kill")
            u.track()
            os.kill(u.p.pid, signal.SIGKILL)
            u.p.wait(10)
            # the source's end-of-stream still passes the broker (the witness is a client too:
            # the broker waits for it, so it leaves once it has what it came for)
            eos = wait_for(lambda: witness.eos.get("sensor1"), 30, what="sensor1's end-of-stream")
        finally:
            witness.stop()
        u.assert_no_orphans(timeout=60)
    finally:
        u.close()
    (sent,) = eos.values()  # one incarnation: the end-of-stream's number counts its messages
    assert sent >= 300
    out = u.out
    logs = out / "logs"

    # each store's last line (in its own log file, written after daq up died) counts its loss
    summary = {}
    for store in STORES:
        m = last_line(logs / f"{store}.log", STORE_SUMMARY)
        assert m is not None, (logs / f"{store}.log").read_text()[-3000:]
        summary[store] = (log_time(m[1]), int(m[3]), int(m[4]))
    stored = {
        "store-csv": csv_rows(out.glob("sensor1*.csv")),
        "store-root": root_rows(out.glob("sensor1*.root"), "sensor1"),
        "store-raw": sum(1 for e in raw_records(out.glob("sensor1*.raw")) if e.kind is Kind.TABLE),
    }
    for store in STORES:
        _, rows, lost = summary[store]
        assert stored[store] + lost == sent, (store, stored, summary, sent)
        assert stored[store] == rows
    # an orderly stop: nothing lost at all, every sequence number in the raw file, in order
    assert {s: summary[s][2] for s in STORES} == dict.fromkeys(STORES, 0)
    raw = [e for e in raw_records(out.glob("sensor1*.raw")) if e.header.source == "sensor1"]
    assert [e.header.seq for e in raw] == list(range(sent + 1))
    assert raw[-1].kind is Kind.EOS

    # the broker left last: its last line follows every store's
    broker_log = (logs / "broker.log").read_text(errors="replace")
    m = last_line(logs / "broker.log", re.compile(r"^(\S+ \S+) INFO \[broker\] no client left"))
    assert m is not None, broker_log[-3000:]
    assert all(summary[s][0] <= log_time(m[1]) for s in STORES), (summary, m[0])
    assert "broker broker stopped" in broker_log.splitlines()[-2:], broker_log[-3000:]
    # each child says it found daq up gone, in its own log, and wrote on there without a
    # failed write to the dead pipe
    for name in ("broker", "sensor1", *STORES):
        text = (logs / f"{name}.log").read_text(errors="replace")
        assert "daq up is gone" in text, (name, text[-3000:])
        for bad in ("Traceback", "Logging error", "Broken pipe", "BrokenPipe"):
            assert bad not in text, (name, text[-3000:])
    assert (
        f"sensor1: {sent} messages sent, then end-of-stream" in (logs / "sensor1.log").read_text()
    )

    # the run's record and the stats files say it ended abnormally
    runs = json.loads((out / "runs.json").read_text())["runs"]
    assert [r["run"] for r in runs] == [1]
    assert runs[0]["ended"] == "aborted" and runs[0]["stop_ns"] > runs[0]["start_ns"]
    run = json.loads((out / "run000001" / "run.json").read_text())
    assert run["ended"] == "aborted" and run["stop_ns"] == runs[0]["stop_ns"]
    stats = stats_csv(out)
    assert set(stats) == set(pieces)
    assert {r["is_alive"] for r in stats.values()} == {"false"}
    assert {r["state"] for r in stats.values()} == {"aborted"}
