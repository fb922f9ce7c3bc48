"""The config loader: strict, and every error names the file, the key and what was expected."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec
import pytest

from conftest import write
from enrgdaq_core.config import ConfigError, check, convert, load, read_toml
from enrgdaq_core.jobs import load_job, names
from enrgdaq_core.jobs.sensor import SensorConfig, SensorJob
from enrgdaq_core.jobs.test_job import TestJob as SeedTestJob

SENSOR_KEYS = (
    "broker_queue_mb, channels, daq_job_type, daq_job_unique_id, drift_per_hour, interval_seconds, mean, name, "
    "noise, remote_config, restart, rows_per_step, seed, store_config, tag, verbosity"
)
CSV_KEYS = (
    "add_date, file_path, flush_rows, flush_seconds, overwrite, rotate, rotate_mb, use_gzip, "
    "use_zstd"
)
KNOWN_TYPES = ", ".join(names() + ["DAQJobPCMetrics", "DAQJobTest", "pc_metrics"])


def errors_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_job(path)
    assert str(exc.value) == "\n".join(str(i) for i in exc.value.issues)
    return [str(i) for i in exc.value.issues]


def test_unknown_key_lists_expected_keys_and_suggests(tmp_path: Path) -> None:
    f = write(tmp_path / "s.toml", 'daq_job_type = "sensor"\nchanels = 3\n')
    assert errors_of(f) == [
        f"{f}: chanels: unknown key, did you mean 'channels'? (expected one of: {SENSOR_KEYS})"
    ]


def test_unknown_key_without_a_close_match(tmp_path: Path) -> None:
    f = write(tmp_path / "s.toml", 'daq_job_type = "sensor"\nvoltage = 3\n')
    assert errors_of(f) == [f"{f}: voltage: unknown key (expected one of: {SENSOR_KEYS})"]


def test_wrong_type(tmp_path: Path) -> None:
    f = write(tmp_path / "s.toml", 'daq_job_type = "sensor"\ninterval_seconds = "fast"\n')
    assert errors_of(f) == [
        f"{f}: interval_seconds: expected a number > 0 and <= 604800, got a string ('fast')"
    ]


def test_every_error_of_a_file_in_file_order(tmp_path: Path) -> None:
    f = write(
        tmp_path / "s.toml",
        'daq_job_type = "sensor"\n'
        "channels = 2.5\n"
        'verbosity = "debug"\n'
        "[store_config.csv]\n"
        'file_pat = "x.csv"\n'
        "add_date = 1\n"
        "[store_config.parquet]\n",
    )
    assert errors_of(f) == [
        f"{f}: channels: expected an integer >= 0 and <= 4096, got a number (2.5)",
        f"{f}: verbosity: expected one of 'DEBUG', 'ERROR', 'INFO', 'WARNING', "
        "got a string ('debug')",
        f"{f}: store_config.csv.file_pat: unknown key, did you mean 'file_path'? "
        f"(expected one of: {CSV_KEYS})",
        f"{f}: store_config.csv.add_date: expected true or false, got an integer (1)",
        f"{f}: store_config.parquet: unknown key "
        "(expected one of: csv, hdf5, memory, mysql, raw, redis, root)",
    ]


def test_missing_job_type(tmp_path: Path) -> None:
    f = write(tmp_path / "s.toml", 'name = "x"\n')
    assert errors_of(f) == [f"{f}: daq_job_type: missing required key (a job type name)"]


def test_job_type_of_the_wrong_type(tmp_path: Path) -> None:
    f = write(tmp_path / "s.toml", "daq_job_type = 3\n")
    assert errors_of(f) == [f"{f}: daq_job_type: expected a string, got an integer (3)"]


def test_unknown_job_type(tmp_path: Path) -> None:
    f = write(tmp_path / "s.toml", 'daq_job_type = "camera"\n')
    assert errors_of(f) == [
        f"{f}: daq_job_type: unknown job type 'camera' (known: {KNOWN_TYPES}; or module:Class)"
    ]
    g = write(tmp_path / "g.toml", 'daq_job_type = "sensr"\n')
    assert errors_of(g) == [
        f"{g}: daq_job_type: unknown job type 'sensr' (did you mean 'sensor'? "
        f"known: {KNOWN_TYPES}; or module:Class)"
    ]


def test_job_type_import_path_that_fails(tmp_path: Path) -> None:
    f = write(tmp_path / "s.toml", 'daq_job_type = "no_such_pkg.jobs:Job"\n')
    assert errors_of(f) == [
        f"{f}: daq_job_type: cannot import 'no_such_pkg.jobs:Job': No module named 'no_such_pkg'"
    ]
    g = write(tmp_path / "g.toml", 'daq_job_type = "enrgdaq_core.stats:StatsReport"\n')
    assert errors_of(g) == [
        f"{g}: daq_job_type: enrgdaq_core.stats:StatsReport is not a subclass of "
        "enrgdaq_core.jobs.base.Job"
    ]


def test_invalid_toml(tmp_path: Path) -> None:
    f = write(tmp_path / "s.toml", 'daq_job_type = "sensor"\nchannels = \n')
    assert errors_of(f) == [f"{f}: invalid TOML: Invalid value (at line 2, column 12)"]
    g = write(tmp_path / "g.toml", 'daq_job_type = "sensor"\nchannels = 3\nchannels = 4\n')
    assert errors_of(g) == [f"{g}: invalid TOML: Cannot overwrite a value (at line 3, column 13)"]


def test_missing_file_and_directory(tmp_path: Path) -> None:
    assert errors_of(tmp_path / "nope.toml") == [f"{tmp_path / 'nope.toml'}: file not found"]
    assert errors_of(tmp_path) == [f"{tmp_path}: is a directory, expected a TOML file"]


def test_nested_optional_and_literal_values(tmp_path: Path) -> None:
    f = write(
        tmp_path / "s.toml",
        'daq_job_type = "sensor"\n'
        "[store_config.redis]\n"
        'key_expiration_days = "x"\n'
        "[store_config.root]\n"
        'compression_type = "zstd"\n'
        "[remote_config]\n"
        "remote_topic = 3\n",
    )
    assert errors_of(f) == [
        f"{f}: store_config.redis.key_expiration_days: expected an integer > 0, got a string ('x')",
        f"{f}: store_config.root.compression_type: expected one of 'LZ4', 'LZMA', 'NONE', "
        "'ZLIB', 'ZSTD', got a string ('zstd')",
        f"{f}: remote_config.remote_topic: expected a string, got an integer (3)",
    ]


def test_constraints_and_lists() -> None:
    class Cfg(msgspec.Struct, forbid_unknown_fields=True):
        count: Annotated[int, msgspec.Meta(ge=1)]
        gain: Annotated[float, msgspec.Meta(gt=0)] = 1.0
        percent: Annotated[float, msgspec.Meta(ge=0, le=100)] = 0.0
        names: list[str] = []

    issues = check({"count": 0, "gain": 0, "percent": 101, "names": ["a", 2]}, Cfg, "c.toml")
    assert [str(i) for i in issues] == [
        "c.toml: count: expected an integer >= 1, got 0",
        "c.toml: gain: expected a number > 0, got 0",
        "c.toml: percent: expected a number >= 0 and <= 100, got 101",
        "c.toml: names[1]: expected a string, got an integer (2)",
    ]
    assert [str(i) for i in check({"count": "x"}, Cfg, "c.toml")] == [
        "c.toml: count: expected an integer >= 1, got a string ('x')"
    ]
    assert [str(i) for i in check({}, Cfg, "c.toml")] == [
        "c.toml: count: missing required key (an integer >= 1)"
    ]
    assert convert({"count": 2, "gain": 3}, Cfg, "c.toml") == Cfg(count=2, gain=3.0, names=[])


def test_job_values_out_of_range(tmp_path: Path) -> None:
    """Values a simulated device cannot work with are config errors, not tracebacks later."""
    f = write(
        tmp_path / "d.toml",
        'daq_job_type = "digitizer"\nchannels = 0\nsamples = 0\nevent_rate = -5\nnoise = -1\n',
    )
    assert errors_of(f) == [
        f"{f}: channels: expected an integer >= 1 and <= 256, got 0",
        f"{f}: samples: expected an integer >= 1 and <= 1048576, got 0",
        f"{f}: event_rate: expected a number > 0 and <= 1000000, got -5",
        f"{f}: noise: expected a number >= 0, got -1",
    ]
    g = write(tmp_path / "s.toml", 'daq_job_type = "sensor"\nchannels = -1\nrows_per_step = 0\n')
    assert errors_of(g) == [
        f"{g}: channels: expected an integer >= 0 and <= 4096, got -1",
        f"{g}: rows_per_step: expected an integer >= 1 and <= 1000000, got 0",
    ]


def test_seed_style_config_is_accepted(tmp_path: Path) -> None:
    """A config written for the seed system (class name, its store and remote keys) loads."""
    f = write(
        tmp_path / "test.toml",
        'daq_job_type = "DAQJobTest"\n'
        "rand_min = 1\n"
        "rand_max = 100\n"
        'daq_job_unique_id = "test-1"\n'
        "[store_config.csv]\n"
        'file_path = "test.csv"\n'
        "add_date = true\n"
        "[remote_config]\n"
        "remote_disable = true\n",
    )
    job = load_job(f)
    assert isinstance(job, SeedTestJob) and job.name == "test"
    assert job.config.store_config.for_header() == {
        "csv": {"file_path": "test.csv", "add_date": True}
    }
    assert job.config.remote_config.remote_disable is True


def test_name_comes_from_config_then_file_stem(tmp_path: Path) -> None:
    a = write(tmp_path / "probe.toml", 'daq_job_type = "sensor"\n')
    b = write(tmp_path / "b.toml", 'daq_job_type = "sensor"\nname = "sensor7"\n')
    job = load_job(a)
    assert isinstance(job, SensorJob) and job.name == "probe"
    assert load_job(b).name == "sensor7"
    assert load_job(b, name="override").name == "override"


def test_load_and_read_toml(tmp_path: Path) -> None:
    f = write(tmp_path / "s.toml", 'daq_job_type = "sensor"\nchannels = 2\nnoise = 1\n')
    cfg = load(f, SensorConfig)
    assert (cfg.channels, cfg.noise, cfg.interval_seconds) == (2, 1.0, 1.0)
    assert isinstance(cfg.noise, float)
    assert read_toml(f) == {"daq_job_type": "sensor", "channels": 2, "noise": 1}


def test_configuration_doc_lists_every_key() -> None:
    """docs/configuration.md documents every key of the spine's job types and every
    [store_config.<backend>] key (add a row there when you add a key)."""
    import re

    from enrgdaq_core.jobs import resolve
    from enrgdaq_core.jobs.describe import describe
    from enrgdaq_core.store_config import BACKEND_CONFIGS

    doc = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"`([a-z0-9_]+)`", doc))
    for type_name in ("sensor", "digitizer", "metrics", "test"):
        missing = set(describe(resolve(type_name))["keys"]) - documented
        assert not missing, f"{type_name} keys not in docs/configuration.md: {missing}"
    for backend, struct in BACKEND_CONFIGS.items():
        missing = ({backend} | set(struct.__struct_fields__)) - documented
        assert not missing, f"store_config.{backend} keys not in docs/configuration.md: {missing}"
