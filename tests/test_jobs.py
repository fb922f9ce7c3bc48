"""Job types (built-in, seed alias, import path, entry point), the runtime loop, built-in jobs."""

from __future__ import annotations

import io
import sys
import threading
import tomllib
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from conftest import Procs, write
from enrgdaq_core.config import ConfigError, convert
from enrgdaq_core.envelope import Envelope, Kind, decode_body
from enrgdaq_core.jobs import UncheckedJob, is_custom, load_job, names, resolve
from enrgdaq_core.jobs.base import Job, JobConfig
from enrgdaq_core.jobs.describe import describe, starter_toml
from enrgdaq_core.jobs.digitizer import DigitizerJob
from enrgdaq_core.jobs.metrics import MetricsJob
from enrgdaq_core.jobs.runtime import run_job
from enrgdaq_core.jobs.sensor import SensorJob
from enrgdaq_core.jobs.test_job import TestJob as SeedTestJob
from enrgdaq_core.signals import StopFlag
from enrgdaq_core.stats import StatsReport
from enrgdaq_core.store_config import CSVStoreConfig, StoreConfig
from enrgdaq_core.stream import StreamReader

LAB_MODULE = '''
"""A lab's own job: one class, no glue."""
from enrgdaq_core.jobs.base import Job, JobConfig


class CounterConfig(JobConfig, kw_only=True, forbid_unknown_fields=True):
    first: int = 10


class CounterJob(Job):
    type_name = "counter"
    description = "Counts up from `first`."
    Config = CounterConfig

    def start(self):
        import pyarrow as pa

        self._pa = pa
        self._n = self.config.first

    def step(self):
        self._n += 1
        return self._pa.table({"n": [self._n]})


class NotAJob:
    pass
'''


@pytest.fixture
def lab_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`labjobs.py` in a directory on sys.path (and on PYTHONPATH for child processes)."""
    pkg = tmp_path / "labsrc"
    pkg.mkdir()
    write(pkg / "labjobs.py", LAB_MODULE)
    monkeypatch.syspath_prepend(str(pkg))
    yield pkg
    sys.modules.pop("labjobs", None)


class ListOutput:
    def __init__(self) -> None:
        self.sent: list[Envelope] = []
        self.flushed = 0
        self.flush_dues = 0

    def send(self, env: Envelope) -> None:
        self.sent.append(env)

    def flush(self) -> None:
        self.flushed += 1

    def flush_due(self) -> None:
        self.flush_dues += 1

    def close(self) -> None:
        pass

    def stats(self) -> dict[str, int]:
        return {}


class FakeTelemetry:
    def __init__(self) -> None:
        self.sent: list[Envelope] = []

    def send(self, env: Envelope) -> None:
        self.sent.append(env)


# -- registry -------------------------------------------------------------------------------


def test_builtin_types_and_seed_aliases() -> None:
    assert names()[:4] == ["sensor", "digitizer", "metrics", "test"]
    assert resolve("sensor") is SensorJob
    assert resolve("digitizer") is DigitizerJob
    assert resolve("metrics") is MetricsJob
    assert resolve("test") is SeedTestJob
    assert resolve("DAQJobTest") is SeedTestJob
    assert resolve("DAQJobPCMetrics") is MetricsJob
    for name in names():
        cls = resolve(name)
        assert issubclass(cls, Job) and issubclass(cls.Config, JobConfig) and cls.description


def test_import_path_type(lab_module: Path, tmp_path: Path) -> None:
    cls = resolve("labjobs:CounterJob")
    assert cls.__name__ == "CounterJob"
    cfg = write(tmp_path / "c.toml", 'daq_job_type = "labjobs:CounterJob"\nfirst = 5\n')
    job = load_job(cfg)
    assert job.name == "c" and job.config.first == 5
    with pytest.raises(LookupError) as exc:
        resolve("labjobs:NotAJob")
    assert str(exc.value) == "labjobs:NotAJob is not a subclass of enrgdaq_core.jobs.base.Job"
    with pytest.raises(LookupError) as exc:
        resolve("labjobs:Missing")
    assert str(exc.value) == (
        "cannot import 'labjobs:Missing': module 'labjobs' has no attribute 'Missing'"
    )


def test_import_path_type_runs_as_a_process(lab_module: Path, procs: Procs, tmp_path: Path) -> None:
    """A lab's class on PYTHONPATH runs with `daq job run`: no registration, no glue."""
    procs.env["PYTHONPATH"] = str(lab_module)
    cfg = write(tmp_path / "counter.toml", 'daq_job_type = "labjobs:CounterJob"\nfirst = 100\n')
    p = procs.run("job", "run", str(cfg), "--count", "3", "-o", "-")
    assert p.returncode == 0, p.stderr.decode()
    envs = [r.envelope for r in StreamReader(io.BytesIO(p.stdout))]
    assert [e.kind for e in envs] == [Kind.TABLE] * 3 + [Kind.EOS]
    assert [e.table().column("n").to_pylist() for e in envs[:3]] == [[101], [102], [103]]
    assert {e.header.source for e in envs} == {"counter"}


def _fake_entry_points(monkeypatch: pytest.MonkeyPatch, *eps: EntryPoint) -> None:
    import enrgdaq_core.jobs as registry

    def entry_points(*, group: str) -> list[EntryPoint]:
        return [ep for ep in eps if ep.group == group]

    monkeypatch.setattr(registry, "entry_points", entry_points)


def test_a_custom_type_is_not_imported_unless_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`daq up --check`: an import path or an entry point names a module that is not the
    project's; without `import_custom` it is not imported and only the common keys count."""
    _fake_entry_points(monkeypatch, EntryPoint("cam", "no_such_lab_module:Cam", "enrgdaq.jobs"))
    assert [is_custom(t) for t in ("sensor", "DAQJobTest", "cam", "lab:Cam", "camera")] == [
        False,
        False,
        True,
        True,
        False,
    ]
    for type_name in ("cam", "no_such_lab_module:Cam"):
        cfg = write(
            tmp_path / "c.toml",
            f'daq_job_type = "{type_name}"\nexposure = 3\nrestart = "never"\n'
            '[store_config.csv]\nfile_path = "c.csv"\n',
        )
        job = load_job(cfg, import_custom=False)
        assert type(job) is UncheckedJob and job.name == "c"
        assert job.config.restart == "never" and job.config.store_config.backends() == ["csv"]
        assert "no_such_lab_module" not in sys.modules
        with pytest.raises(ConfigError, match="cannot import|No module named"):
            load_job(cfg)  # imported when asked: the module is not there
        write(cfg, f'daq_job_type = "{type_name}"\nrestart = "sometimes"\n')
        with pytest.raises(ConfigError, match="restart"):  # the common keys still count
            load_job(cfg, import_custom=False)
    sensor = write(tmp_path / "s.toml", 'daq_job_type = "sensor"\n')
    assert type(load_job(sensor, import_custom=False)) is SensorJob  # ours: imported


def test_entry_point_type(lab_module: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_entry_points(
        monkeypatch,
        EntryPoint("counter", "labjobs:CounterJob", "enrgdaq.jobs"),
        EntryPoint("broken", "labjobs:NotAJob", "enrgdaq.jobs"),
        EntryPoint("other", "labjobs:CounterJob", "some.other.group"),
    )
    assert names()[-2:] == ["broken", "counter"] and "other" not in names()
    assert resolve("counter").__name__ == "CounterJob"
    with pytest.raises(LookupError) as exc:
        resolve("broken")
    assert str(exc.value) == "entry point 'broken' does not name a Job subclass"


def test_entry_point_cannot_shadow_a_builtin(
    lab_module: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_entry_points(monkeypatch, EntryPoint("sensor", "labjobs:CounterJob", "enrgdaq.jobs"))
    assert resolve("sensor") is SensorJob
    assert names().count("sensor") == 1


# -- describe / starter configs ---------------------------------------------------------------


def test_describe_lists_keys_defaults_and_hides_legacy() -> None:
    info = describe(SensorJob)
    assert info["keys"]["daq_job_type"] == {"type": "a string", "default": None, "required": True}
    assert info["keys"]["channels"] == {
        "type": "an integer >= 0 and <= 4096",
        "default": 4,
        "required": False,
    }
    assert info["keys"]["store_config"]["default"] == {}
    assert "remote_config" not in info["keys"] and "daq_job_unique_id" not in info["keys"]
    assert describe(SeedTestJob)["aliases"] == ["DAQJobTest"]


@pytest.mark.parametrize("type_name", names())
def test_starter_config_loads_as_written(type_name: str) -> None:
    cls = resolve(type_name)
    data = tomllib.loads(starter_toml(cls, type_name))
    config = convert(data, cls.Config, f"{type_name}.toml")
    assert config == cls.Config(daq_job_type=type_name)


# -- the runtime ---------------------------------------------------------------------------------


class ScriptedJob(Job):
    """Returns what the test scripted, step by step, and records its life cycle."""

    type_name = "scripted"

    def __init__(self, script: list[Any], *, fail_at: int | None = None) -> None:
        cfg = JobConfig(
            daq_job_type="scripted",
            interval_seconds=0,
            tag="t1",
            store_config=StoreConfig(csv=CSVStoreConfig(file_path="x.csv")),
        )
        super().__init__(cfg, "scripted")
        self.script = script
        self.fail_at = fail_at
        self.calls: list[str] = []

    def start(self) -> None:
        self.calls.append("start")

    def step(self) -> Any:
        i = self.calls.count("step")
        self.calls.append("step")
        if i == self.fail_at:
            raise RuntimeError("hardware fell over")
        return self.script[i % len(self.script)]

    def stop(self) -> None:
        self.calls.append("stop")


def test_an_unpaced_job_offers_a_flush_after_every_step() -> None:
    """A digitizer's step blocks until its next trigger: the events it returned before must
    not wait in a pipe's buffer for that (the stream output flushes when they are due)."""
    table = pa.table({"x": pa.array([1], pa.int32())})
    out = ListOutput()
    seen: list[int] = []

    class Waiting(ScriptedJob):
        def step(self) -> Any:
            seen.append(out.flush_dues)
            return super().step()

    run_job(Waiting([table]), out, stop=StopFlag(), max_messages=3)
    assert seen == [0, 1, 2]


def test_run_job_stamps_publishes_and_ends_with_eos() -> None:
    table = pa.table({"x": pa.array([1, 2, 3], pa.int32())})
    job = ScriptedJob([table, None, [b"raw-1", table]])
    out = ListOutput()
    meter = run_job(job, out, stop=StopFlag(), run=9, max_messages=5)
    kinds = [e.kind for e in out.sent]
    assert kinds == [Kind.TABLE, Kind.RAW, Kind.TABLE, Kind.TABLE, Kind.RAW, Kind.EOS]
    assert [e.header.seq for e in out.sent] == list(range(6))
    assert {e.topic for e in out.sent} == {"data.scripted"}
    assert all(e.header.run == 9 and e.header.tag == "t1" for e in out.sent)
    assert out.sent[0].header.store == {"csv": {"file_path": "x.csv"}}
    assert out.sent[0].header.rows == 3 and out.sent[0].table().equals(table)
    assert bytes(out.sent[1].payload) == b"raw-1"
    assert (meter.msgs_out, meter.rows_out) == (5, 9)
    assert job.calls[0] == "start" and job.calls[-1] == "stop"
    assert out.flushed >= 1


def test_a_failing_step_still_sends_eos_and_stops_the_job() -> None:
    job = ScriptedJob([b"a"], fail_at=2)
    out = ListOutput()
    telemetry = FakeTelemetry()
    with pytest.raises(RuntimeError, match="hardware fell over"):
        run_job(job, out, stop=StopFlag(), telemetry=telemetry)
    assert [e.kind for e in out.sent] == [Kind.RAW, Kind.RAW, Kind.EOS]
    assert job.calls[-1] == "stop"
    final = decode_body(telemetry.sent[-1].payload, StatsReport)
    assert telemetry.sent[-1].topic == "stats.scripted"
    assert final.extra == {"final": True} and final.msgs_out == 2


def test_stop_flag_from_another_thread_ends_the_run() -> None:
    job = ScriptedJob([b"tick"])
    job.config.interval_seconds = 0.01
    out = ListOutput()
    stop = StopFlag()
    reports: list[StatsReport] = []
    timer = threading.Timer(0.3, stop.set, args=(15,))
    timer.start()
    try:
        run_job(job, out, stop=stop, stats_interval=0.05, on_report=reports.append)
    finally:
        timer.cancel()
    assert stop.signal == 15
    assert out.sent[-1].kind is Kind.EOS and len(out.sent) >= 2
    assert reports and reports[-1].role == "job" and reports[-1].piece == "scripted"
    assert reports[-1].msgs_out <= len(out.sent) - 1


# -- built-in jobs -------------------------------------------------------------------------------


def _steps(path: Path, toml: str, n: int) -> tuple[Job, list[Any]]:
    job = load_job(write(path, toml))
    job.start()
    try:
        return job, [job.step() for _ in range(n)]
    finally:
        job.stop()


def test_sensor_rows_channels_and_values(tmp_path: Path) -> None:
    job, out = _steps(
        tmp_path / "s.toml",
        'daq_job_type = "sensor"\nchannels = 3\nrows_per_step = 4\nmean = 5.0\nnoise = 0.0\n',
        2,
    )
    batch = out[0]
    assert batch.schema.names == ["timestamp", "ch0", "ch1", "ch2"]
    assert batch.schema.field("timestamp").type == pa.timestamp("ns", tz="UTC")
    assert batch.num_rows == 4
    assert batch.column("ch1").to_pylist() == [5.0] * 4  # no noise, no drift
    times = [b.column("timestamp").cast(pa.int64()).to_pylist() for b in out]
    assert times[0] == sorted(times[0]) and times[1][0] > times[0][-1]


def test_sensor_seed_makes_runs_repeatable(tmp_path: Path) -> None:
    toml = 'daq_job_type = "sensor"\nchannels = 2\nseed = 7\n'
    _, a = _steps(tmp_path / "a.toml", toml, 3)
    _, b = _steps(tmp_path / "b.toml", toml, 3)
    assert [x.column("ch0").to_pylist() for x in a] == [x.column("ch0").to_pylist() for x in b]


def test_digitizer_events_and_waveforms(tmp_path: Path) -> None:
    job, out = _steps(
        tmp_path / "d.toml",
        'daq_job_type = "digitizer"\nchannels = 2\nsamples = 16\nevent_rate = 300\n'
        "interval_seconds = 0.01\nseed = 1\n",
        10,
    )
    batches = [b for b in out if b is not None]
    events = [e for b in batches for e in b.column("event").to_pylist()]
    assert events == list(range(30))  # 300/s x 0.01 s x 10 steps, numbered without gaps
    schema = batches[0].schema
    assert schema.names == ["event", "timestamp", "trigger_channel", "ch0", "ch1"]
    assert schema.field("ch0").type == pa.list_(pa.int16(), 16)
    wave = batches[0].column("ch1")[0].as_py()
    assert len(wave) == 16 and min(wave) < 1000 - 50  # a negative pulse below the baseline
    assert all(0 <= c < 2 for b in batches for c in b.column("trigger_channel").to_pylist())


def test_digitizer_raw_output(tmp_path: Path) -> None:
    import numpy as np

    _, out = _steps(
        tmp_path / "d.toml",
        'daq_job_type = "digitizer"\nchannels = 3\nsamples = 8\nevent_rate = 200\n'
        'interval_seconds = 0.01\noutput = "raw"\n',
        1,
    )
    raw = out[0]
    assert isinstance(raw, bytes) and len(raw) == 2 * 3 * 8 * 2
    assert np.frombuffer(raw, np.int16).reshape(2, 3, 8).shape == (2, 3, 8)


def test_metrics_columns(tmp_path: Path) -> None:
    _, out = _steps(tmp_path / "m.toml", 'daq_job_type = "DAQJobPCMetrics"\n', 1)
    row = out[0].to_pylist()[0]
    assert list(row) == [
        "timestamp",
        "cpu_percent",
        "memory_percent",
        "memory_used_mb",
        "disk_percent",
        "net_sent_bytes",
        "net_recv_bytes",
    ]
    assert 0 <= row["memory_percent"] <= 100 and 0 <= row["disk_percent"] <= 100
    assert row["memory_used_mb"] > 0


def test_seed_test_job_values(tmp_path: Path) -> None:
    _, out = _steps(
        tmp_path / "t.toml", 'daq_job_type = "DAQJobTest"\nrand_min = 5\nrand_max = 9\n', 20
    )
    assert out[0].schema.names == ["timestamp", "A", "B", "C"]
    values = [v for b in out for c in "ABC" for v in b.column(c).to_pylist()]
    assert min(values) >= 5 and max(values) <= 9
