"""What a running `daq up` shows of itself: the `status` reply and the two stats files.

A read-only view of the supervisor's state (its children, its monitor, its run), kept apart
from the lifecycle loop: the loop decides, this module only reports. `daq ctl status`, the
`daq up` table and stats.csv / stats_remote.csv all read the same piece entries, so they
cannot disagree.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Protocol

import msgspec

from enrgdaq_core.monitor import Monitor
from enrgdaq_core.supervisor.plan import Plan
from enrgdaq_core.supervisor.process import Child
from enrgdaq_core.supervisor.runs import RunRecord
from enrgdaq_core.supervisor.statsfiles import (
    REMOTE_COLUMNS,
    STATS_COLUMNS,
    remote_rows,
    stats_row,
    write_csv,
)

__all__ = ["Supervised", "piece_status", "status", "write_stats_files"]

log = logging.getLogger("enrgdaq.supervisor")


class Supervised(Protocol):
    """The part of a supervisor this view reads (a Protocol: no import of the loop's module)."""

    plan: Plan
    children: dict[str, Child]
    monitor: Monitor
    phase: str
    started_at: float
    run_number: int
    record: RunRecord | None


def piece_status(sup: Supervised, child: Child, now: float | None = None) -> dict[str, Any]:
    """One child's entry: the supervisor's own view of it plus its last stats report."""
    now = time.monotonic() if now is None else now
    view = sup.monitor.get(sup.plan.node, child.name)
    report = msgspec.to_builtins(view.report) if view is not None else None
    return {
        "name": child.name,
        "role": child.spec.role,
        "state": child.state,
        "alive": child.alive,
        "pid": child.pid,
        "uptime_s": round(child.uptime(now), 3),
        "restarts": child.restarts,
        "restart_reasons": dict(child.reasons),
        "last_restart_ns": child.last_restart_ns,
        "last_exit": child.last_exit,
        "restart_policy": child.spec.restart,
        "heartbeat_age_s": round(now - view.last_seen, 3) if view is not None else None,
        "log": str(child.log.path),
        "report": report,
    }


def status(sup: Supervised) -> dict[str, Any]:
    """The reply to `daq ctl status`: the supervisor, its run and every piece."""
    now = time.monotonic()
    plan = sup.plan
    return {
        "node": plan.node,
        "directory": str(plan.directory),
        "broker": plan.address.base,
        "control": plan.control,
        "out_dir": str(plan.out_dir),
        "phase": sup.phase,
        "pid": os.getpid(),
        "uptime_s": round(now - sup.started_at, 3),
        "run": sup.record.to_dict() if sup.record is not None else {"run": sup.run_number},
        "pieces": [piece_status(sup, c, now) for c in sup.children.values()],
    }


def write_stats_files(sup: Supervised) -> None:
    """Rewrite stats.csv and stats_remote.csv (each setting may be empty: not written).

    A failure to write is logged, never raised: the stats files must not stop the system.
    """
    stats = sup.plan.config.stats
    try:
        pieces = [piece_status(sup, c) for c in sup.children.values()]
        path = sup.plan.out_path(stats.file)
        if path is not None:
            write_csv(path, STATS_COLUMNS, [stats_row(sup.plan.node, p) for p in pieces])
        remote = sup.plan.out_path(stats.remote_file)
        if remote is not None:
            write_csv(remote, REMOTE_COLUMNS, remote_rows(_pieces_seen(sup, pieces)))
    except OSError as exc:
        log.warning("cannot write the stats files: %s", exc)


def _pieces_seen(
    sup: Supervised, pieces: list[dict[str, Any]]
) -> list[tuple[str, dict[str, Any], bool]]:
    """(node, report, alive) of our children and of every other piece the monitor heard.

    Our children count as alive by the supervisor's own judgement, others while they report;
    with nothing seen at all, this node still gets its row.
    """
    node = sup.plan.node
    ours = set(sup.children)
    seen: list[tuple[str, dict[str, Any], bool]] = [
        (node, p["report"], p["alive"]) for p in pieces if p["report"] is not None
    ]
    now = time.monotonic()
    for view in sup.monitor.pieces(now=now):
        if view.node == node and view.piece in ours:
            continue
        fresh = view.status(now) not in ("stale", "stopped")
        if view.node == node and view.piece == "supervisor":
            fresh = sup.phase != "stopped"  # that is us
        seen.append((view.node, msgspec.to_builtins(view.report), fresh))
    if not seen:
        seen.append((node, {}, sup.phase != "stopped"))
    return seen
