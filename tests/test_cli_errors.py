"""How `daq` commands end, as real processes: a closed pipe is no error (exit 0, nothing
printed), every error is one line without a traceback, and --debug / DAQ_DEBUG=1 shows it."""

from __future__ import annotations

import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest

from _store_data import envelopes, sample_table, source, write_stream
from _supervision import Up, config_dir
from conftest import Procs, wait_for, write
from enrgdaq_core.transport import BrokerAddress

pytestmark = pytest.mark.e2e

SENSOR = 'daq_job_type = "sensor"\nname = "sensor1"\ninterval_seconds = 0.01\nchannels = 3\n'

# A lab's job type whose device is not there (docs/extending.md's pattern).
LAB_JOB = """
from enrgdaq_core.jobs.base import Job, JobConfig


class DevConfig(JobConfig, kw_only=True, forbid_unknown_fields=True):
    port: str = "/dev/ttyNOPE0"


class DevJob(Job):
    Config = DevConfig

    def start(self):
        self.f = open(self.config.port, "rb")

    def step(self):
        return self.f.read(16)


class BuggyJob(Job):
    def step(self):
        return 1 / 0
"""


def _into_head(procs: Procs, *args: str) -> subprocess.CompletedProcess:
    """`daq ARGS | head -c 100` with a real head: the reader leaves while daq still writes."""
    daq = procs.start(*args, stdout=subprocess.PIPE)
    head = subprocess.run(["head", "-c", "100"], stdin=daq.stdout, capture_output=True, timeout=60)
    daq.stdout.close()
    assert len(head.stdout) == 100
    code = daq.wait(60)
    return subprocess.CompletedProcess(daq.args, code, b"", daq.stderr.read())


def _quiet(p: subprocess.CompletedProcess) -> None:
    err = p.stderr.decode()
    assert p.returncode == 0, err
    assert "Broken pipe" not in err and "Traceback" not in err and "error" not in err, err


def test_replay_into_head_ends_quietly(procs: Procs, tmp_path: Path) -> None:
    src = source("src1", "raw", file_path="run.raw")
    tables = [sample_table(i * 100, 100) for i in range(200)]
    stream = write_stream(tmp_path / "in.daq", envelopes(src, tables))
    assert procs.run("store", "raw", "-i", str(stream)).returncode == 0
    _quiet(_into_head(procs, "replay", str(tmp_path / "run.raw")))


def test_job_into_head_ends_quietly(procs: Procs, tmp_path: Path) -> None:
    cfg = write(tmp_path / "sensor.toml", SENSOR)
    _quiet(_into_head(procs, "job", "run", str(cfg), "-o", "-"))


def test_tap_into_head_ends_quietly(procs: Procs, broker: BrokerAddress, tmp_path: Path) -> None:
    cfg = write(tmp_path / "sensor.toml", SENSOR)
    job = procs.start("job", "run", str(cfg), "-o", "broker", "--broker", broker.base)
    _quiet(_into_head(procs, "tap", "data.sensor1", "--broker", broker.base))
    assert procs.stop(job) == 0


def test_text_output_into_a_closed_pipe_ends_quietly(procs: Procs) -> None:
    """What print() buffers is flushed at exit: a reader already gone must not show there."""
    p = procs.start("job", "list", "--json", stdout=subprocess.PIPE)
    p.stdout.close()  # before daq has even started writing
    code = p.wait(60)
    _quiet(subprocess.CompletedProcess(p.args, code, b"", p.stderr.read()))


def _one_line(p: subprocess.CompletedProcess) -> str:
    err = p.stderr.decode()
    assert p.returncode != 0
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_missing_input_file_is_one_line(procs: Procs) -> None:
    p = procs.run("store", "csv", "-i", "nope.raw")
    assert _one_line(p) == "daq: error: nope.raw: No such file or directory"
    assert p.returncode == 1


@pytest.fixture
def lab(procs: Procs, tmp_path: Path) -> Path:
    """A lab package on the path of the processes the test starts."""
    (tmp_path / "lab").mkdir()
    write(tmp_path / "lab" / "__init__.py", "")
    write(tmp_path / "lab" / "dev.py", LAB_JOB)
    write(tmp_path / "lab" / "broken.py", "import pyvisa_not_installed_here\n")
    procs.env["PYTHONPATH"] = f"{tmp_path}:{procs.env.get('PYTHONPATH', '')}"
    return tmp_path


def test_custom_job_whose_device_is_missing_is_one_line(procs: Procs, lab: Path) -> None:
    cfg = write(lab / "dev.toml", 'daq_job_type = "lab.dev:DevJob"\n')
    line = _one_line(procs.run("job", "run", str(cfg), "-o", str(lab / "out.raw")))
    assert line.startswith("daq: error: /dev/ttyNOPE0: No such file or directory")
    assert line.endswith("(at lab/dev.py:13 in start)")  # where the lab's code raised it


def test_custom_job_whose_module_is_missing_is_one_line(procs: Procs, lab: Path) -> None:
    cfg = write(lab / "broken.toml", 'daq_job_type = "lab.broken:Job"\n')
    line = _one_line(procs.run("job", "run", str(cfg), "-o", "-"))
    assert "broken.toml" in line and "No module named 'pyvisa_not_installed_here'" in line


def test_a_bug_is_one_line_and_debug_shows_the_traceback(procs: Procs, lab: Path) -> None:
    cfg = write(lab / "buggy.toml", 'daq_job_type = "lab.dev:BuggyJob"\n')
    line = _one_line(procs.run("job", "run", str(cfg), "-o", str(lab / "a.raw")))
    assert line == (
        "daq: error: ZeroDivisionError: division by zero (at lab/dev.py:21 in step); "
        "daq --debug (or DAQ_DEBUG=1) shows the traceback"
    )
    for args, env in (
        (["--debug", "job", "run"], {}),
        (["job", "run"], {"DAQ_DEBUG": "1"}),
    ):
        out = lab / f"debug{len(env)}.raw"
        procs.env.update(env)
        p = procs.run(*args, str(cfg), "-o", str(out))
        err = p.stderr.decode()
        assert p.returncode == 1
        assert "Traceback (most recent call last)" in err and "return 1 / 0" in err, err
        assert "ZeroDivisionError: division by zero" in err


@pytest.mark.parametrize("debug", [False, True])
def test_daq_up_children_log_one_line_or_with_debug_the_traceback(
    procs: Procs, lab: Path, runtime_dir: Path, debug: bool
) -> None:
    job = 'daq_job_type = "lab.dev:BuggyJob"\nname = "buggy"\nrestart = "never"\n'
    u = Up(procs, config_dir(lab, {"buggy.toml": job}), runtime_dir, debug=debug)
    log = u.out / "logs" / "buggy.log"
    try:
        text = wait_for(
            lambda: log.exists() and "ZeroDivisionError" in log.read_text() and log.read_text(),
            60,
            what="the job's error in its log",
        )
        assert u.stop() == 0
    finally:
        u.finish()
    assert ("Traceback (most recent call last)" in text) is debug, text
    if not debug:
        assert "daq: error: ZeroDivisionError: division by zero (at lab/dev.py:21 in step)" in text


def test_daq_up_on_the_parent_of_the_examples_says_where_they_are(procs: Procs) -> None:
    root = Path(__file__).resolve().parent.parent
    p = procs.run("up", "configs/", "--check", cwd=root)
    assert p.returncode == 2
    assert p.stderr.decode().splitlines()[-1] == (
        "daq: config error: configs: no source job configs (*.toml with daq_job_type) in this "
        "directory; did you mean configs/examples?"
    )


def test_version_from_the_package_metadata(procs: Procs) -> None:
    p = procs.run("--version")
    assert p.returncode == 0, p.stderr.decode()
    assert p.stdout.decode() == f"daq (enrgdaq) {version('enrgdaq')}\n"
