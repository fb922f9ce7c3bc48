"""Outputs checked at start: a file store refuses a path it could not write, before any row.

Without this an unwritable directory shows only once the first batch is due, as a warning
per retry, and the rows buffered meanwhile are lost at shutdown. The check asks the file
system itself (a probe file created and removed in the directory, or in the nearest existing
directory above it, which the store would create the rest of), so a read-only mount, an
immutable directory or a path under a regular file is found as the store would meet it.
A name with a placeholder still in it (`{source}` before any message named the source) is
checked up to the directory before that placeholder.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import msgspec

from enrgdaq_core.config import ConfigError, ConfigIssue
from enrgdaq_core.stores.base import Backend
from enrgdaq_core.stores.paths import file_path

__all__ = ["check_store_outputs", "output_problem", "source_output"]


def output_problem(path: Path, *, directory: bool = False) -> str | None:
    """Why a file store could not create `path` (or, with `directory`, files in it); None
    when it can. Creates nothing that stays: no directory, no file."""
    path = Path(os.path.abspath(path))
    parts = path.parts
    for i, part in enumerate(parts):
        if "{" in part:  # not resolved yet: check what is known, the directories above it
            path, directory = Path(*parts[:i]), True
            break
    folder = path if directory else path.parent
    if not directory:
        limit = _name_max(folder)
        if len(os.fsencode(path.name)) > limit:
            return f"file name longer than {limit} bytes"
    existing = folder
    while not existing.exists() and not existing.is_symlink():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory"
    try:
        fd, probe = tempfile.mkstemp(prefix=".daq-probe-", dir=existing)
    except OSError as exc:
        return f"cannot create files in {existing} ({exc.strerror or exc})"
    os.close(fd)
    os.unlink(probe)
    return None


def _name_max(folder: Path) -> int:
    """The longest file name the file system of `folder` (or the nearest existing parent) takes."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def source_output(backend: Backend, settings: Any, *, source: str, tag: str = "") -> Path:
    """The file `backend` opens first for `source` with these `[store_config]` settings (the
    run number and a rotation stamp change only the name, not where it goes)."""
    return file_path(
        getattr(settings, "file_path", ""),
        source=source,
        extension=backend.extension_for(settings),
        out_dir=backend.options.out_dir,
        tag=tag,
        add_date=getattr(settings, "add_date", False),
    )


def check_store_outputs(
    backend: Backend, *, name: str, destination: str | None, overrides: dict[str, Any]
) -> None:
    """ConfigError naming the store, the path and the reason when a file store could not
    write what it is told at start: `destination` (`daq store -o`), else its out_dir (where
    the paths of messages go; the working directory when unset). Servers are not files:
    nothing to check here (`Backend.check` asks the server)."""
    if not backend.extension:
        return
    if destination:
        try:
            extension = backend.extension_for(msgspec.convert(overrides, backend.Settings))
        except msgspec.ValidationError:  # refused where the settings are used, per message
            extension = backend.extension
        where = file_path(
            destination,
            source="{source}",
            extension=extension,
            out_dir=backend.options.out_dir,
        )
        origin, problem = "-o", output_problem(where)
    else:
        where = Path(backend.options.out_dir or ".")
        origin, problem = "out_dir", output_problem(where, directory=True)
    if problem is not None:
        shown = os.path.abspath(where)
        raise ConfigError([ConfigIssue(origin, "", f"{name} cannot write {shown}: {problem}")])
