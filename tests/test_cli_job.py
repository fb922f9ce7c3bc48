"""`daq --help`, `daq job list | new | run` as a user types them, in real processes."""

from __future__ import annotations

import io
import json
import os
import select
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import Procs, write
from enrgdaq_core.envelope import Kind
from enrgdaq_core.jobs import names, resolve
from enrgdaq_core.jobs.describe import describe
from enrgdaq_core.stream import StreamReader
from enrgdaq_core.transport import BrokerAddress

HEAVY = ("pyarrow", "uproot", "h5py")

# Types whose steps produce data messages: `--count` ends them. Others (watchers such as
# `alerts`) run until a signal.
DATA_TYPES = {"sensor", "digitizer", "metrics", "test"}


def _help_probe(argvs: list[list[str]]) -> dict:
    """Run `daq ARGS --help` for every ARGS in one fresh interpreter; report output and the
    heavy modules that got imported."""
    code = f"""
import contextlib, io, json, sys
from enrgdaq_cli.main import app
out = {{}}
for argv in {argvs!r}:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            app(argv + ["--help"], prog_name="daq")
        except SystemExit as exc:
            code = exc.code
    out[" ".join(argv)] = [code, buf.getvalue()]
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))
print(json.dumps({{"out": out, "heavy": heavy}}))
"""
    p = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert p.returncode == 0, p.stderr.decode()
    return json.loads(p.stdout)


def _commands() -> list[list[str]]:
    """Every command path of the app: [[broker], [job], [job, run], ...]."""
    import typer.main

    from enrgdaq_cli.main import app

    paths: list[list[str]] = []

    def walk(cmd: object, prefix: list[str]) -> None:
        for name, sub in getattr(cmd, "commands", {}).items():
            paths.append([*prefix, name])
            walk(sub, [*prefix, name])

    walk(typer.main.get_command(app), [])
    return paths


def test_help_lists_every_subcommand_without_heavy_imports() -> None:
    paths = _commands()
    top = [p[0] for p in paths if len(p) == 1]
    assert {"broker", "job", "tap"} <= set(top)
    probe = _help_probe([[], *paths])
    assert probe["heavy"] == [], f"--help imported {probe['heavy']}"
    code, text = probe["out"][""]
    assert code == 0
    listed = text.split("Commands:")[1].splitlines()
    for name in top:
        line = next((x for x in listed if x.split()[:1] == [name]), None)
        assert line is not None, f"{name} missing from daq --help"
        assert len(line.split()) > 2, f"{name} has no description in daq --help"
    for path in paths:
        code, text = probe["out"][" ".join(path)]
        assert code == 0 and text.startswith("Usage: daq " + " ".join(path)), path


def test_job_run_help_has_examples() -> None:
    probe = _help_probe([["job", "run"]])
    text = probe["out"]["job run"][1]
    assert "Examples:" in text and "daq job run configs/examples/sensor.toml" in text
    assert "--count" in text and "--broker" in text


def test_job_list_shows_types_keys_and_defaults(procs: Procs) -> None:
    procs.env["COLUMNS"] = "200"
    p = procs.run("job", "list")
    assert p.returncode == 0, p.stderr.decode()
    text = p.stdout.decode()
    words = " ".join(text.split())  # titles wrap to the width of their table
    for name in names():
        info = describe(resolve(name))
        aliases = f" (aliases: {', '.join(info['aliases'])})" if info["aliases"] else ""
        assert f"{name}{aliases}: {info['description']}" in words
    lines = text.splitlines()
    row = next(x for x in lines if "│ channels " in x)
    assert "an integer >= 0" in row and "│ 4 " in row
    row = next(x for x in lines if "│ daq_job_type " in x)
    assert "(required)" in row
    assert "(aliases: DAQJobTest)" in text


def test_job_list_json_matches_describe(procs: Procs) -> None:
    p = procs.run("job", "list", "--json")
    assert p.returncode == 0, p.stderr.decode()
    data = json.loads(p.stdout)
    assert list(data) == names()
    assert data["digitizer"] == json.loads(json.dumps(describe(resolve("digitizer"))))


def _wait_for_stream_header(p: subprocess.Popen, timeout: float = 30) -> bytes:
    """The file header bytes once the job writes them (it has its signal handlers by then)."""
    ready, _, _ = select.select([p.stdout], [], [], timeout)
    assert ready, "the job wrote nothing"
    return p.stdout.read1(20)


def test_job_new_writes_a_config_that_runs_as_is(procs: Procs, tmp_path: Path) -> None:
    """For every job type: `daq job new TYPE -o f.toml`, then `daq job run f.toml` takes it."""
    running = {}
    for name in names():
        path = tmp_path / f"{name}.toml"
        p = procs.run("job", "new", name, "-o", str(path))
        assert p.returncode == 0, p.stderr.decode()
        assert p.stderr.decode() == f"wrote {path}\n"
        data = tomllib.loads(path.read_text())
        assert data["daq_job_type"] == name
        running[name] = procs.start(
            "job", "run", str(path), "--count", "3", "-o", "-", stdout=subprocess.PIPE
        )
    for name, p in running.items():
        head = b""
        if name not in DATA_TYPES:
            head = _wait_for_stream_header(p)
            p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, (name, err.decode())
        envs = [r.envelope for r in StreamReader(io.BytesIO(head + out))]
        assert envs[-1].kind is Kind.EOS, name
        if name in DATA_TYPES:
            assert [e.kind for e in envs] == [Kind.TABLE] * 3 + [Kind.EOS], name
            assert {e.header.source for e in envs} == {name}


def test_job_new_to_stdout_and_refusals(procs: Procs, tmp_path: Path) -> None:
    p = procs.run("job", "new", "sensor")
    assert p.returncode == 0
    text = p.stdout.decode()
    assert text.startswith("# Simulated sensor") and 'daq_job_type = "sensor"' in text
    assert "# [store_config.csv]" in text
    existing = write(tmp_path / "mine.toml", "keep me\n")
    p = procs.run("job", "new", "sensor", "-o", str(existing))
    assert p.returncode == 2
    assert p.stderr.decode() == f"daq: error: {existing} exists (use --force to overwrite)\n"
    assert existing.read_text() == "keep me\n"
    p = procs.run("job", "new", "sensor", "-o", str(existing), "--force")
    assert p.returncode == 0 and 'daq_job_type = "sensor"' in existing.read_text()
    p = procs.run("job", "new", "camera")
    assert p.returncode == 2
    assert p.stderr.decode().startswith("daq: error: unknown job type 'camera' (known: sensor, ")


def test_job_run_bad_config_exits_2_and_starts_nothing(procs: Procs, tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "bad.toml", 'daq_job_type = "sensor"\nchanels = 3\ninterval_seconds = "x"\n'
    )
    p = procs.run("job", "run", str(cfg), "-o", "-")
    assert p.returncode == 2
    assert p.stdout == b""
    assert p.stderr.decode().splitlines() == [
        f"daq: config error: {cfg}: chanels: unknown key, did you mean 'channels'? "
        "(expected one of: broker_queue_mb, channels, daq_job_type, daq_job_unique_id, drift_per_hour, "
        "interval_seconds, mean, name, noise, remote_config, restart, rows_per_step, seed, "
        "store_config, tag, verbosity)",
        f"daq: config error: {cfg}: interval_seconds: expected a number > 0 and <= 604800, got a string ('x')",
    ]


def test_job_run_without_a_broker_says_so(procs: Procs, tmp_path: Path) -> None:
    cfg = write(tmp_path / "s.toml", 'daq_job_type = "sensor"\n')
    p = procs.run("job", "run", str(cfg), "-o", "broker", "--wait", "0.3")
    assert p.returncode == 1
    inbound = f"ipc://{procs.env['DAQ_RUNTIME_DIR']}/broker.in"
    assert p.stderr.decode().splitlines()[-1] == (
        f"daq: error: no broker at {inbound} after 0.3 s (start one with `daq broker` or `daq up`)"
    )


def test_job_run_into_a_log_file_publishes_and_dash_still_writes_the_stream(
    procs: Procs, broker: BrokerAddress, tmp_path: Path
) -> None:
    """`daq job run f.toml > job.log` is a log, not a pipe: the job publishes to the broker
    (the log gets no binary); `-o - > file` still writes the stream there, as asked."""
    from enrgdaq_core.broker_client import wait_for_subscriptions
    from enrgdaq_core.channels import BrokerInput

    cfg = write(
        tmp_path / "s.toml", 'daq_job_type = "sensor"\nname = "s1"\ninterval_seconds = 0.0001\n'
    )
    inp = BrokerInput(broker, ["data.s1"])
    try:
        assert wait_for_subscriptions(broker, ["data.s1"], timeout=20)
        log = tmp_path / "job.log"
        with log.open("wb") as f:
            job = procs.start(
                "job", "run", str(cfg), "--broker", broker.base, "--count", "3", stdout=f
            )
            assert job.wait(60) == 0, job.stderr.read().decode()
        assert log.read_bytes() == b""
        kinds = []
        while not kinds or kinds[-1] is not Kind.EOS:
            env = inp.recv(20)
            assert env is not None, kinds
            kinds.append(env.kind)
        assert kinds == [Kind.TABLE] * 3 + [Kind.EOS]
    finally:
        inp.close()
    raw = tmp_path / "run.stream"
    with raw.open("wb") as f:
        job = procs.start("job", "run", str(cfg), "-o", "-", "--count", "2", stdout=f)
        assert job.wait(60) == 0, job.stderr.read().decode()
    with raw.open("rb") as f:
        assert [r.envelope.kind for r in StreamReader(f)] == [Kind.TABLE] * 2 + [Kind.EOS]


def test_job_run_to_a_file_and_name_and_run_flags(procs: Procs, tmp_path: Path) -> None:
    cfg = write(tmp_path / "s.toml", 'daq_job_type = "test"\ninterval_seconds = 0.0001\n')
    out = tmp_path / "run.raw"
    p = procs.run(
        "job", "run", str(cfg), "--count", "4", "-o", str(out), "--name", "probe", "--run", "42"
    )
    assert p.returncode == 0, p.stderr.decode()
    with out.open("rb") as f:
        reader = StreamReader(f)
        envs = [r.envelope for r in reader]
    assert reader.meta.run == 42 and reader.meta.meta["source"] == "probe"
    assert [e.header.seq for e in envs] == [0, 1, 2, 3, 4]
    assert {(e.topic, e.header.source, e.header.run) for e in envs} == {("data.probe", "probe", 42)}
    # a second run never truncates the first one's file
    before = out.read_bytes()
    p = procs.run("job", "run", str(cfg), "--count", "4", "-o", str(out))
    assert p.returncode == 2
    assert p.stderr.decode().splitlines()[-1] == (
        f"daq: error: {out} exists: choose a new file (run files are never overwritten)"
    )
    assert out.read_bytes() == before


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_sends_eos_and_exits_0(procs: Procs, tmp_path: Path, sig: int) -> None:
    cfg = write(tmp_path / "s.toml", 'daq_job_type = "sensor"\ninterval_seconds = 0.01\n')
    p = procs.start("job", "run", str(cfg), "-o", "-", stdout=subprocess.PIPE)
    reader = StreamReader(p.stdout)
    first = [next(reader).envelope for _ in range(3)]  # running and producing
    p.send_signal(sig)
    rest = [r.envelope for r in reader]
    assert p.wait(30) == 0
    envs = first + rest
    assert envs[-1].kind is Kind.EOS
    assert all(e.kind is Kind.TABLE for e in envs[:-1])
    assert [e.header.seq for e in envs] == list(range(len(envs)))
    assert b"Traceback" not in p.stderr.read()
