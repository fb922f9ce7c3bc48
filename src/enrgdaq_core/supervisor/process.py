"""The one child-process runner: start a `daq` command, log its output, restart it with backoff.

A child runs in its own session (a Ctrl-C on the terminal reaches the supervisor only, which
then stops everything in order) with DAQ_PARENT_PID set: if the supervisor is killed -9, each
child notices (PR_SET_PDEATHSIG, or its parent pid changing) and stops cleanly by itself, in
the supervisor's order (enrgdaq_core.signals), writing its last lines to its log file
itself (DAQ_LOG_FILE).

Its stdout and stderr are read line by line into `<log_dir>/<name>.log` and handed to a
console sink (`name`, `line`), which prints them prefixed or feeds a live view.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO, Literal

from enrgdaq_core import timefmt
from enrgdaq_core.backoff import Backoff
from enrgdaq_core.supervisor.plan import ChildSpec, RestartSettings

log = logging.getLogger("enrgdaq.supervisor")

LineSink = Callable[[str, str], None]
State = Literal["new", "running", "stopping", "backoff", "stopped", "exited", "failed"]


def describe_exit(code: int) -> str:
    """`exit 3`, `killed by SIGKILL`: how people talk about a process ending."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"


class _LogFile:
    """A child's log file, shared by its successive processes; rotated by size."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f: IO[bytes] | None = None

    def write(self, line: bytes) -> None:
        with self.lock:
            if self._f is None:
                self._f = open(self.path, "ab")  # noqa: SIM115 - closed in close()
            self._f.write(line)
            self._f.flush()
            if self.max_bytes and self._f.tell() >= self.max_bytes:
                self._f.close()
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
                self._f = None

    def close(self) -> None:
        with self.lock:
            if self._f is not None:
                self._f.close()
                self._f = None


class Child:
    """One supervised piece: its current process (if any), its restart bookkeeping."""

    def __init__(
        self,
        spec: ChildSpec,
        *,
        log_dir: Path,
        restart: RestartSettings,
        console: LineSink | None = None,
        log_max_bytes: int = 50_000_000,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.console = console
        self.settings = restart
        self.log = _LogFile(log_dir / f"{spec.name}.log", log_max_bytes)
        self.backoff = Backoff(
            restart.initial_delay, restart.max_delay, reset_after=restart.reset_after
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.state: State = "new"
        self.wanted = False  # should be running (False after `ctl stop`, at shutdown)
        self.starts = 0
        self.restarts = 0
        self.reasons: Counter[str] = Counter()
        self.last_restart_ns = 0
        self.last_exit = ""
        self.started_at = 0.0  # monotonic time of the current process's start
        self.started_ns = 0
        self.stop_sent_at = 0.0
        self.restart_at = 0.0
        self.pending_reason = ""  # why the next start is a restart
        self.kill_reason = ""  # set when we end the process on purpose (hung, requested)
        self._reader: threading.Thread | None = None

    # -- process control -------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def uptime(self, now: float | None = None) -> float:
        if not self.alive:
            return 0.0
        return (time.monotonic() if now is None else now) - self.started_at

    def spawn(self, argv: list[str], env: dict[str, str]) -> None:
        """Start the process now (from the supervisor's main thread: see PR_SET_PDEATHSIG)."""
        reason = self.pending_reason
        if self.starts and reason:
            self.restarts += 1
            self.reasons[reason] += 1
            self.last_restart_ns = time.time_ns()
        env = dict(env)
        env["DAQ_PARENT_PID"] = str(os.getpid())
        env["DAQ_LOG_FILE"] = str(self.log.path.resolve())  # where it logs if we die
        env["DAQ_RESTARTS"] = str(self.restarts)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.starts += 1
        self.state = "running"
        self.wanted = True
        self.started_at = time.monotonic()
        self.started_ns = time.time_ns()
        self.stop_sent_at = 0.0
        self.kill_reason = ""
        self.pending_reason = ""
        stamp = timefmt.stamp()
        why = f" (restart {self.restarts}: {reason})" if reason and self.restarts else ""
        self.log.write(f"--- {stamp} daq up: started pid {self.proc.pid}{why}\n".encode())
        log.info("%s: started pid %d%s", self.name, self.proc.pid, why)
        self._reader = threading.Thread(
            target=self._pump, args=(self.proc,), name=f"log-{self.name}", daemon=True
        )
        self._reader.start()

    def _pump(self, proc: subprocess.Popen[bytes]) -> None:
        stream = proc.stdout
        assert stream is not None
        with contextlib.suppress(OSError, ValueError):
            for raw in iter(stream.readline, b""):
                self.log.write(raw if raw.endswith(b"\n") else raw + b"\n")
                if self.console is not None:
                    self.console(self.name, raw.decode(errors="replace").rstrip("\r\n"))
        with contextlib.suppress(OSError):
            stream.close()

    def send(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def terminate(self, reason: str = "") -> None:
        """Ask the process to stop (SIGTERM: sources send end-of-stream, stores flush)."""
        if self.alive:
            self.kill_reason = self.kill_reason or reason
            self.send(signal.SIGCONT)  # a stopped (SIGSTOP) process cannot act on SIGTERM
            self.send(signal.SIGTERM)
            self.state = "stopping"
            self.stop_sent_at = time.monotonic()

    def kill(self, reason: str = "") -> None:
        if self.alive:
            self.kill_reason = self.kill_reason or reason
            self.send(signal.SIGKILL)
            self.state = "stopping"
            if not self.stop_sent_at:
                self.stop_sent_at = time.monotonic()

    def reap(self) -> int | None:
        """The exit code if the process ended since the last call, else None."""
        if self.proc is None:
            return None
        code = self.proc.poll()
        if code is None:
            return None
        if self._reader is not None:
            self._reader.join(timeout=1.0)
        self.proc = None
        self.last_exit = describe_exit(code)
        self.log.write(f"--- {timefmt.stamp()} daq up: {self.last_exit}\n".encode())
        return code

    # -- policy ----------------------------------------------------------------------------

    def wants_restart(self, code: int) -> bool:
        """Per the child's restart policy; a stop we asked for is never restarted here."""
        if not self.wanted:
            return False
        if self.kill_reason:  # hung, requested: we ended it to start it again
            return True
        policy = self.spec.restart
        if policy == "always":
            return True
        if policy == "on-failure":
            return code != 0
        return False

    def schedule_restart(self, reason: str, now: float | None = None) -> float:
        """Restart after the backoff delay; returns the delay."""
        now = time.monotonic() if now is None else now
        ran_for = now - self.started_at if self.started_at else 0.0
        delay = self.backoff.next_delay(ran_for)
        self.restart_at = now + delay
        self.pending_reason = reason
        self.state = "backoff"
        return delay

    def close(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=1.0)
        self.log.close()
