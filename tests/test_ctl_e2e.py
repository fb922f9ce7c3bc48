"""`daq ctl` against a live `daq up`: status, stop/start/restart, run next, logs (and -f)."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from _supervision import SENSOR_JOB, TEST_JOB, Up, config_dir, csv_rows, stats_csv
from conftest import Procs, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SENSOR = (
    SENSOR_JOB
    + """
[store_config.csv]
file_path = "run{run}/sensor1.csv"
"""
)


def test_ctl_commands_on_a_live_system(procs: Procs, runtime_dir: Path, tmp_path: Path) -> None:
    d = config_dir(tmp_path, {"sensor.toml": SENSOR, "test.toml": TEST_JOB})
    u = Up(procs, d, runtime_dir)
    follower: subprocess.Popen | None = None
    try:
        u.wait_flowing()

        def ctl(*args: str) -> subprocess.CompletedProcess:
            return procs.run("ctl", *args, timeout=60)

        # status, as JSON and as a table
        p = ctl("status", "--json")
        assert p.returncode == 0, p.stderr.decode()
        st = json.loads(p.stdout)
        assert [x["name"] for x in st["pieces"]] == ["broker", "store-csv", "sensor1", "test"]
        assert all(x["state"] == "running" and x["pid"] > 0 for x in st["pieces"])
        assert st["run"]["run"] == 1 and st["phase"] == "running"
        p = ctl("status")
        assert p.returncode == 0 and b"sensor1" in p.stdout and b"running" in p.stdout

        # stop keeps it stopped; start brings it back; a second start is refused
        old = u.piece("sensor1")["pid"]
        p = ctl("stop", "sensor1")
        assert p.returncode == 0 and p.stdout.decode() == f"stopping sensor1 (pid {old})\n"
        u.wait(lambda x: x["sensor1"]["state"] == "stopped", 30, "sensor1 stopped")
        seen = u.piece("test")["report"]["time_ns"]
        u.wait(
            lambda x: x["test"]["report"]["time_ns"] > seen + 1_000_000_000,
            30,
            "a second of the test job's reports",
        )
        p1 = u.piece("sensor1")
        assert (p1["state"], p1["pid"], p1["restarts"]) == ("stopped", None, 0)
        p = ctl("start", "sensor1")
        assert p.returncode == 0 and p.stdout.decode().startswith("started sensor1 (pid ")
        p = ctl("start", "sensor1")
        assert p.returncode == 1
        assert p.stderr.decode().startswith("daq: error: sensor1 is already running (pid ")

        # restart: counted, with its reason, and a new process
        before = u.piece("sensor1")["pid"]
        assert ctl("restart", "sensor1").returncode == 0
        u.wait(
            lambda x: x["sensor1"]["restarts"] == 1 and x["sensor1"]["state"] == "running",
            30,
            "sensor1 restarted",
        )
        after = u.piece("sensor1")
        assert after["pid"] != before and after["restart_reasons"] == {"requested": 1}

        # logs: the end of the file, and -f following new lines
        p = ctl("logs", "sensor1", "-n", "50")
        assert p.returncode == 0 and f"daq up: started pid {after['pid']}" in p.stdout.decode()
        follower = procs.start("ctl", "logs", "sensor1", "-f", "-n", "0", stdout=subprocess.PIPE)
        lines: list[str] = []

        def read() -> None:
            assert follower is not None and follower.stdout is not None
            for raw in follower.stdout:
                lines.append(raw.decode())

        threading.Thread(target=read, daemon=True).start()
        assert ctl("restart", "sensor1").returncode == 0
        u.wait(lambda x: x["sensor1"]["restarts"] == 2 and x["sensor1"]["pid"], 30, "restart 2")
        newest = u.piece("sensor1")["pid"]
        wait_for(
            lambda: any(f"started pid {newest} (restart 2: requested)" in ln for ln in lines),
            15,
            what="the follower to print the new start",
        )

        # run next: run 1 closes, sources restart with run 2, its data goes to run000002/
        p = ctl("run", "next")
        assert p.returncode == 0, p.stderr.decode()
        assert p.stdout.decode() == "run 1 closed, run 2 started\n"
        u.wait(lambda x: x["store-csv"]["report"]["rows_out"] > 0, 10, "rows")
        wait_for(
            lambda: (
                (u.out / "run000002" / "sensor1.csv").exists()
                and csv_rows([u.out / "run000002" / "sensor1.csv"]) > 5
            ),
            30,
            what="rows of run 2",
        )
        runs = json.loads((u.out / "runs.json").read_text())["runs"]
        assert [r["run"] for r in runs] == [1, 2]
        assert runs[0]["stop_ns"] > runs[0]["start_ns"] and runs[1]["stop_ns"] == 0
        assert runs[1]["start_ns"] >= runs[0]["stop_ns"]
        assert (u.out / "run000002" / "configs" / "sensor.toml").read_text() == SENSOR
        st = u.status()
        assert st is not None and st["run"]["run"] == 2
        assert u.piece("sensor1")["restarts"] == 2  # a new run is not a failure

        # refusals name what is known
        p = ctl("restart", "nosuch")
        assert p.returncode == 1
        assert p.stderr.decode() == (
            "daq: error: no piece named 'nosuch' (known: broker, store-csv, sensor1, test)\n"
        )
        p = ctl("run", "later")
        assert p.returncode == 2

        assert u.stop(signal.SIGTERM) == 0
    finally:
        if follower is not None:
            follower.kill()
            follower.wait(10)
        if u.p.poll() is None:
            u.stop(signal.SIGINT)
        u.assert_no_orphans()
        u.close()

    # no sequence gap at the store across stop, start, restart and run next
    stats = stats_csv(u.out)
    assert stats["store-csv"]["lost"] == "0"
    p = procs.run("ctl", "status", timeout=30)
    assert p.returncode == 1 and "no `daq up` answered" in p.stderr.decode()
