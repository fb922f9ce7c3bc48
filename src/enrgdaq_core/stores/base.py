"""The contract between the store runner and a backend.

A backend is built from its store-level options (where the server is, the output directory)
and opens one writer per destination (a file, a table, a key) for one source: a
`TableBackend` opens `TableWriter`s (rows as Arrow tables), an `EnvelopeBackend` opens
`EnvelopeWriter`s (whole envelopes, for the raw recorder). The runner decides when to write,
flush, rotate and reopen; a backend only says how.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Protocol, runtime_checkable

import msgspec

from enrgdaq_core.envelope import Envelope, Kind

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "Backend",
    "Destination",
    "EnvelopeBackend",
    "EnvelopeWriter",
    "StoreOptions",
    "StoreUnavailable",
    "TableBackend",
    "TableWriter",
    "TransientError",
]


class StoreOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Store-process settings common to every backend (`daq store --config`, `-O key=value`).

    `daq_job_type` lets a seed store config (`daq_job_type = "DAQJobStoreCSV"`) load as is.
    """

    daq_job_type: str = ""
    out_dir: str = ""  # relative file paths are resolved here; empty: the working directory
    # A `file_path` from a message header must resolve inside out_dir (no `..`, no absolute
    # path, no symlink out); true lets headers name any path (trusted sources only).
    allow_outside_out_dir: bool = False
    # Sources whose files this store truncates when it first opens them: `overwrite` of a
    # message header is never honoured (`daq up` fills this from the sources' own configs).
    overwrite_sources: list[str] = []
    flush_rows: Annotated[int, msgspec.Meta(ge=0)] = 0  # 0: the backend's default
    flush_seconds: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    # write once the buffered rows take this much memory; 0: default
    flush_mb: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    # beyond these, stop reading (backpressure), never drop; 0 would stop reading for good
    max_pending_rows: Annotated[int, msgspec.Meta(gt=0)] = 1_000_000
    max_pending_mb: Annotated[float, msgspec.Meta(gt=0)] = 1024.0  # for wide rows (waveforms)
    verbosity: str = "INFO"

    def __post_init__(self) -> None:
        from enrgdaq_core.names import check_name

        for i, source in enumerate(self.overwrite_sources):
            try:
                check_name("source", source)
            except ValueError as exc:
                raise ValueError(f"overwrite_sources[{i}]: {exc}") from None


class StoreUnavailable(ConnectionError):
    """The backend's server cannot be reached: the message says where and how to start it."""


class TransientError(Exception):
    """A write failed for a reason that may pass (server restart): keep rows, retry later."""


@dataclass(slots=True)
class Destination:
    """Where one source's rows go, as resolved from its header settings and the flags."""

    source: str
    settings: Any  # the backend's Settings struct (from store_config.<backend>)
    run: int = 0
    tag: str = ""
    path: Path | None = None  # for file backends: the file this writer writes
    # file backends: `path` without rotation stamp; the files of a series follow each other
    series: Path | None = None
    name: str = ""  # for servers: table or key
    opened_at: float = field(default_factory=time.time)
    # File backends: `overwrite` = truncate `path` (the settings ask for it and this process
    # has not written it yet); `append` = False when the runner wants a new file (rotation,
    # a failed write, a schema the writer refused). `paths.open_series` reads both.
    overwrite: bool = False
    append: bool = True


@runtime_checkable
class TableWriter(Protocol):
    """Writes the rows of one source into one destination (a file, a table, a key).

    Opened by a `TableBackend` for each destination; the runner calls `write` with batches
    of rows, `flush` after each write, `accepts` when the source's columns change, and
    `close` on rotation, end of stream and shutdown. Subclass it to get the defaults of
    `flush`, `size` and `accepts`, or implement the five methods on any class.
    """

    @abstractmethod
    def write(self, table: pa.Table) -> None:
        """Append `table` (rows of one schema, one batch as the runner buffered it).

        Raise `TransientError` (or `ConnectionError`) when the server may come back, an
        `OSError` when the file write failed (the runner retries into a new file part);
        anything else rejects these rows (counted as `rejected_rows`) and the store goes on.
        """
        ...

    def flush(self) -> None:
        """Make what was written durable enough to survive a kill -9 of the store."""

    def close(self) -> None:
        """Flush and release; called on rotation, end of stream, and shutdown."""

    def size(self) -> int:
        """Bytes in the destination so far (for `rotate_mb` and `bytes_out`); 0 if not a file."""
        return 0

    def accepts(self, schema: pa.Schema) -> bool:
        """Whether rows of `schema` may follow in this destination; False opens a new one.

        Called when a source's columns change; a writer that keeps versions itself (a new
        tree, a new group) says True and handles `schema` in `write`.
        """
        return True


@runtime_checkable
class EnvelopeWriter(Protocol):
    """Writes whole envelopes (topic, header, payload) of one source, as they came.

    Opened by an `EnvelopeBackend` (the raw recorder); every kind in the backend's `kinds`
    arrives, end-of-stream and run markers included.
    """

    @abstractmethod
    def write_envelopes(self, envelopes: list[Envelope]) -> None:
        """Append `envelopes` in order (errors as for `TableWriter.write`)."""
        ...

    def flush(self) -> None:
        """Make what was written durable enough to survive a kill -9 of the store."""

    def close(self) -> None:
        """Flush and release; called on rotation, end of stream, and shutdown."""

    def size(self) -> int:
        """Bytes in the destination so far (for `rotate_mb` and `bytes_out`)."""
        return 0


class Backend(ABC):
    """What every backend shares: its name, settings, options, kinds and lifetime.

    A backend subclasses `TableBackend` (rows: csv, root, hdf5, mysql, redis) or
    `EnvelopeBackend` (whole envelopes: raw); the runner feeds it accordingly.

    Class attributes: `name` (the `daq store NAME` and `[store_config.NAME]` key),
    `extension` (file backends: `.csv`, which also makes the runner resolve file paths and
    rotate; servers: ""), `Options` (store-process options, `-O key=value`), `Settings`
    (the per-source `[store_config.NAME]` struct), `kinds` (message kinds it stores; others
    are counted as `wrong_kind`), and the batching defaults.
    """

    name: ClassVar[str] = ""
    extension: ClassVar[str] = ""  # file backends: ".csv"; servers: ""
    Options: ClassVar[type[StoreOptions]] = StoreOptions
    Settings: ClassVar[type[msgspec.Struct]]
    kinds: ClassVar[frozenset[Kind]] = frozenset({Kind.TABLE})
    default_flush_rows: ClassVar[int] = 10_000
    default_flush_seconds: ClassVar[float] = 1.0
    default_flush_bytes: ClassVar[int] = 64 << 20

    def __init__(self, options: StoreOptions) -> None:
        self.options = options

    def extension_for(self, settings: Any) -> str:
        """The file extension for these settings (`.csv.zst` when compressed)."""
        return self.extension

    def check(self) -> None:  # noqa: B027 - an optional hook
        """Fail early (StoreUnavailable) when the server is not there."""

    def close(self) -> None:  # noqa: B027 - an optional hook
        """Release connections shared by writers."""

    def stats(self) -> dict[str, Any]:
        """Backend-specific figures for the stats heartbeat (reconnects, ...)."""
        return {}


class TableBackend(Backend):
    """A backend that stores rows: `open` gives a `TableWriter` for each destination."""

    @abstractmethod
    def open(self, dest: Destination, schema: pa.Schema) -> TableWriter:
        """A writer for `dest` whose first rows have `schema`.

        A file backend may write another file than `dest.path` (a new part, a name of its
        own for a second source) and sets `dest.path` to the file it writes.
        """


class EnvelopeBackend(Backend):
    """A backend that stores whole envelopes: `open` gives an `EnvelopeWriter`."""

    kinds: ClassVar[frozenset[Kind]] = frozenset({Kind.TABLE, Kind.RAW, Kind.EOS, Kind.RUN})

    @abstractmethod
    def open(self, dest: Destination) -> EnvelopeWriter:
        """A writer for `dest` (sets `dest.path` to the file it writes, as above)."""
