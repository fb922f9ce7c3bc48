"""A store killed before its first completed write counts exactly what it never wrote (issue 16).

Under `daq up`, with a fast source whose ROOT and CSV settings hold every row back (no write for
an hour), both stores are killed with SIGKILL once they have received messages but written none.
Their next processes must count as lost every message the first ones held (their state file got
the source's position on first receipt): rows read back + reported lost == messages sent.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _supervision import SENSOR_JOB, Up, Witness, csv_rows, root_rows, stats_csv
from _supervision import config_dir as make_config_dir
from conftest import Procs

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

HELD = """
[store_config.csv]
file_path = "sensor1.csv"
flush_rows = 1000000
flush_seconds = 3600.0

[store_config.root]
file_path = "sensor1.root"
flush_rows = 1000000
flush_seconds = 3600.0
"""
STORES = ("store-csv", "store-root")


@pytest.fixture
def up(procs: Procs, runtime_dir: Path, tmp_path: Path) -> Iterator[Up]:
    u = Up(procs, make_config_dir(tmp_path, {"sensor.toml": SENSOR_JOB + HELD}), runtime_dir)
    yield u
    u.finish()


def test_stores_killed_before_their_first_write_count_every_row_they_held(up: Up) -> None:
    def holding(pieces: dict[str, dict[str, Any]]) -> dict[str, int] | None:
        pids = {}
        for name in STORES:
            p = pieces[name]
            r = p["report"]
            if p["state"] != "running" or r is None or r["pid"] != p["pid"]:
                return None
            if r.get("msgs_in", 0) < 20:
                return None
            assert not r.get("rows_out"), r  # the settings hold every row: nothing written yet
            pids[name] = p["pid"]
        return pids

    witness = Witness(up.address, ["data.sensor1"])
    try:
        old = up.wait(holding, 60, "both stores holding received rows, none written")
        for pid in old.values():
            os.kill(pid, signal.SIGKILL)

        def back(pieces: dict[str, dict[str, Any]]) -> bool:
            for name in STORES:
                p = pieces[name]
                r = p["report"]
                if p["restarts"] != 1 or p["pid"] == old[name] or p["state"] != "running":
                    return False
                if r is None or r["pid"] != p["pid"] or r.get("msgs_in", 0) < 20:
                    return False
            return True

        up.wait(back, 60, "both stores restarted and receiving")
        assert up.stop(signal.SIGINT) == 0
    finally:
        witness.stop()
    sent = witness.sent("sensor1")
    assert sent > 0
    stats = stats_csv(up.out)
    lost = {name: int(stats[name]["lost"]) for name in STORES}
    stored = {
        "store-csv": csv_rows(up.out.glob("sensor1*.csv")),
        "store-root": root_rows(up.out.glob("sensor1*.root"), "sensor1"),
    }
    for name in STORES:
        assert lost[name] > 0, (name, lost, stored, sent)  # what the killed process held
        assert stored[name] + lost[name] == sent, (name, lost, stored, sent)
