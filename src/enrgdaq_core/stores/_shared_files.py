"""Files a store process has open, shared by every writer that asks for the same one.

Two sources may name one file (a ROOT file with a tree each, an HDF5 file with a group each);
a file this process opened is shared whatever the flags say, since it was made here. The file
closes when its last writer lets go.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from enrgdaq_core.stores.base import Destination


class _Handle(Protocol):
    path: Path
    refs: int

    def close(self) -> None: ...


H = TypeVar("H", bound=_Handle)


class SharedFiles(Generic[H]):
    def __init__(self) -> None:
        self._files: dict[Path, H] = {}  # final path -> open file
        self._chosen: dict[Path, Path] = {}  # the path a writer asked for -> the file it got

    def acquire(self, dest: Destination, open_file: Callable[[Destination], H]) -> H:
        """The open file for `dest` (opened with `open_file` if none); sets `dest.path`."""
        assert dest.path is not None
        asked = dest.path.resolve()
        chosen = self._chosen.get(asked) or (asked if asked in self._files else None)
        handle = self._files.get(chosen) if chosen is not None else None
        if handle is None:
            handle = open_file(dest)
            self._files[handle.path.resolve()] = handle
            self._chosen[asked] = handle.path.resolve()
        dest.path = handle.path
        handle.refs += 1
        return handle

    def release(self, handle: H) -> None:
        handle.refs -= 1
        if handle.refs <= 0:
            handle.close()
            key = handle.path.resolve()
            self._files.pop(key, None)
            for asked in [a for a, c in self._chosen.items() if c == key]:
                del self._chosen[asked]

    def close_all(self) -> None:
        for handle in list(self._files.values()):
            handle.close()
        self._files.clear()
        self._chosen.clear()
