"""Shared fixtures: real `daq` processes in a private runtime dir, always cleaned up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from enrgdaq_core.transport import BrokerAddress

DAQ = [sys.executable, "-m", "enrgdaq_cli.main"]


class Procs:
    """Starts `daq` processes for one test and makes sure none outlives it."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env = env
        self.cwd = cwd
        self.started: list[subprocess.Popen] = []

    def start(self, *args: str, stdin=None, stdout=None, stderr=None, **kw) -> subprocess.Popen:
        p = subprocess.Popen(
            [*DAQ, *args],
            env=self.env,
            cwd=kw.pop("cwd", self.cwd),
            stdin=stdin,
            stdout=stdout if stdout is not None else subprocess.DEVNULL,
            stderr=stderr if stderr is not None else subprocess.PIPE,
            start_new_session=True,
            **kw,
        )
        self.started.append(p)
        return p

    def run(self, *args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*DAQ, *args],
            env=self.env,
            cwd=kw.pop("cwd", self.cwd),
            capture_output=True,
            timeout=timeout,
            **kw,
        )

    def stop(self, p: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if p.poll() is None:
            p.send_signal(sig)
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)
            raise

    def cleanup(self) -> None:
        for p in reversed(self.started):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(5)
            for stream in (p.stdout, p.stderr, p.stdin):
                if stream is not None:
                    stream.close()


@pytest.fixture
def runtime_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # ipc paths are limited to ~107 bytes: keep the directory short
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="daqt-", dir="/tmp"))
    yield d
    import shutil

    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def daq_env(runtime_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment for processes and for in-test clients: a private broker address."""
    env = dict(os.environ)
    env["DAQ_RUNTIME_DIR"] = str(runtime_dir)
    env.pop("DAQ_BROKER", None)
    env["PYTHONUNBUFFERED"] = "1"
    monkeypatch.setenv("DAQ_RUNTIME_DIR", str(runtime_dir))
    monkeypatch.delenv("DAQ_BROKER", raising=False)
    return env


@pytest.fixture
def procs(daq_env: dict[str, str], tmp_path: Path) -> Iterator[Procs]:
    p = Procs(daq_env, tmp_path)
    yield p
    p.cleanup()


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def start_broker(procs: Procs, base: str, *args: str) -> tuple[BrokerAddress, subprocess.Popen]:
    """Start a real `daq broker` on `base` (extra flags in `args`) and wait until it answers."""
    from enrgdaq_core.broker_client import query

    addr = BrokerAddress.parse(base)
    p = procs.start("broker", "--broker", addr.base, *args)

    def up() -> bool:
        if p.poll() is not None:
            raise AssertionError(f"broker exited: {p.stderr.read().decode()}")
        try:
            query(addr, timeout=0.5)
            return True
        except TimeoutError:
            return False

    wait_for(up, 15, what="broker control endpoint")
    return addr, p


@pytest.fixture
def broker(procs: Procs, runtime_dir: Path) -> Iterator[BrokerAddress]:
    """A real `daq broker` process on ipc sockets in the test's runtime dir."""
    addr, p = start_broker(procs, f"ipc://{runtime_dir}/broker")
    yield addr
    procs.stop(p)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
