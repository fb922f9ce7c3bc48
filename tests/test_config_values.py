"""Values are checked against their ranges by the config loader (file, key, what was expected),
and the command-line flags with the same meaning get the same checks."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from _store_data import ListInput
from conftest import DAQ, write
from enrgdaq_core.config import ConfigError
from enrgdaq_core.envelope import Source
from enrgdaq_core.jobs import load_job
from enrgdaq_core.signals import StopFlag
from enrgdaq_core.stores.options import build_backend, parse_assignments
from enrgdaq_core.stores.runner import StoreRunner
from enrgdaq_core.supervisor.plan import load_plan


def _issues(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_job(path)
    return [str(i) for i in exc.value.issues]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("nan", "expected a finite number > 0 and <= 604800, got nan"),
        ("inf", "expected a finite number > 0 and <= 604800, got inf"),
        ("-inf", "expected a finite number > 0 and <= 604800, got -inf"),
        ("-1", "expected a number > 0 and <= 604800, got -1"),
        ("1e9", "expected a number > 0 and <= 604800, got 1000000000.0"),
    ],
)
def test_interval_must_be_finite_and_in_range(tmp_path: Path, value: str, expected: str) -> None:
    f = write(tmp_path / "s.toml", f'daq_job_type = "sensor"\ninterval_seconds = {value}\n')
    assert _issues(f) == [f"{f}: interval_seconds: {expected}"]


def test_zero_interval_is_refused_for_every_built_in_job_type(tmp_path: Path) -> None:
    """Every built-in job's step returns at once, so 0 would run it unpaced (the simulated
    digitizer wrote 198 MB in 3 s): refused. Only a custom job whose step blocks on its device
    may run back to back (the base `Interval`)."""
    from enrgdaq_core.jobs import names

    for job_type in names():
        f = write(
            tmp_path / f"{job_type}.toml", f'daq_job_type = "{job_type}"\ninterval_seconds = 0\n'
        )
        assert _issues(f) == [f"{f}: interval_seconds: expected a number > 0 and <= 604800, got 0"]


def test_channel_counts_are_bounded(tmp_path: Path) -> None:
    s = write(tmp_path / "s.toml", 'daq_job_type = "sensor"\nchannels = 1000000000\n')
    assert _issues(s) == [f"{s}: channels: expected an integer >= 0 and <= 4096, got 1000000000"]
    d = write(tmp_path / "d.toml", 'daq_job_type = "digitizer"\nchannels = 1000000000\n')
    assert _issues(d) == [f"{d}: channels: expected an integer >= 1 and <= 256, got 1000000000"]
    big = write(
        tmp_path / "big.toml",
        'daq_job_type = "digitizer"\nchannels = 256\nsamples = 1048576\nevent_rate = 1000\n',
    )
    (issue,) = _issues(big)
    assert issue.startswith(f"{big}: event_rate: 1000 events/s x interval_seconds 0.01") and (
        "samples per step, expected at most 67108864" in issue
    )


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ('rotate = "1y"', "rotate: expected a period like 30s, 15m, 1h or 1d, got '1y'"),
        ('rotate = "-1h"', "rotate: expected a positive period, got '-1h'"),
        ('rotate = "0s"', "rotate: expected a positive period, got '0s'"),
        ('rotate = "nan"', "rotate: expected a positive period, got 'nan'"),
        ('rotate = "inf"', "rotate: expected a positive period, got 'inf'"),
    ],
)
def test_rotation_periods_are_checked_when_loaded(
    tmp_path: Path, setting: str, expected: str
) -> None:
    f = write(tmp_path / "s.toml", f'daq_job_type = "sensor"\n[store_config.csv]\n{setting}\n')
    assert _issues(f) == [f"{f}: store_config.csv: {expected}"]


def test_sizes_and_batching_are_not_negative(tmp_path: Path) -> None:
    f = write(
        tmp_path / "s.toml",
        'daq_job_type = "sensor"\n[store_config.csv]\nrotate_mb = -1\nflush_rows = -5\n',
    )
    assert _issues(f) == [
        f"{f}: store_config.csv.rotate_mb: expected a number >= 0, got -1",
        f"{f}: store_config.csv.flush_rows: expected an integer >= 0, got -5",
    ]
    g = write(
        tmp_path / "g.toml",
        'daq_job_type = "sensor"\n[store_config.root]\ncompression_type = "ZLIB"\n'
        "compression_level = 12\n",
    )
    assert _issues(g) == [
        f"{g}: store_config.root: compression_level: expected 0 to 9 for ZLIB, got 12"
    ]


def test_store_flags_get_the_same_checks(tmp_path: Path) -> None:
    """`daq store -O`, `--flush-seconds` and a store TOML are checked like a source's config."""
    cases = [
        ({"assignments": parse_assignments(["rotate=1y"])}, "-O: rotate: expected a period"),
        ({"assignments": parse_assignments(["rotate_mb=-1"])}, "-O: rotate_mb: expected a number"),
        ({"flags": {"flush_seconds": -1.0}}, "command line: flush_seconds: expected a number >= 0"),
        ({"flags": {"out_dir": "a\x00b"}}, "command line: out_dir: expected a string without NUL"),
    ]
    for kwargs, expected in cases:
        with pytest.raises(ConfigError) as exc:
            build_backend("csv", **kwargs)  # type: ignore[arg-type]
        assert str(exc.value).startswith(expected), str(exc.value)
    store = write(tmp_path / "st.toml", 'daq_job_type = "DAQJobStoreCSV"\nflush_rows = -1\n')
    with pytest.raises(ConfigError, match="flush_rows: expected an integer >= 0, got -1"):
        build_backend("csv", config_file=store)


def test_a_bad_period_in_a_header_is_counted_not_a_crash_after_the_first_write(
    tmp_path: Path,
) -> None:
    """A header (not checked by a loader: forged, or from an older writer) with `rotate =
    "1y"`: its messages are counted as bad; the store goes on storing the others."""
    be, _ = build_backend("csv", flags={"out_dir": str(tmp_path)})
    runner = StoreRunner(be, name="t")
    good = Source("good", store={"csv": {"flush_rows": 1}})
    bad = Source("bad", store={"csv": {"rotate": "1y", "flush_rows": 1}})
    envs = []
    for i in range(3):
        envs += [bad.table(pa.table({"i": [i]})), good.table(pa.table({"i": [i]}))]
    result = runner.run(ListInput(envs), StopFlag())
    assert result.failed_rows == 0 and runner.bad_messages == 3
    assert pd.read_csv(tmp_path / "good.csv")["i"].tolist() == [0, 1, 2]


def test_nul_in_node_and_out_dir_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "configs"
    d.mkdir()
    write(d / "s.toml", 'daq_job_type = "sensor"\n[store_config.csv]\n')
    write(d / "supervisor.toml", 'node = "a\\u0000b"\nout_dir = "o\\u0000ut"\n')
    with pytest.raises(ConfigError) as exc:
        load_plan(d)
    assert [str(i) for i in exc.value.issues] == [
        f"{d}/supervisor.toml: node: expected a string without NUL bytes, got 'a\\x00b'",
        f"{d}/supervisor.toml: out_dir: expected a string without NUL bytes, got 'o\\x00ut'",
    ]
    (d / "supervisor.toml").unlink()
    with pytest.raises(ConfigError, match="--out-dir: expected a path without NUL bytes"):
        load_plan(d, out_dir="o\x00ut")


@pytest.mark.e2e
def test_up_check_refuses_bad_values_with_one_line_each(tmp_path: Path) -> None:
    d = tmp_path / "configs"
    d.mkdir()
    write(d / "a.toml", 'daq_job_type = "sensor"\ninterval_seconds = nan\n[store_config.csv]\n')
    write(d / "b.toml", 'daq_job_type = "digitizer"\nchannels = 1000000000\n[store_config.csv]\n')
    write(d / "c.toml", 'daq_job_type = "sensor"\n[store_config.csv]\nrotate = "1y"\n')
    write(d / "d.toml", 'daq_job_type = "sensor"\n[store_config.csv]\nrotate_mb = -1\n')
    write(d / "supervisor.toml", 'node = "a\\u0000b"\n')
    result = subprocess.run(
        [*DAQ, "up", str(d), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines() == [
        f"daq up: 5 problems in {d}; nothing started",
        f"daq: config error: {d}/supervisor.toml: node: expected a string without NUL bytes, "
        "got 'a\\x00b'",
        f"daq: config error: {d}/a.toml: interval_seconds: expected a finite number > 0 and "
        "<= 604800, got nan",
        f"daq: config error: {d}/b.toml: channels: expected an integer >= 1 and <= 256, "
        "got 1000000000",
        f"daq: config error: {d}/c.toml: store_config.csv: rotate: expected a period like 30s, "
        "15m, 1h or 1d, got '1y'",
        f"daq: config error: {d}/d.toml: store_config.csv.rotate_mb: expected a number >= 0, "
        "got -1",
    ]
