"""A stalled (SIGSTOPped) store under `daq up`: it alone is judged hung and restarted, the
broker lives on, `daq stats` shows every piece meanwhile, and the loss is counted exactly."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from _supervision import FAST_SUPERVISOR, SENSOR_JOB, Up, Witness, csv_rows, stats_csv
from _supervision import config_dir as make_config_dir
from conftest import Procs, wait_for, write
from enrgdaq_core.broker_client import query

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Fast enough that a stopped store's queues fill (and the data path blocks) within seconds.
FAST_SENSOR = (
    SENSOR_JOB.replace("interval_seconds = 0.02", "interval_seconds = 0.001")
    + """
[store_config.csv]
file_path = "sensor1.csv"
"""
)
HEARTBEAT = 10.0


@pytest.fixture
def up(procs: Procs, runtime_dir: Path, tmp_path: Path) -> Iterator[Up]:
    directory = make_config_dir(tmp_path, {"sensor.toml": FAST_SENSOR})
    write(directory / "supervisor.toml", FAST_SUPERVISOR.format(heartbeat=HEARTBEAT))
    u = Up(procs, directory, runtime_dir)
    try:
        yield u
    finally:
        u.finish()


def _blocked(u: Up) -> bool:
    """The broker forwards no more data: the stopped store's queues are full."""
    before = query(u.address, "counters", timeout=5.0)["topics"].get("data.sensor1", [0])[0]
    time.sleep(1.0)
    after = query(u.address, "counters", timeout=5.0)["topics"].get("data.sensor1", [0])[0]
    return before > 0 and after == before


def test_stalled_store_is_restarted_alone_and_its_loss_counted_exactly(
    procs: Procs, up: Up
) -> None:
    u = up
    u.wait_flowing()
    witness = Witness(u.address, ["data.sensor1"])
    broker = u.piece("broker")["pid"]
    old = u.piece("store-csv")["pid"]
    try:
        wait_for(lambda: witness.count("sensor1") >= 200, 30, what="data before the stall")
        os.kill(old, signal.SIGSTOP)
        wait_for(lambda: _blocked(u), 60, interval=0, what="the data path to block")
        # while the store stalls (the data path blocked), every piece still shows
        p = procs.run("stats", "--json", timeout=60)
        assert p.returncode == 0, p.stderr.decode()
        assert u.piece("store-csv")["pid"] == old, "the store was restarted before the check"
        snap = json.loads(p.stdout)
        shown = {v["piece"]: v for v in snap["pieces"]}
        assert {"broker", "sensor1", "store-csv", "supervisor"} <= set(shown), shown.keys()
        for name in ("broker", "sensor1", "supervisor"):
            assert shown[name]["age_s"] is not None and shown[name]["age_s"] < 5, shown[name]

        def restarted(pieces: dict) -> bool:
            s = pieces["store-csv"]
            return (
                s["restarts"] == 1
                and s["state"] == "running"
                and s["report"] is not None
                and s["report"]["pid"] == s["pid"] != old
            )

        u.wait(restarted, 90, "the stalled store to be restarted")
    finally:
        try:
            os.kill(old, signal.SIGCONT)
        except ProcessLookupError:
            pass
    try:
        pieces = {p["name"]: p for p in (u.status() or {})["pieces"]}
        assert pieces["store-csv"]["restart_reasons"] == {"hung": 1}
        assert pieces["broker"]["pid"] == broker
        assert {n: p["restarts"] for n, p in pieces.items() if n != "store-csv"} == {
            "broker": 0,
            "sensor1": 0,
        }
        assert "store-csv: no heartbeat for" in u.output()
        after = witness.count("sensor1")
        wait_for(lambda: witness.count("sensor1") >= after + 200, 30, what="data after recovery")
        assert u.stop(signal.SIGINT) == 0
    finally:
        witness.stop()
    sent = witness.sent("sensor1")
    stored = csv_rows(u.out.glob("sensor1*.csv"))
    lost = int(stats_csv(u.out)["store-csv"]["lost"])
    assert sent - stored == lost, (sent, stored, lost)
    assert lost > 0  # what the stopped store held when it was killed
