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
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from enrgdaq_core.config import ConfigError, ConfigIssue
from enrgdaq_core.envelope import Envelope, Kind
from enrgdaq_core.runfile import RunFileWriter, config_snapshot, run_meta
from enrgdaq_core.store_config import RawStoreConfig
from enrgdaq_core.stores._shared_files import SharedFiles
from enrgdaq_core.stores.base import Destination, EnvelopeBackend, EnvelopeWriter, StoreOptions
from enrgdaq_core.stores.paths import CannotAppend, open_series, parts

log = logging.getLogger("enrgdaq.store.raw")


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

    def write(self, env: Envelope) -> None:
        if env.header.kind is Kind.RAW:
            self._f.write(env.payload)
            self.size += len(env.payload)

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()


_RunFile = RunFileWriter | _PlainFile


class RawWriter(EnvelopeWriter):
    """One source's handle on a run file that every source of the destination shares.

    The file opens at the first write (its header needs the first message's run and time).
    """

    def __init__(self, backend: RawBackend, dest: Destination) -> None:
        self._backend = backend
        self._dest = dest
        self._file: RunFileWriter | _PlainFile | None = None

    def write_envelopes(self, envelopes: list[Envelope]) -> None:
        if not envelopes:
            return
        if self._file is None:
            first = envelopes[0]
            self._file = self._backend._shared.acquire(
                self._dest, lambda dest: self._backend._open_file(dest, first)
            )
        for env in envelopes:
            self._file.write(env)
        self._backend.records += len(envelopes)
        if isinstance(self._file, _PlainFile):
            self._backend.skipped_tables += sum(e.header.kind is Kind.TABLE for e in envelopes)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def size(self) -> int:
        return self._file.size if self._file is not None else 0

    def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            self._backend._shared.release(file)


class RawBackend(EnvelopeBackend):
    name = "raw"
    extension = ".raw"
    Options = RawOptions
    Settings = RawStoreConfig
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
        # a run file lives as long as its run: a source that starts after another ended
        # writes into the same file (see _shared_files)
        self._shared: SharedFiles[_RunFile] = SharedFiles(linger=True)
        self._run_start: dict[Path, int] = {}  # by series: the run start of part 0
        self._parts: dict[Path, int] = {}  # by series: parts opened so far
        self.parts_opened = 0
        self.records = 0
        self.skipped_tables = 0

    def open(self, dest: Destination) -> EnvelopeWriter:
        return RawWriter(self, dest)

    def _open_file(self, dest: Destination, first: Envelope) -> _RunFile:
        """Open the next part of `dest`'s series (never appending to an existing file)."""
        assert dest.path is not None
        series = (dest.series or dest.path).resolve()

        def open_file(path: Path, create: bool) -> _RunFile:
            if not create:
                raise CannotAppend("a run file is never appended to", warn=False)
            overwrite = dest.overwrite
            # part numbers go on across restarts: files of this series already there count
            part = max(self._parts.get(series, 0), 0 if overwrite else len(parts(dest.path)))
            self._parts[series] = part + 1
            file: _RunFile
            if dest.settings.payload_only:
                file = _PlainFile(path, overwrite)
            else:
                meta = run_meta(
                    run=first.header.run,
                    run_start_ns=self._run_start.setdefault(series, first.header.time_ns),
                    part=part,
                    snapshot=self.snapshot,
                    extra=self.extra_meta,
                )
                file = RunFileWriter(path, meta, overwrite=overwrite)
            self.parts_opened += 1
            log.info("raw: writing %s (part %d)", path, part)
            return file

        return open_series(
            dest.path, overwrite=dest.overwrite, append=dest.append, open_file=open_file, log=log
        )

    def close(self) -> None:
        self._shared.close_all()

    def stats(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "parts": self.parts_opened,
            "skipped_tables": self.skipped_tables,
        }
