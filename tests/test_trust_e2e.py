"""Trust boundaries of a live `daq up`: hostile control requests, a hostile working directory.

A control request of any shape gets one error line and changes nothing (the supervisor and its
children keep running and storing); modules lying in the working directory of `daq up` are
never imported by its children. docs/security.md says what is trusted and what is not.
"""

from __future__ import annotations

import math
import os
import signal
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq

import conftest
from _supervision import SENSOR_CSV_JOB, Up, config_dir
from conftest import Procs

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SENSOR = SENSOR_CSV_JOB

_ENC = msgspec.msgpack.encode
_NESTED = b"\x91" * 50_000 + b"\x01"

# (what the request is, its frames): every one must get an error reply and change nothing
HOSTILE: list[tuple[str, list[bytes]]] = [
    ("not msgpack", [b"\xc1\xc1 garbage"]),
    ("empty frame", [b""]),
    ("two frames", [_ENC({"cmd": "status"}), b"more"]),
    ("an empty second frame", [_ENC({"cmd": "status"}), b""]),
    ("three empty frames", [b"", b"", b""]),
    ("trailing bytes", [_ENC({"cmd": "status"}) + b"\x00"]),
    ("a list", [_ENC(["status"])]),
    ("an int", [_ENC(7)]),
    ("a non-text key", [_ENC({1: "status"})]),
    ("nested too deep", [b"\x82\xa1x" + _NESTED + _ENC("cmd") + _ENC("status")]),
    ("no cmd", [_ENC({"job": "sensor1"})]),
    ("unknown cmd", [_ENC({"cmd": "shutdown"})]),
    ("cmd not text", [_ENC({"cmd": 1})]),
    ("status with an extra field", [_ENC({"cmd": "status", "x": 1})]),
    ("logs lines a list", [_ENC({"cmd": "logs", "job": "sensor1", "lines": [1]})]),
    ("logs lines negative", [_ENC({"cmd": "logs", "job": "sensor1", "lines": -1})]),
    ("logs lines huge", [_ENC({"cmd": "logs", "job": "sensor1", "lines": 2**64 - 1})]),
    ("logs offset inf", [_ENC({"cmd": "logs", "job": "sensor1", "offset": math.inf})]),
    ("logs offset nan", [_ENC({"cmd": "logs", "job": "sensor1", "offset": math.nan})]),
    ("logs offset -1", [_ENC({"cmd": "logs", "job": "sensor1", "offset": -1})]),
    ("logs offset huge", [_ENC({"cmd": "logs", "job": "sensor1", "offset": 2**64 - 1})]),
    ("logs offset text", [_ENC({"cmd": "logs", "job": "sensor1", "offset": "0"})]),
    ("logs without job", [_ENC({"cmd": "logs"})]),
    ("restart job a list", [_ENC({"cmd": "restart", "job": ["sensor1"]})]),
    ("restart job empty", [_ENC({"cmd": "restart", "job": ""})]),
    ("restart job huge", [_ENC({"cmd": "restart", "job": "s" * 10_000})]),
    ("restart job bytes", [_ENC({"cmd": "restart", "job": b"sensor1"})]),
    ("stop job null", [_ENC({"cmd": "stop", "job": None})]),
    ("stop with an extra field", [_ENC({"cmd": "stop", "job": "sensor1", "force": True})]),
    ("start job int", [_ENC({"cmd": "start", "job": 1})]),
    ("run action unknown", [_ENC({"cmd": "run", "action": "rewind"})]),
    ("run action not text", [_ENC({"cmd": "run", "action": 1.5})]),
    ("ping with a field", [_ENC({"cmd": "ping", "pong": 1})]),
    ("a field name of 50 KB with escapes", [_ENC({"cmd": "status", "\n\x1b[2J" * 10_000: 1})]),
]


def _ask_raw(endpoint: str, frames: list[bytes], timeout_ms: int = 10_000) -> list[bytes]:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.linger = 0
    try:
        sock.connect(endpoint)
        sock.send_multipart(frames)
        if not sock.poll(timeout_ms):
            raise AssertionError(f"no reply to {frames[:1]!r}...")
        return sock.recv_multipart()
    finally:
        sock.close()


def _pids(u: Up) -> dict[str, int]:
    st = u.status()
    assert st is not None and st["phase"] == "running"
    return {p["name"]: p["pid"] for p in st["pieces"]}


def test_hostile_control_requests_leave_daq_up_running_and_storing(
    procs: Procs, runtime_dir: Path, tmp_path: Path
) -> None:
    d = config_dir(tmp_path, {"sensor.toml": SENSOR})
    u = Up(procs, d, runtime_dir)
    try:
        u.wait_flowing()
        before = _pids(u)
        rows = u.piece("store-csv")["report"]["rows_out"]
        errors: dict[str, str] = {}
        for what, frames in HOSTILE:
            assert u.p.poll() is None, f"daq up died after {what!r}:\n{u.output()[-3000:]}"
            reply = _ask_raw(u.control, frames)
            assert len(reply) == 1, what
            answer: Any = msgspec.msgpack.decode(reply[0])
            assert isinstance(answer, dict) and set(answer) == {"error"}, (what, answer)
            errors[what] = answer["error"]
        for what, error in errors.items():  # one line each, saying what was wrong
            assert isinstance(error, str) and error and error.isprintable(), (what, error)
            assert "Traceback" not in error and len(error) <= 300, (what, error)
        assert errors["logs lines a list"] == (
            "bad logs request: lines: expected `int`, got `array`"
        )
        assert errors["logs offset inf"] == (
            "bad logs request: offset: expected `int | null`, got `float`"
        )
        assert errors["logs lines negative"] == "bad logs request: lines: expected `int` >= 0"
        assert errors["unknown cmd"].startswith("unknown command 'shutdown' (known: status, ")
        assert errors["two frames"] == "bad request: one msgpack frame expected, got 2 frames"
        assert errors["run action unknown"].startswith("bad run request: action: ")

        # nothing changed: the same processes, still running, still storing, still answering
        assert u.p.poll() is None
        assert _pids(u) == before
        assert all(p["restarts"] == 0 for p in u.status()["pieces"])  # type: ignore[index]
        u.wait(
            lambda x: x["store-csv"]["report"]["rows_out"] > rows + 10,
            60,
            "the store to keep storing",
        )
        assert u.ask("logs", job="sensor1", lines=5)["ok"] is True
        assert "Traceback" not in u.output()
        assert u.stop(signal.SIGTERM) == 0
    finally:
        u.finish()


def test_hostile_requests_to_the_broker_leave_it_answering(procs: Procs, runtime_dir: Path) -> None:
    """The broker's control endpoint is a `reqrep.Server` too: the same battery, the same
    outcome (an error line each, and it still answers `daq stats` and the supervisor)."""
    from enrgdaq_core.broker_client import query

    addr, p = conftest.start_broker(procs, f"ipc://{runtime_dir}/broker")
    battery = [*HOSTILE, ("status with a job", [_ENC({"cmd": "counters", "job": "x"})])]
    for what, frames in battery:
        reply = _ask_raw(addr.control, frames)
        answer: Any = msgspec.msgpack.decode(reply[0])
        assert len(reply) == 1 and set(answer) == {"error"}, (what, answer)
        assert answer["error"].isprintable(), (what, answer)
    assert p.poll() is None
    assert "subscriptions" in query(addr, "subscriptions", timeout=5)
    assert procs.stop(p) == 0


SHADOWS = ("typer", "zmq", "msgspec", "enrgdaq_core", "enrgdaq_cli")


def test_children_do_not_import_modules_from_the_working_directory(
    procs: Procs, runtime_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `typer.py` (and friends) in daq up's working directory would run in every child
    started with `python -m`; children run isolated (`-P`), so none is imported."""
    marks = tmp_path / "imported"
    marks.mkdir()
    for name in SHADOWS:
        (procs.cwd / f"{name}.py").write_text(
            "import os\n"
            f"open(os.path.join({str(marks)!r}, '{name}-' + str(os.getpid())), 'w').close()\n"
            f"raise SystemExit('the {name}.py of the working directory was imported')\n"
        )
    # `daq up` itself is started as an installed `daq` would be: not from the working dir
    monkeypatch.setattr(conftest, "DAQ", [sys.executable, "-P", "-m", "enrgdaq_cli.main"])
    d = config_dir(tmp_path, {"sensor.toml": SENSOR})
    u = Up(procs, d, runtime_dir)
    try:
        u.wait_flowing()
        assert u.p.poll() is None
        assert sorted(p.name for p in marks.iterdir()) == []
        assert u.stop(signal.SIGTERM) == 0
    finally:
        u.finish()
    assert sorted(p.name for p in marks.iterdir()) == []


EVIL_JOB = """
import os

open(os.environ["EVIL_MARK"], "a").write("imported\\n")

from enrgdaq_core.jobs.base import Job, JobConfig


class EvilConfig(JobConfig, kw_only=True, forbid_unknown_fields=True):
    gain: float = 1.0


class EvilJob(Job):
    Config = EvilConfig

    def step(self):
        return None
"""


def test_check_does_not_import_a_custom_job_module_unless_asked(
    procs: Procs, tmp_path: Path
) -> None:
    """`daq up --check` on a directory someone sent you runs none of its code: a custom job
    type (`module:Class`) is not imported, only the keys every job has are checked; with
    `--import-jobs` it is imported and its own keys are checked too."""
    lab = tmp_path / "lab"
    lab.mkdir()
    (lab / "evil_job.py").write_text(EVIL_JOB)
    mark = tmp_path / "imported.txt"
    procs.env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(lab), procs.env.get("PYTHONPATH", "")) if p
    )
    procs.env["EVIL_MARK"] = str(mark)
    job = 'daq_job_type = "evil_job:EvilJob"\nname = "evil"\ninterval_seconds = 0.5\n'
    d = config_dir(
        tmp_path, {"evil.toml": job + 'gian = 2.0\n[store_config.csv]\nfile_path = "e.csv"\n'}
    )

    p = procs.run("up", str(d), "--check")
    assert p.returncode == 0, p.stderr.decode()
    out = p.stdout.decode()
    assert "job    evil: job run " in out and "store  store-csv: store csv " in out
    assert (
        f"warning: {d / 'evil.toml'}: job type 'evil_job:EvilJob' not imported, so only the "
        "keys every job has were checked (--import-jobs imports it, running its code)"
    ) in out
    assert not mark.exists()

    # the keys every job has are still checked, without importing
    (d / "evil.toml").write_text(job.replace("0.5", '"fast"'))
    p = procs.run("up", str(d), "--check")
    assert p.returncode == 2 and not mark.exists()
    assert "interval_seconds" in p.stderr.decode() and "Traceback" not in p.stderr.decode()

    # asked to: imported, and its own keys are checked (the misspelt `gian` is an error)
    (d / "evil.toml").write_text(job + "gian = 2.0\n")
    p = procs.run("up", str(d), "--check", "--import-jobs")
    assert mark.read_text() == "imported\n"
    assert p.returncode == 2 and "gian" in p.stderr.decode(), p.stderr.decode()
    (d / "evil.toml").write_text(job + "gain = 2.0\n")
    p = procs.run("up", str(d), "--check", "--import-jobs")
    assert p.returncode == 0, p.stderr.decode()
    assert "not imported" not in p.stdout.decode()
