"""Raw run files: every message as it came, in the envelope stream format, replayable.

Sources whose destinations resolve to the same file (`-o run{run}.raw`) share one file, so a
run file holds every source of the run in arrival order (the backend flushes each message by
default: `flush_rows = 1`). Each file part gets a header with the run number, run start, node,
part number and, when the store was given one, a config snapshot; a sidecar index
(`FILE.raw.idx`) is written with the data so replay can seek. An existing file is never
appended to or replaced (unless `overwrite`): a restart or a rotation opens the next part.

`payload_only = true` writes just the payload bytes of raw messages (no header, no index), for
tools that expect plain binary; table messages are then counted and skipped.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import msgspec

from enrgdaq_core.config import ConfigError, ConfigIssue
from enrgdaq_core.envelope import Envelope, Kind
from enrgdaq_core.runfile import RunFileWriter, config_snapshot, run_meta
from enrgdaq_core.store_config import RawStoreConfig
from enrgdaq_core.stores.base import Backend, Destination, StoreOptions, Writer
from enrgdaq_core.stores.paths import file_path, parse_period, parts, split_name, unique

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger("enrgdaq.store.raw")

_STAMP = re.compile(r"_\d{8}T\d{6}Z?$")


class RawOptions(StoreOptions, kw_only=True, forbid_unknown_fields=True):
    """Store options of the raw store (`-O snapshot=configs/`, `-O 'meta={operator="ana"}'`)."""

    snapshot: str = ""  # a TOML file or a directory of them, copied into every file header
    meta: dict[str, Any] = msgspec.field(default_factory=dict)  # extra file-header fields


class _PlainFile:
    """payload_only: the bytes of raw messages, back to back."""

    def __init__(self, path: Path, overwrite: bool) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._f: BinaryIO = open(path, "wb" if overwrite else "xb")  # noqa: SIM115
        self.size = 0
        self.opened = time.time()
        self.skipped = 0

    def write(self, env: Envelope) -> None:
        if env.header.kind is Kind.RAW:
            self._f.write(env.payload)
            self.size += len(env.payload)
        elif env.header.kind is Kind.TABLE:
            self.skipped += 1

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()


@dataclass
class _Family:
    """The run file that every destination with the same base name writes, and its parts."""

    base: Path  # the destination path without a rotation stamp
    source: str
    run: int
    settings: RawStoreConfig
    overwrite: bool
    next_path: Path | None  # where the next part goes: the runner's name for it
    users: int = 0
    current: RunFileWriter | _PlainFile | None = None


class RawWriter(Writer):
    """One source's handle on a shared run file."""

    def __init__(self, backend: RawBackend, family: _Family) -> None:
        self._backend = backend
        self._family = family
        self._closed = False

    def write_envelopes(self, envelopes: list[Envelope]) -> None:
        self._backend._write(self._family, envelopes)

    def write(self, table: pa.Table) -> None:
        raise TypeError("the raw store writes whole envelopes")

    def flush(self) -> None:
        current = self._family.current
        if current is not None:
            current.flush()

    def size(self) -> int:
        current = self._family.current
        return current.size if current is not None else 0

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._backend._release(self._family)


class RawBackend(Backend):
    name = "raw"
    extension = ".raw"
    Options = RawOptions
    Settings = RawStoreConfig
    kinds = frozenset({Kind.TABLE, Kind.RAW, Kind.EOS, Kind.RUN})
    wants_envelopes = True
    default_flush_rows = 1  # write each message as it arrives: arrival order across sources
    default_flush_seconds = 0.2

    def __init__(self, options: StoreOptions) -> None:
        super().__init__(options)
        opts: RawOptions = options  # type: ignore[assignment]
        self.snapshot: dict[str, Any] | None = None
        if opts.snapshot:
            try:
                self.snapshot = config_snapshot(opts.snapshot)
            except (OSError, ValueError) as exc:
                raise ConfigError([ConfigIssue("daq store raw", "snapshot", str(exc))]) from None
        self.extra_meta = dict(opts.meta)
        self._families: dict[tuple[str, bool], _Family] = {}
        self._run_start: dict[str, int] = {}  # by base path: the run start of part 0
        self._parts: dict[str, int] = {}  # by base path: parts opened so far
        self._written: set[Path] = set()  # files this process created: never truncate them
        self.parts_opened = 0
        self.records = 0
        self.skipped_tables = 0

    # -- destinations --------------------------------------------------------------------

    def open(self, dest: Destination, schema: pa.Schema | None) -> Writer:
        assert dest.path is not None
        settings: RawStoreConfig = dest.settings
        stem, ext = split_name(dest.path.name)
        base = dest.path.with_name(_STAMP.sub("", stem) + ext)
        key = (str(base), settings.payload_only)
        family = self._families.get(key)
        if family is None:
            family = _Family(
                base=base,
                source=dest.source,
                run=dest.run,
                settings=settings,
                next_path=dest.path,
                overwrite=bool(getattr(dest, "overwrite", settings.overwrite)),
            )
            self._families[key] = family
        elif family.current is not None and self._due(family):
            family.next_path = dest.path  # the runner rotated: this is the next part's name
        family.users += 1
        return RawWriter(self, family)

    def _due(self, family: _Family) -> bool:
        """Whether the current part is due for rotation (rotate / rotate_mb)."""
        current = family.current
        if current is None:
            return False
        s = family.settings
        limit = float(s.rotate_mb or 0) * 1e6
        period = parse_period(s.rotate) if s.rotate else 0.0
        return bool(
            (limit and current.size >= limit) or (period and time.time() - current.opened >= period)
        )

    def _new_part(self, family: _Family, first: Envelope) -> None:
        """Open the family's next file part (the first one, or after rotation)."""
        key = str(family.base)
        if family.next_path is not None:
            path = family.next_path
        else:  # rotation found by the backend itself (another source's handle crossed it)
            path = file_path(
                str(family.base), source=family.source, extension=self.extension, rotating=True
            )
        family.next_path = None
        if family.current is not None:
            family.current.close()
            family.current = None
        overwrite = family.overwrite and path not in self._written
        # part numbers go on across restarts: files of this series already there count
        part = max(self._parts.get(key, 0), 0 if overwrite else len(parts(path)))
        if not overwrite:
            path = unique(path)
        self._parts[key] = part + 1
        if family.settings.payload_only:
            family.current = _PlainFile(path, overwrite)
        else:
            start = self._run_start.setdefault(key, first.header.time_ns)
            meta = run_meta(
                run=first.header.run,
                run_start_ns=start,
                part=part,
                snapshot=self.snapshot,
                extra=self.extra_meta,
            )
            family.current = RunFileWriter(path, meta, overwrite=overwrite)
        self._written.add(path)
        self.parts_opened += 1
        log.info("raw: writing %s (part %d)", path, part)

    # -- writing -------------------------------------------------------------------------

    def _write(self, family: _Family, envelopes: list[Envelope]) -> None:
        if not envelopes:
            return
        if family.current is None or family.next_path is not None or self._due(family):
            self._new_part(family, envelopes[0])
        current = family.current
        assert current is not None
        for env in envelopes:
            current.write(env)
        self.records += len(envelopes)

    def _release(self, family: _Family) -> None:
        family.users -= 1
        if family.users > 0:
            return
        if family.current is not None:
            if isinstance(family.current, _PlainFile):
                self.skipped_tables += family.current.skipped
            family.current.close()
            family.current = None
        self._families.pop((str(family.base), family.settings.payload_only), None)

    def close(self) -> None:
        for family in list(self._families.values()):
            family.users = 1
            self._release(family)

    def stats(self) -> dict[str, Any]:
        skipped = self.skipped_tables + sum(
            f.current.skipped for f in self._families.values() if isinstance(f.current, _PlainFile)
        )
        return {"records": self.records, "parts": self.parts_opened, "skipped_tables": skipped}
