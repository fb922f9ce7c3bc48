"""The contract between the store runner and a backend.

A backend is built from its store-level options (where the server is, the output directory)
and opens one Writer per destination (a file, a table, a key) for one source. The runner
decides when to write, flush, rotate and reopen; a backend only says how.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import msgspec

from enrgdaq_core.envelope import Envelope, Kind

if TYPE_CHECKING:
    import pyarrow as pa


class StoreOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Store-process settings common to every backend (`daq store --config`, `-O key=value`).

    `daq_job_type` lets a seed store config (`daq_job_type = "DAQJobStoreCSV"`) load as is.
    """

    daq_job_type: str = ""
    out_dir: str = ""  # relative file paths are resolved here; empty: the working directory
    flush_rows: int = 0  # 0: the backend's default
    flush_seconds: float = 0.0
    flush_mb: float = 0.0  # write once the buffered rows take this much memory; 0: default
    # beyond these, stop reading (backpressure), never drop; 0 would stop reading for good
    max_pending_rows: Annotated[int, msgspec.Meta(gt=0)] = 1_000_000
    max_pending_mb: Annotated[float, msgspec.Meta(gt=0)] = 1024.0  # for wide rows (waveforms)
    verbosity: str = "INFO"


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
    name: str = ""  # for servers: table or key
    opened_at: float = field(default_factory=time.time)
    # File backends: `overwrite` = truncate `path` (the settings ask for it and this process
    # has not written it yet); `append` = False when the runner wants a new file (rotation),
    # so an existing `path` must not be appended to (use `paths.next_part`).
    overwrite: bool = False
    append: bool = True


class Writer:
    """Writes one destination. Subclasses implement write (and usually flush/close)."""

    def write(self, table: pa.Table) -> None:
        raise NotImplementedError

    def write_envelopes(self, envelopes: list[Envelope]) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Make what was written durable enough to survive a kill -9 of the store."""

    def close(self) -> None:
        """Flush and release; called on rotation, end of stream, and shutdown."""

    def size(self) -> int:
        """Bytes written so far (for `rotate_mb`); 0 when the backend has no files."""
        return 0

    def accepts(self, schema: pa.Schema) -> bool:
        """Whether rows of `schema` may go on in this destination; False opens a new one."""
        return True


class Backend:
    name: ClassVar[str] = ""
    extension: ClassVar[str] = ""  # file backends: ".csv"; servers: ""
    Options: ClassVar[type[StoreOptions]] = StoreOptions
    Settings: ClassVar[type[msgspec.Struct]]
    kinds: ClassVar[frozenset[Kind]] = frozenset({Kind.TABLE})
    wants_envelopes: ClassVar[bool] = False  # the raw store takes whole envelopes
    default_flush_rows: ClassVar[int] = 10_000
    default_flush_seconds: ClassVar[float] = 1.0
    default_flush_bytes: ClassVar[int] = 64 << 20

    def __init__(self, options: StoreOptions) -> None:
        self.options = options

    def extension_for(self, settings: Any) -> str:
        """The file extension for these settings (`.csv.zst` when compressed)."""
        return self.extension

    def check(self) -> None:
        """Fail early (StoreUnavailable) when the server is not there."""

    def open(self, dest: Destination, schema: pa.Schema | None) -> Writer:
        raise NotImplementedError

    def close(self) -> None:
        """Release connections shared by writers."""

    def stats(self) -> dict[str, Any]:
        """Backend-specific figures for the stats heartbeat (reconnects, ...)."""
        return {}
