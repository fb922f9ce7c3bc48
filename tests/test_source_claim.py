"""A source name is unique per broker: a second live publisher of a name is refused with one
line and a non-zero exit, and nothing of it reaches the stores; a source restarted after a
kill -9 gets its name back."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from _supervision import SENSOR_CSV_JOB, Up, Witness, csv_rows, stats_csv
from _supervision import config_dir as make_config_dir
from conftest import Procs, wait_for, write

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SENSOR = SENSOR_CSV_JOB


@pytest.fixture
def up(procs: Procs, runtime_dir: Path, tmp_path: Path) -> Iterator[Up]:
    u = Up(procs, make_config_dir(tmp_path, {"sensor.toml": SENSOR}), runtime_dir)
    try:
        yield u
    finally:
        u.finish()


def test_a_second_source_of_a_live_name_is_refused(procs: Procs, up: Up, tmp_path: Path) -> None:
    u = up
    u.wait_flowing()
    witness = Witness(u.address, ["data.sensor1"])
    try:
        wait_for(lambda: witness.count("sensor1") >= 20, 30, what="data from sensor1")
        other = write(tmp_path / "same.toml", SENSOR)  # another config, the same name
        p = procs.run(
            "job", "run", str(other), "-o", "broker", "--broker", u.address.base, timeout=60
        )
        err = p.stderr.decode().strip()
        assert p.returncode != 0, err
        lines = err.splitlines()
        assert len(lines) == 1, err
        holder = u.piece("sensor1")["pid"]
        assert "'sensor1' is taken" in lines[0] and f"(pid {holder})" in lines[0], err
        assert "Traceback" not in err
        after = witness.count("sensor1")
        wait_for(lambda: witness.count("sensor1") >= after + 20, 30, what="more data")
        assert u.stop(signal.SIGINT) == 0
    finally:
        witness.stop()
    assert len(witness.seen["sensor1"]) == 1  # one epoch: nothing of the refused source
    sent = witness.sent("sensor1")
    stats = stats_csv(u.out)
    assert csv_rows(u.out.glob("sensor1*.csv")) == sent
    assert stats["store-csv"]["lost"] == "0"


def test_a_source_killed_9_gets_its_name_back(up: Up) -> None:
    u = up
    u.wait_flowing()
    old = u.piece("sensor1")["pid"]
    os.kill(old, signal.SIGKILL)

    def back(pieces: dict) -> bool:
        s = pieces["sensor1"]
        return (
            s["restarts"] == 1
            and s["state"] == "running"
            and s["pid"] != old
            and s["report"] is not None
            and s["report"]["pid"] == s["pid"]
        )

    u.wait(back, 60, "sensor1 restarted and publishing under its name")
    assert u.piece("sensor1")["restart_reasons"] == {"crashed": 1}
    assert "is taken" not in u.output()
    assert u.stop(signal.SIGINT) == 0
