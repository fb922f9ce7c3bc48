"""The answers of a running `daq up` to `daq ctl`: one handler per control command.

Apart from the supervisor's lifecycle loop, which only serves them: `Supervisor.run` binds a
`ControlServer` with `SupervisorCommands(self).handlers`. A handler gets its request already
validated against the command's schema (control.py), so it never sees a wrong type or a
number out of range. It answers with a reply dict,
or with None when the answer comes later (`run next`: the loop polls `Supervisor._deferred`
and sends the reply once the sources have stopped and the next run started).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from enrgdaq_core.config import ConfigError
from enrgdaq_core.reqrep import Handler, Request
from enrgdaq_core.supervisor.control import (
    LogsRequest,
    PingRequest,
    RestartRequest,
    RunRequest,
    StartRequest,
    StatusRequest,
    StopRequest,
)
from enrgdaq_core.supervisor.process import Child

if TYPE_CHECKING:
    from enrgdaq_core.supervisor.supervisor import Supervisor

__all__ = ["EXPECTED_ERRORS", "LOG_TAIL_BYTES", "SupervisorCommands", "read_log"]

log = logging.getLogger("enrgdaq.supervisor")

LOG_TAIL_BYTES = 64 * 1024
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ConfigError, OSError, ValueError, KeyError)
"""Exceptions of a handler that are refusals (answered as an error, not logged as a bug)."""

Reply = dict[str, Any]


class SupervisorCommands:
    """The control commands of one supervisor (ping, status, run, restart, stop, start, logs)."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    @property
    def handlers(self) -> dict[type[Request], Handler]:
        return {
            PingRequest: self.ping,
            StatusRequest: self.status,
            RunRequest: self.run,
            RestartRequest: self.restart,
            StopRequest: self.stop,
            StartRequest: self.start,
            LogsRequest: self.logs,
        }

    # -- lookups shared by the piece commands ------------------------------------------------

    def _piece(self, name: str) -> Child | Reply:
        child = self.sup.children.get(name)
        if child is None:
            known = ", ".join(self.sup.children)
            return {"error": f"no piece named {name!r} (known: {known})"}
        return child

    def _running_piece(self, name: str) -> Child | Reply:
        """The piece to act on, or the refusal: unknown piece, or not while starting/stopping."""
        child = self._piece(name)
        if isinstance(child, Child) and self.sup.phase != "running":
            return {"error": f"the supervisor is {self.sup.phase}; try again when it runs"}
        return child

    # -- the commands ------------------------------------------------------------------------

    def ping(self, req: PingRequest) -> Reply:
        return {"ok": True}

    def status(self, req: StatusRequest) -> Reply:
        return self.sup.status()

    def restart(self, req: RestartRequest) -> Reply:
        child = self._running_piece(req.job)
        if not isinstance(child, Child):
            return child
        if child.alive:
            child.terminate("requested")
            return {"ok": True, "message": f"restarting {child.name} (pid {child.pid})"}
        child.pending_reason = "requested" if child.starts else ""
        self.sup._start(child)
        return {"ok": True, "message": f"started {child.name} (pid {child.pid})"}

    def stop(self, req: StopRequest) -> Reply:
        child = self._running_piece(req.job)
        if not isinstance(child, Child):
            return child
        child.wanted = False
        if not child.alive:
            child.state = "stopped"
            return {"ok": True, "message": f"{child.name} is not running"}
        child.terminate("stopped")
        return {"ok": True, "message": f"stopping {child.name} (pid {child.pid})"}

    def start(self, req: StartRequest) -> Reply:
        child = self._running_piece(req.job)
        if not isinstance(child, Child):
            return child
        if child.alive:
            return {"error": f"{child.name} is already running (pid {child.pid})"}
        child.pending_reason = ""
        self.sup._start(child)
        return {"ok": True, "message": f"started {child.name} (pid {child.pid})"}

    def logs(self, req: LogsRequest) -> Reply:
        child = self._piece(req.job)
        if not isinstance(child, Child):
            return child
        return read_log(child, req.offset, req.lines)

    def run(self, req: RunRequest) -> Reply | None:
        """`run show`, or `run next`: stop the sources, close the run, start the next one."""
        sup = self.sup
        if req.action == "show":
            return {"ok": True, "run": sup.status()["run"], "runs": sup.runbook.records()}
        if sup.phase != "running":
            return {"error": f"the supervisor is {sup.phase}; try again when it runs"}
        old = sup.record
        running = [c for c in sup.sources if c.wanted]
        for child in running:
            child.wanted = False
            child.terminate("run")
        deadline = time.monotonic() + sup.plan.config.shutdown_timeout
        log.info("run %d: stopping sources for the next run", sup.run_number)

        def finish() -> Reply | None:
            if any(c.alive for c in running):
                if time.monotonic() < deadline:
                    return None
                for c in running:
                    c.kill("run")
                return None
            if old is not None:
                sup.runbook.end(old)
                log.info("run %d stopped", old.run)
            sup.run_number = sup.runbook.next_number()
            sup.record = None
            sup._snapshot()
            for c in running:
                c.pending_reason = ""
                sup._start(c)
            if sup.record is None:  # no source to start: record the run anyway
                sup._begin_run()
            return {
                "ok": True,
                "message": f"run {old.run if old else 0} closed, run {sup.run_number} started",
                "run": sup.record.to_dict(),
            }

        sup._deferred = finish
        return None


def read_log(child: Child, offset: int | None, lines: int) -> Reply:
    """The last `lines` lines of a piece's log (offset None), or what follows `offset`.

    Only whole lines are handed out after an offset, at most LOG_TAIL_BYTES per answer; an
    offset beyond the end means the log was rotated, so the new file is read from its start.
    """
    path = child.log.path
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return {"ok": True, "path": str(path), "offset": 0, "text": ""}
    with open(path, "rb") as f:
        if offset is None:
            start = max(0, size - LOG_TAIL_BYTES)
            f.seek(start)
            data = f.read()
            text = data.decode(errors="replace").splitlines()[-lines:] if lines else []
            return {
                "ok": True,
                "path": str(path),
                "offset": size,
                "text": "\n".join(text) + ("\n" if text else ""),
            }
        if offset > size:  # rotated: start over in the new file
            offset = 0
        f.seek(offset)
        data = f.read(LOG_TAIL_BYTES)
        cut = data.rfind(b"\n") + 1  # hand out whole lines only
        data = data[:cut]
        return {
            "ok": True,
            "path": str(path),
            "offset": offset + len(data),
            "text": data.decode(errors="replace"),
        }
