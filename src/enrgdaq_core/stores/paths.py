"""File names of file stores: placeholders, dates, rotation parts that sort in time order.

Every date and time in a name is UTC, so that names sort in time order across daylight-saving
changes and between hosts in different zones. A file that must not be appended to gets the
next *part* name (`sensor_part001.csv`), which sorts after the file it follows.
`open_series` is the one rule every file backend follows to reopen, append or start a part.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from enrgdaq_core import timefmt

__all__ = [
    "COMPRESSED",
    "CannotAppend",
    "date_string",
    "file_path",
    "glob_escape",
    "latest_part",
    "next_part",
    "open_series",
    "outside",
    "part_path",
    "parts",
    "split_name",
]

COMPRESSED = (".zst", ".gz", ".bz2", ".xz", ".lz4")
"""Suffixes that wrap another format: `x.csv.zst` keeps `.csv.zst` as its extension."""

_PART = re.compile(r"^(?P<stem>.*)_part(?P<n>\d{3,})$")


_PLACEHOLDER = re.compile(r"\{(source|run|tag|date)\}")
_MAX_COMPONENT = 255  # bytes of one file name on Linux, macOS and Windows file systems


def split_name(name: str) -> tuple[str, str]:
    """`sensor.csv.zst` -> (`sensor`, `.csv.zst`); `run.root` -> (`run`, `.root`)."""
    path = Path(name)
    suffix = path.suffix
    stem = name[: len(name) - len(suffix)] if suffix else name
    if suffix.lower() in COMPRESSED:
        inner = Path(stem).suffix
        if inner:
            stem = stem[: len(stem) - len(inner)]
            suffix = inner + suffix
    return stem, suffix


def _with_extension(name: str, extension: str) -> str:
    """Give `name` the backend's extension unless it already has one of its own.

    A compression suffix the backend asks for (`.zst`) is added to a name that lacks it
    (`sensor.csv` -> `sensor.csv.zst`); a name without any suffix gets the whole extension.
    """
    if not extension or name.endswith(extension):
        return name
    _, ext = split_name(name)
    if not ext:
        return name + extension
    _, wanted = split_name("x" + extension)
    compression = Path(wanted).suffix if Path(wanted).suffix.lower() in COMPRESSED else ""
    if compression and not name.lower().endswith(compression):
        return name + compression
    return name


def date_string(now: float) -> str:
    """The date `add_date` and `{date}` put in names: local (docs/operations.md, Times)."""
    return timefmt.date(int(now * 1e9))


def file_path(
    template: str,
    *,
    source: str,
    extension: str,
    out_dir: str = "",
    run: int = 0,
    tag: str = "",
    add_date: bool = False,
    rotating: bool = False,
    now: float | None = None,
) -> Path:
    """The file for one source.

    Placeholders `{source}`, `{run}` (zero-padded to 6), `{tag}`, `{date}` are filled and any
    other brace is kept as it is (a template from a message header is data, not a format
    string); with `add_date` the date goes before the extension (`sensor_2026-11-25.csv`); a
    rotating store adds the opening time (`sensor_20261125T143000Z.csv`), so parts sort in
    time order.
    """
    now = time.time() if now is None else now
    template = template or f"{{source}}{extension}"
    fields = {"source": source, "run": f"{run:06d}", "tag": tag, "date": date_string(now)}
    name = _PLACEHOLDER.sub(lambda m: fields[m[1]], template)
    path = Path(_with_extension(name, extension))
    stem, ext = split_name(path.name)
    if tag and "{tag}" not in template:
        stem = f"{stem}_{tag}"
    if add_date and "{date}" not in template:
        stem = f"{stem}_{fields['date']}"
    if rotating:
        stem = f"{stem}_{timefmt.name_stamp(int(now * 1e9))}"
    path = path.with_name(stem + ext)
    if out_dir and not path.is_absolute():
        path = Path(out_dir) / path
    return path


def outside(path: Path, root: str | Path) -> str:
    """Why `path` (as `file_path` made it, out_dir included) does not stay inside `root` (""
    when it does): a `..`, an absolute path or a symlink that leads out, a NUL byte, or a file
    name too long for any file system."""
    if "\x00" in str(path):
        return "it holds a NUL byte"
    if any(len(part.encode(errors="surrogateescape")) > _MAX_COMPONENT for part in path.parts):
        return f"a name in it is longer than {_MAX_COMPONENT} bytes"
    try:
        real, top = path.resolve(), Path(root or ".").resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, say
        return f"it does not resolve ({exc})"
    if real == top or top in real.parents:
        return ""
    return f"it resolves to {real}, outside {top}"


def part_path(path: Path, n: int) -> Path:
    """Part `n` of the series that starts at `path` (part 0 is `path` itself)."""
    if n == 0:
        return path
    stem, ext = split_name(path.name)
    return path.with_name(f"{stem}_part{n:03d}{ext}")


def parts(path: Path) -> list[Path]:
    """The existing files of the series that starts at `path`, in order (may be empty)."""
    stem, ext = split_name(path.name)
    found: list[tuple[int, Path]] = []
    if path.exists():
        found.append((0, path))
    if path.parent.is_dir():
        for candidate in path.parent.glob(f"{glob_escape(stem)}_part*{glob_escape(ext)}"):
            cstem, cext = split_name(candidate.name)
            match = _PART.match(cstem)
            if cext == ext and match and match["stem"] == stem:
                found.append((int(match["n"]), candidate))
    return [p for _, p in sorted(found)]


def latest_part(path: Path) -> Path:
    """The last existing file of the series (where a restart may append), or `path`."""
    existing = parts(path)
    return existing[-1] if existing else path


def next_part(path: Path) -> Path:
    """A name after every existing file of the series: a new file that sorts last."""
    existing = parts(path)
    if not existing:
        return path
    stem, _ = split_name(existing[-1].name)
    match = _PART.match(stem)
    return part_path(path, (int(match["n"]) if match else 0) + 1)


def glob_escape(text: str) -> str:
    """`text` as a literal in a glob pattern (a source name may contain `*`, `?` or `[`)."""
    return re.sub(r"([*?\[])", r"[\1]", text)


class CannotAppend(Exception):
    """Raised by a backend's opener: this existing file must not be written again (why).

    `warn` says whether the reason deserves a warning (a file left by a crash) rather than
    an info line (a run file is never appended to, a CSV whose columns differ).
    """

    def __init__(self, reason: str, *, warn: bool = True) -> None:
        super().__init__(reason)
        self.warn = warn


F = TypeVar("F")


def open_series(
    path: Path,
    *,
    overwrite: bool,
    append: bool,
    open_file: Callable[[Path, bool], F],
    log: logging.Logger,
) -> F:
    """Open the file of the series that starts at `path`: truncate, append, or a new part.

    The one rule of every file store (csv, root, hdf5, raw): `overwrite` truncates `path`;
    `append` False (the runner wants a new file: rotation, a failed write, columns the
    writer refused) opens the next part; otherwise the last existing part is appended to,
    unless `open_file(last, False)` raises `CannotAppend` (left by a crash, other columns,
    compressed, a run file), which opens the next part instead.
    `open_file(p, True)` creates `p` (or truncates it), `open_file(p, False)` appends.
    """
    if overwrite:
        return open_file(path, True)
    if not append:
        return open_file(next_part(path), True)
    last = latest_part(path)
    if not last.exists():
        return open_file(last, True)
    try:
        return open_file(last, False)
    except CannotAppend as exc:
        new = next_part(path)
        log.log(
            logging.WARNING if exc.warn else logging.INFO,
            "not appending to %s (%s): writing %s",
            last,
            exc,
            new,
        )
        return open_file(new, True)
