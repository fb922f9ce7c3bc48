"""Whole-or-nothing file replacement: the one write-then-rename of the project.

State marks, the supervisor's stats files, runs.json and run-file indexes are read by other
processes (and by people) while they are rewritten; a crash or a reader in the middle must
see the previous version or the new one, never a torn file.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["atomic_write"]


def atomic_write(path: Path, data: str | bytes, *, hidden: bool = True) -> None:
    """Replace `path` with `data` atomically (a temporary sibling, then `os.replace`).

    `hidden` names the temporary `.NAME.tmp`, so globbing readers of the directory never pick
    it up. The parent directory is created when missing. OSError propagates: the caller
    decides whether a failed write is fatal.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp" if hidden else f"{path.name}.tmp")
    with open(tmp, "wb") as out:
        out.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)
