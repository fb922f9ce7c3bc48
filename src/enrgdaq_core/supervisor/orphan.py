"""When `daq up` was killed: the last of its children out records that the run was aborted.

Nobody else is left to end the run in runs.json and the stats files, which would say
"running" forever. The broker leaves last (enrgdaq_core.signals orders the children's own
stop), so it is the one: `daq up` names the files in its environment, and once it is the last
one out it ends every open run as `aborted` (with the time) and marks every piece in the
stats files not alive, `aborted`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from enrgdaq_core.supervisor.runs import RunBook
from enrgdaq_core.supervisor.statsfiles import mark_ended

if TYPE_CHECKING:  # the broker imports this module: not the whole planner with it
    from enrgdaq_core.supervisor.plan import Plan

__all__ = ["ABORTED", "last_one_out_env", "record_aborted"]

log = logging.getLogger("enrgdaq.supervisor")

ABORTED = "aborted"
_RUNS_FILE_ENV = "DAQ_RUNS_FILE"
_STATS_FILES_ENV = "DAQ_STATS_FILES"  # os.pathsep-separated


def last_one_out_env(plan: Plan) -> dict[str, str]:
    """The environment `daq up` gives its broker: the files to end if it dies."""
    stats = plan.config.stats
    files = [plan.out_path(name) for name in (stats.file, stats.remote_file)]
    return {
        _RUNS_FILE_ENV: str(plan.out_dir / plan.config.run.runs_file),
        _STATS_FILES_ENV: os.pathsep.join(str(p) for p in files if p is not None),
    }


def record_aborted(environ: Mapping[str, str] = os.environ) -> list[int]:
    """End the open runs and the stats files named in `environ` as aborted; the runs ended.

    A failure is logged, never raised: the process is on its way out either way.
    """
    ended: list[int] = []
    runs = environ.get(_RUNS_FILE_ENV)
    try:
        if runs:
            path = Path(runs)
            ended = RunBook(path.parent, path.name).abort_open()
            for run in ended:
                log.warning("run %d ended as aborted in %s (daq up died)", run, path)
        for name in filter(None, environ.get(_STATS_FILES_ENV, "").split(os.pathsep)):
            mark_ended(Path(name), ABORTED)
    except Exception as exc:  # a full disk, a broken runs file: say so and go
        log.error("cannot record the aborted run: %s", exc)
    return ended
