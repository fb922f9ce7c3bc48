"""The supervisor's parts without processes: plan, backoff, policy, stats files, runs, control."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest

from conftest import write
from enrgdaq_core.backoff import Backoff
from enrgdaq_core.config import ConfigError
from enrgdaq_core.reqrep import RemoteError
from enrgdaq_core.supervisor.control import (
    ControlServer,
    RestartRequest,
    StatusRequest,
    default_endpoint,
    request,
)
from enrgdaq_core.supervisor.plan import ChildSpec, RestartSettings, load_plan
from enrgdaq_core.supervisor.process import Child, describe_exit
from enrgdaq_core.supervisor.runs import RunBook
from enrgdaq_core.supervisor.statsfiles import (
    REMOTE_COLUMNS,
    SEED_REMOTE_COLUMNS,
    SEED_STATS_COLUMNS,
    STATS_COLUMNS,
    remote_rows,
    stats_row,
    write_csv,
)
from enrgdaq_core.transport import BrokerAddress

SENSOR = """
daq_job_type = "sensor"
name = "sensor1"
interval_seconds = 0.5
[store_config.csv]
file_path = "sensor1.csv"
[store_config.raw]
file_path = "sensor1.raw"
"""

TEST_JOB = """
daq_job_type = "DAQJobTest"
restart = "on-failure"
[store_config.csv]
file_path = "test.csv"
"""


@pytest.fixture
def env(daq_env: dict[str, str]) -> dict[str, str]:
    return daq_env


# -- plan ------------------------------------------------------------------------------------


def test_plan_of_a_directory(tmp_path: Path, env: dict[str, str]) -> None:
    d = tmp_path / "cfg"
    d.mkdir()
    write(d / "sensor.toml", SENSOR)
    write(d / "test.toml", TEST_JOB)
    write(d / "store_csv.toml", 'daq_job_type = "DAQJobStoreCSV"\nflush_rows = 100\n')
    write(d / "supervisor.toml", 'node = "lab1"\nout_dir = "data"\n[restart]\nmax_delay = 5\n')
    plan = load_plan(d)
    assert plan.node == "lab1"
    assert plan.out_dir == (Path.cwd() / "data").resolve()
    assert plan.config.restart.max_delay == 5
    assert [c.name for c in plan.children] == [
        "broker",
        "store-csv",
        "store-raw",
        "sensor1",
        "test",
    ]
    csv_store = plan.child("store-csv")
    assert csv_store is not None
    args = csv_store.daq_args
    assert args[:4] == ["store", "csv", "--name", "store-csv"]
    assert args[args.index("--broker") + 1] == plan.address.base
    froms = [args[i + 1] for i, a in enumerate(args) if a == "--from"]
    assert froms == ["data.sensor1", "data.test"]
    assert args[args.index("--config") + 1] == str((d / "store_csv.toml").resolve())
    assert args[args.index("--out-dir") + 1] == str(plan.out_dir)
    assert csv_store.topics == ("data.sensor1", "data.test")
    raw_store = plan.child("store-raw")
    assert raw_store is not None and raw_store.topics == ("data.sensor1",)
    assert "--config" not in raw_store.argv
    assert raw_store.snapshot and not csv_store.snapshot  # the raw store embeds the configs
    sensor = plan.child("sensor1")
    assert sensor is not None
    assert sensor.daq_args[:3] == ["job", "run", str((d / "sensor.toml").resolve())]
    assert sensor.stores == ("store-csv", "store-raw")
    assert sensor.interval == 0.5 and sensor.restart == "always"
    test = plan.child("test")
    assert test is not None and test.restart == "on-failure" and test.stores == ("store-csv",)
    assert plan.control == default_endpoint(plan.address)
    assert [f.name for f in plan.files] == [
        "sensor.toml",
        "store_csv.toml",
        "supervisor.toml",
        "test.toml",
    ]


def test_store_config_without_sources_is_not_started(tmp_path: Path, env: dict[str, str]) -> None:
    write(tmp_path / "sensor.toml", SENSOR)
    write(tmp_path / "store_hdf5.toml", 'daq_job_type = "DAQJobStoreHDF5"\n')
    plan = load_plan(tmp_path)
    assert plan.child("store-hdf5") is None
    assert plan.warnings == [
        f"{tmp_path / 'store_hdf5.toml'}: no source sends to the hdf5 store; not started"
    ]


def test_bad_directory_reports_every_error(tmp_path: Path, env: dict[str, str]) -> None:
    d = tmp_path
    write(d / "a.toml", 'daq_job_type = "sensor"\nchannels = "four"\n')
    write(d / "b.toml", 'daq_job_type = "DAQJobStoreFoo"\n')
    write(d / "c.toml", 'daq_job_type = "sensor" x\n')
    write(d / "d.toml", 'daq_job_type = "sensor"\nname = "broker"\n[store_config.memory]\n')
    write(d / "e.toml", 'daq_job_type = "sensor"\nname = "e"\n')
    write(d / "f.toml", 'daq_job_type = "sensor"\nname = "e"\n')
    write(d / "supervisor.toml", "[restart]\ninitial_delay = -1\n")
    with pytest.raises(ConfigError) as info:
        load_plan(d)
    lines = [str(i) for i in info.value.issues]
    assert lines == [
        f"{d}/supervisor.toml: restart.initial_delay: expected a number >= 0, got -1",
        f"{d}/a.toml: channels: expected an integer >= 0 and <= 4096, got a string ('four')",
        f"{d}/b.toml: daq_job_type: unknown store type 'DAQJobStoreFoo' (known: "
        "DAQJobStoreCSV, DAQJobStoreROOT, DAQJobStoreHDF5, DAQJobStoreMySQL, "
        "DAQJobStoreRedis, DAQJobStoreRaw)",
        f"{d}/c.toml: invalid TOML: Expected newline or end of document after a statement "
        "(at line 1, column 25)",
        f"{d}/d.toml: name: source name 'broker' is reserved (broker, supervisor, store-*)",
        f"{d}/d.toml: store_config.memory: memory keeps its data in the memory of the Python "
        "process that runs it, for tests and notebooks (enrgdaq_core.stores.memory); daq store "
        "and daq up cannot run it",
        f"{d}/f.toml: name: source name 'e' is already used by {d}/e.toml",
    ]


def test_missing_and_empty_directories(tmp_path: Path, env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_plan(tmp_path / "nope")
    assert str(info.value) == f"{tmp_path / 'nope'}: no such directory"
    with pytest.raises(ConfigError) as info:
        load_plan(tmp_path)
    empty = "no source job configs (*.toml with daq_job_type) in this directory"
    assert str(info.value) == f"{tmp_path}: {empty}"
    # job configs one or two levels down are named (`daq up configs/`: configs/examples)
    for sub in ("notes", "lab/a", "examples"):
        (tmp_path / sub).mkdir(parents=True)
    write(tmp_path / "notes" / "x.toml", 'title = "not a job"\n')
    write(tmp_path / "lab" / "a" / "s.toml", 'daq_job_type = "sensor"\n')
    write(tmp_path / "examples" / "s.toml", 'daq_job_type = "sensor"\n')
    with pytest.raises(ConfigError) as info:
        load_plan(tmp_path)
    assert str(info.value) == (
        f"{tmp_path}: {empty}; did you mean {tmp_path / 'examples'} or {tmp_path / 'lab' / 'a'}?"
    )


def test_unreachable_server_store_is_a_config_error(tmp_path: Path, env: dict[str, str]) -> None:
    write(
        tmp_path / "sensor.toml",
        'daq_job_type = "sensor"\n[store_config.redis]\nkey = "s"\n',
    )
    write(tmp_path / "redis.toml", 'daq_job_type = "DAQJobStoreRedis"\nport = 1\n')
    with pytest.raises(ConfigError) as info:
        load_plan(tmp_path)
    (issue,) = info.value.issues
    assert issue.file == str(tmp_path / "redis.toml")
    assert "127.0.0.1:1" in issue.message


def test_broker_override_and_control_endpoint(tmp_path: Path, env: dict[str, str]) -> None:
    write(tmp_path / "sensor.toml", SENSOR)
    write(tmp_path / "supervisor.toml", 'broker = "tcp://127.0.0.1:6000"\n')
    plan = load_plan(tmp_path)
    assert plan.address.base == "tcp://127.0.0.1:6000"
    assert plan.control.startswith("ipc://") and plan.control.endswith("/supervisor-6000.sup")
    plan = load_plan(tmp_path, broker="ipc:///tmp/x/b")
    assert plan.control == "ipc:///tmp/x/b.sup"
    assert default_endpoint(BrokerAddress.parse("ipc:///r/broker")) == "ipc:///r/broker.sup"


# -- restart policy ------------------------------------------------------------------------


def test_backoff_doubles_to_the_cap_and_resets_after_a_healthy_run() -> None:
    b = Backoff(0.5, 4.0, reset_after=10.0)
    assert [b.next_delay(1.0) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert b.next_delay(10.0) == 0.5
    assert b.next_delay(0.1) == 1.0


@pytest.mark.parametrize(
    ("policy", "code", "restart"),
    [
        ("always", 0, True),
        ("always", 3, True),
        ("on-failure", 0, False),
        ("on-failure", 1, True),
        ("on-failure", -9, True),
        ("never", 1, False),
    ],
)
def test_restart_policy(tmp_path: Path, policy: str, code: int, restart: bool) -> None:
    child = Child(
        ChildSpec("j", "job", ["true"], restart=policy),  # type: ignore[arg-type]
        log_dir=tmp_path,
        restart=RestartSettings(),
    )
    child.wanted = True
    assert child.wants_restart(code) is restart
    child.kill_reason = "hung"  # ended on purpose to be restarted: whatever the policy says
    assert child.wants_restart(code) is True
    child.wanted = False  # stopped with `daq ctl stop` or at shutdown
    assert child.wants_restart(code) is False


def test_child_runs_logs_and_counts_restarts(tmp_path: Path) -> None:
    lines: list[tuple[str, str]] = []
    child = Child(
        ChildSpec("echo", "job", []),
        log_dir=tmp_path,
        restart=RestartSettings(initial_delay=0.1),
        console=lambda name, line: lines.append((name, line)),
    )
    import sys

    argv = [sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr)"]
    child.spawn(argv, {})
    assert child.proc is not None and child.proc.wait(10) == 0
    code = child.reap()
    assert code == 0 and child.last_exit == "exit 0"
    assert sorted(lines) == [("echo", "err"), ("echo", "out")]
    assert child.schedule_restart("exited") == 0.1
    child.spawn([sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"], {})
    assert child.proc is not None and child.proc.wait(10) == -9
    child.reap()
    child.close()
    assert child.restarts == 1 and child.reasons == {"exited": 1}
    assert child.last_exit == "killed by SIGKILL"
    text = (tmp_path / "echo.log").read_text()
    assert "out\nerr\n" in text or "err\nout\n" in text
    assert "(restart 1: exited)" in text and "daq up: killed by SIGKILL" in text
    assert describe_exit(-15) == "killed by SIGTERM" and describe_exit(2) == "exit 2"


def test_child_gets_parent_pid_and_restart_count(tmp_path: Path) -> None:
    import os
    import sys

    out: list[str] = []
    child = Child(
        ChildSpec("env", "job", []),
        log_dir=tmp_path,
        restart=RestartSettings(),
        console=lambda _n, line: out.append(line),
    )
    code = "import os; print(os.environ['DAQ_PARENT_PID'], os.environ['DAQ_RESTARTS'])"
    child.spawn([sys.executable, "-c", code], {"PATH": os.environ.get("PATH", "")})
    assert child.proc is not None and child.proc.wait(10) == 0
    child.reap()
    child.close()
    assert out == [f"{os.getpid()} 0"]


# -- stats files -----------------------------------------------------------------------------


def test_stats_csv_has_the_seed_columns_first(tmp_path: Path) -> None:
    assert STATS_COLUMNS[: len(SEED_STATS_COLUMNS)] == [
        "supervisor",
        "daq_job",
        "is_alive",
        "last_message_in_date",
        "message_in_count",
        "last_message_out_date",
        "message_out_count",
        "message_in_queue_size",
        "message_out_queue_size",
        "last_restart_date",
        "restart_count",
    ]
    assert REMOTE_COLUMNS[: len(SEED_REMOTE_COLUMNS)] == [
        "supervisor",
        "is_alive",
        "last_active",
        "message_in_count",
        "message_in_megabytes",
        "message_out_count",
        "message_out_megabytes",
    ]
    piece = {
        "name": "store-csv",
        "role": "store",
        "state": "running",
        "alive": True,
        "pid": 42,
        "uptime_s": 12.345,
        "restarts": 2,
        "restart_reasons": {"crashed": 1, "hung": 1},
        "last_restart_ns": 1_700_000_000_123_456_789,
        "last_exit": "killed by SIGKILL",
        "report": {
            "role": "store",
            "msgs_in": 10,
            "msgs_out": 3,
            "last_in_ns": 1_700_000_001_000_000_000,
            "queue": 7,
            "lost": 4,
            "rows_out": 10,
            "latency_p99_ms": 1.23456,
        },
    }
    idle = {"name": "sensor1", "role": "job", "state": "backoff", "alive": False, "report": None}
    path = tmp_path / "stats.csv"
    write_csv(path, STATS_COLUMNS, [stats_row("lab1", piece), stats_row("lab1", idle)])
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == STATS_COLUMNS
    r = rows[0]
    assert (r["supervisor"], r["daq_job"], r["is_alive"]) == ("lab1", "store-csv", "true")
    assert r["last_message_in_date"] == "1700000001000"
    assert r["last_message_out_date"] == "N/A"
    assert (r["message_in_count"], r["message_out_count"]) == ("10", "3")
    assert (r["message_in_queue_size"], r["message_out_queue_size"]) == ("7", "0")
    assert (r["last_restart_date"], r["restart_count"]) == ("1700000000123", "2")
    assert (r["lost"], r["rows_out"], r["latency_p99_ms"]) == ("4", "10", "1.235")
    assert r["restart_reasons"] == "crashed:1;hung:1" and r["pid"] == "42"
    i = rows[1]
    assert (i["is_alive"], i["message_in_count"], i["last_restart_date"]) == ("false", "0", "N/A")


def test_stats_remote_one_row_per_node(tmp_path: Path) -> None:
    rows = remote_rows(
        [
            ("lab1", {"role": "broker", "msgs_in": 1000, "time_ns": 5_000_000}, True),
            (
                "lab1",
                {"role": "job", "msgs_out": 10, "bytes_out": 2_000_000, "time_ns": 9_000_000},
                True,
            ),
            ("lab1", {"role": "store", "msgs_in": 10, "bytes_in": 2_000_000, "lost": 1}, False),
            ("lab2", {"role": "job", "msgs_out": 5, "time_ns": 1_000_000}, False),
        ]
    )
    assert rows == [
        {
            "supervisor": "lab1",
            "is_alive": "true",
            "last_active": "9",
            "message_in_count": "10",
            "message_in_megabytes": "2.0",
            "message_out_count": "10",
            "message_out_megabytes": "2.0",
            "pieces": "3",
            "lost": "1",
        },
        {
            "supervisor": "lab2",
            "is_alive": "false",
            "last_active": "1",
            "message_in_count": "0",
            "message_in_megabytes": "0.0",
            "message_out_count": "5",
            "message_out_megabytes": "0.0",
            "pieces": "1",
            "lost": "0",
        },
    ]


# -- runs ----------------------------------------------------------------------------------


def test_runs_are_numbered_recorded_and_snapshotted(tmp_path: Path) -> None:
    cfg = write(tmp_path / "sensor.toml", SENSOR)
    out = tmp_path / "out"
    book = RunBook(out)
    assert book.next_number() == 1
    configs = book.snapshot_configs(1, [cfg])
    assert configs == out / "run000001" / "configs"
    assert (configs / "sensor.toml").read_text() == SENSOR
    rec = book.begin(1, node="lab1", config_dir=tmp_path)
    assert book.next_number() == 2
    data = json.loads((out / "runs.json").read_text())["runs"]
    assert [(r["run"], r["stop_ns"], r["node"]) for r in data] == [(1, 0, "lab1")]
    time.sleep(0.01)
    book.end(rec)
    run_json = json.loads((out / "run000001" / "run.json").read_text())
    assert run_json["run"] == 1 and run_json["stop_ns"] > run_json["start_ns"] > 0
    assert run_json["config_dir"] == str(tmp_path)
    assert RunBook(out).next_number() == 2
    assert RunBook(out).next_number(first=7) == 7
    with pytest.raises(ConfigError, match="run 1 is not after the last recorded run"):
        RunBook(out).next_number(first=1)
    (out / "runs.json").write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable runs file"):
        RunBook(out).next_number()


def test_the_last_one_out_ends_open_runs_and_stats_files_as_aborted(
    tmp_path: Path, env: dict[str, str]
) -> None:
    from enrgdaq_core.supervisor.orphan import last_one_out_env, record_aborted

    d = tmp_path / "cfg"
    d.mkdir()
    write(d / "sensor.toml", SENSOR)
    write(d / "supervisor.toml", f'out_dir = "{tmp_path / "out"}"\n[stats]\nremote_file = ""\n')
    plan = load_plan(d)
    book = RunBook(plan.out_dir)
    book.end(book.begin(1))  # ended by daq up
    book.begin(2)  # open when it died
    piece = {"name": "sensor1", "role": "job", "state": "running", "alive": True, "report": {}}
    stats = plan.out_dir / "stats.csv"
    write_csv(stats, STATS_COLUMNS, [stats_row("lab1", piece)])
    before = {r["run"]: r for r in book.records()}

    assert record_aborted(last_one_out_env(plan)) == [2]
    runs = {r["run"]: r for r in book.records()}
    assert runs[1] == before[1] and runs[1]["ended"] == "stopped"
    assert runs[2]["ended"] == "aborted" and runs[2]["stop_ns"] > runs[2]["start_ns"]
    run_json = json.loads((plan.out_dir / "run000002" / "run.json").read_text())
    assert run_json == runs[2]
    (row,) = csv.DictReader(stats.open())
    assert list(row) == STATS_COLUMNS
    assert (row["daq_job"], row["is_alive"], row["state"]) == ("sensor1", "false", "aborted")
    assert not (plan.out_dir / "stats_remote.csv").exists()  # not configured: not written
    assert record_aborted(last_one_out_env(plan)) == []  # nothing open any more


# -- control -------------------------------------------------------------------------------


def test_control_round_trip_and_refusal(runtime_dir: Path) -> None:
    endpoint = f"ipc://{runtime_dir}/t.sup"
    server = ControlServer(
        endpoint,
        {
            StatusRequest: lambda req: {"ok": True, "echo": req},
            RestartRequest: lambda req: {"error": f"no piece named {req.job!r}"},
        },
    )
    import threading

    def serve() -> None:
        for _ in range(3):
            if server.socket.poll(5000):
                server.serve_pending()

    t = threading.Thread(target=serve)
    t.start()
    try:
        assert request(endpoint, "status") == {"ok": True, "echo": {"cmd": "status"}}
        with pytest.raises(RemoteError, match="^bad status request: .* unknown field `job`$"):
            request(endpoint, "status", job="a")
        with pytest.raises(RemoteError, match="no piece named 'x'"):
            request(endpoint, "restart", job="x")
    finally:
        t.join(10)
        server.close()
    with pytest.raises(TimeoutError, match="no `daq up` answered"):
        request(endpoint, "status", timeout=0.2)
