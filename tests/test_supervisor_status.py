"""The supervisor's status view and plan loading, without processes.

The view (supervisor/status.py) reads a supervisor's state; here that state is a plain object
with real plan, children and monitor, none of them started.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import write
from enrgdaq_core.monitor import Monitor
from enrgdaq_core.stats import StatsReport
from enrgdaq_core.supervisor import plan as plan_mod
from enrgdaq_core.supervisor.plan import Plan, load_plan
from enrgdaq_core.supervisor.process import Child
from enrgdaq_core.supervisor.runs import RunRecord
from enrgdaq_core.supervisor.statsfiles import REMOTE_COLUMNS, STATS_COLUMNS, stats_row
from enrgdaq_core.supervisor.status import piece_status, status, write_stats_files

SENSOR = """
daq_job_type = "sensor"
name = "sensor1"
[store_config.csv]
file_path = "sensor1.csv"
"""


@dataclass
class _State:
    plan: Plan
    children: dict[str, Child]
    monitor: Monitor
    phase: str = "running"
    started_at: float = 0.0
    run_number: int = 7
    record: RunRecord | None = None


@pytest.fixture
def state(tmp_path: Path, daq_env: dict[str, str]) -> _State:
    d = tmp_path / "cfg"
    d.mkdir()
    write(d / "sensor.toml", SENSOR)
    write(d / "supervisor.toml", f'node = "n1"\nout_dir = "{tmp_path / "out"}"\n')
    plan = load_plan(d)
    children = {
        s.name: Child(s, log_dir=plan.log_dir, restart=plan.config.restart) for s in plan.children
    }
    return _State(plan, children, Monitor())


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_status_lists_every_piece_and_the_run(state: _State) -> None:
    st = status(state)
    assert st["node"] == "n1" and st["phase"] == "running" and st["run"] == {"run": 7}
    assert [p["name"] for p in st["pieces"]] == ["broker", "store-csv", "sensor1"]
    broker = st["pieces"][0]
    assert broker["state"] == "new" and broker["alive"] is False and broker["report"] is None
    assert broker["heartbeat_age_s"] is None and broker["log"].endswith("broker.log")


def test_stats_files_are_the_rows_of_the_status(state: _State) -> None:
    state.monitor.add_report(StatsReport(piece="sensor1", role="job", node="n1", msgs_out=5))
    state.monitor.add_report(StatsReport(piece="far", role="job", node="n2", msgs_in=3))
    write_stats_files(state)
    out = state.plan.out_dir
    rows = _rows(out / "stats.csv")
    assert list(rows[0]) == STATS_COLUMNS
    expected = [stats_row("n1", piece_status(state, c)) for c in state.children.values()]
    for row, want in zip(rows, expected, strict=True):
        want.pop("uptime_s"), row.pop("uptime_s")
        assert row == want
    assert rows[2]["message_out_count"] == "5"
    remote = {r["supervisor"]: r for r in _rows(out / "stats_remote.csv")}
    assert list(remote["n1"]) == REMOTE_COLUMNS
    assert remote["n1"]["pieces"] == "1" and remote["n1"]["is_alive"] == "false"
    assert remote["n2"]["message_in_count"] == "3" and remote["n2"]["is_alive"] == "true"


def test_a_node_with_nothing_seen_still_has_its_remote_row(state: _State) -> None:
    write_stats_files(state)
    (row,) = _rows(state.plan.out_dir / "stats_remote.csv")
    assert row["supervisor"] == "n1" and row["is_alive"] == "true" and row["pieces"] == "1"


def test_unwritable_stats_files_are_logged_not_raised(
    state: _State, caplog: pytest.LogCaptureFixture
) -> None:
    (state.plan.out_dir / "stats.csv").mkdir(parents=True)  # a directory where the file goes
    write_stats_files(state)
    assert "cannot write the stats files" in caplog.text


def test_each_toml_is_read_once(
    tmp_path: Path, daq_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """load_plan classifies, checks and builds each process from one read of its file."""
    import enrgdaq_core.jobs as jobs_mod
    from enrgdaq_core.stores import options

    write(tmp_path / "sensor.toml", SENSOR)
    write(tmp_path / "store_csv.toml", 'daq_job_type = "DAQJobStoreCSV"\nflush_rows = 10\n')
    reads: list[str] = []

    def counting(read: Any) -> Any:
        def read_toml(path: str | Path) -> dict[str, Any]:
            reads.append(Path(path).name)
            return read(path)

        return read_toml

    monkeypatch.setattr(plan_mod, "read_toml", counting(plan_mod.read_toml))
    monkeypatch.setattr(options, "read_toml", counting(options.read_toml))
    monkeypatch.setattr(jobs_mod, "read_toml", counting(jobs_mod.read_toml))
    plan = load_plan(tmp_path)
    assert reads.count("store_csv.toml") == 1
    assert reads.count("sensor.toml") == 1
    store = plan.child("store-csv")
    assert store is not None and "--out-dir" in store.argv
