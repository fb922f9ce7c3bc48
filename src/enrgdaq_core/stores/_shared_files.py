"""Several sources, one file: the one place that decides who shares what (root, hdf5, raw, csv).

Two sources may name one file (a ROOT file with a tree each, an HDF5 file with a group each, a
raw run file with the records of every source). `SharedFiles` keeps each file this process
opened and hands it to every writer that asks for the same name, whatever the flags say,
since it was made here. `claim` keeps one name (a tree, a group, a CSV file) to one source
for the life of the process: a second source gets `<name>_<source>`.

A file closes when its last writer lets go, except with `linger` (raw run files): the file
then lives as long as its run, so a source that starts after another one ended in the same
run writes into the same file. A lingering file closes when a destination of a later run
opens, when a new file of its series opens (rotation), or with the backend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from enrgdaq_core.stores.base import Destination


class _Handle(Protocol):
    path: Path  # the file it writes (may be a new part of the name asked for)

    def close(self) -> None: ...


H = TypeVar("H", bound=_Handle)


@dataclass
class _Entry(Generic[H]):
    handle: H
    run: int
    series: Path  # the name without rotation stamp: files of one series follow each other
    refs: int = 0


class Claims:
    """One name, one source, for the life of the store process (trees, groups, CSV files)."""

    def __init__(self) -> None:
        self._owners: dict[tuple[Any, str], str] = {}  # (scope, name) -> source

    def claim(self, scope: Any, name: str, source: str) -> str:
        """`name` in `scope` (a file, a directory) for `source`, or `<name>_<source>` when
        another source of this process holds `name` there (even if it has ended)."""
        owner = self._owners.setdefault((scope, name), source)
        if owner != source:
            name = f"{name}_{source}"
            self._owners.setdefault((scope, name), source)
        return name


class SharedFiles(Generic[H]):
    """The files a backend has open, by name; see the module docstring."""

    def __init__(self, *, linger: bool = False) -> None:
        self._linger = linger
        self._files: dict[Path, _Entry[H]] = {}  # final path -> open file
        self._chosen: dict[Path, Path] = {}  # the path a writer asked for -> the file it got
        self.claims = Claims()  # names inside the files (trees, groups)

    def acquire(self, dest: Destination, open_file: Callable[[Destination], H]) -> H:
        """The open file for `dest` (opened with `open_file` if none); sets `dest.path`."""
        assert dest.path is not None
        asked = dest.path.resolve()
        series = (dest.series or dest.path).resolve()
        if self._linger:
            self._close_superseded(dest.run, series, asked)
        chosen = self._chosen.get(asked) or (asked if asked in self._files else None)
        entry = self._files.get(chosen) if chosen is not None else None
        if entry is not None and not entry.refs and (not dest.append or entry.run != dest.run):
            self._close(entry)  # idle, and not for this: a new file or another run
            entry = None
        if entry is None:
            handle = open_file(dest)
            entry = _Entry(handle, dest.run, series)
            self._files[handle.path.resolve()] = entry
            self._chosen[asked] = handle.path.resolve()
        dest.path = entry.handle.path
        entry.refs += 1
        return entry.handle

    def _close_superseded(self, run: int, series: Path, asked: Path) -> None:
        """Close lingering files whose run is over or whose series moved on to a new file."""
        for entry in list(self._files.values()):
            if entry.refs:
                continue
            mine = self._chosen.get(asked) == entry.handle.path.resolve()
            if entry.run < run or (entry.series == series and not mine):
                self._close(entry)

    def release(self, handle: H) -> None:
        entry = self._files.get(handle.path.resolve())
        if entry is None:
            return
        entry.refs -= 1
        if entry.refs <= 0 and not self._linger:
            self._close(entry)

    def _close(self, entry: _Entry[H]) -> None:
        key = entry.handle.path.resolve()
        self._files.pop(key, None)
        for asked in [a for a, c in self._chosen.items() if c == key]:
            del self._chosen[asked]
        entry.handle.close()

    def close_all(self) -> None:
        for entry in list(self._files.values()):
            self._close(entry)
        self._files.clear()
        self._chosen.clear()
