"""The in-process store: tables kept in memory per source, for tests and notebooks.

Run it with the same runner as every store, in your own process, and read the rows back:

    from enrgdaq_core.stores.memory import MemoryBackend, collect
    from enrgdaq_core.stores.runner import StoreRunner

    backend = collect(envelopes)          # every envelope through a StoreRunner
    backend.table("sensor1")              # all rows of sensor1, as one pyarrow.Table

    backend = MemoryBackend()             # or drive the runner yourself (a thread, a loop)
    runner = StoreRunner(backend, name="store-memory")
    runner.handle(envelope)               # each message is readable as soon as it is handled

A store process's memory is gone when it exits, so `daq store memory` and
`[store_config.memory]` under `daq up` are refused (`process_refusal` in `enrgdaq_core.stores`).
A schema change starts a new version of the source (`tables(source)`), as the file stores
start a new part, tree or group.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from enrgdaq_core.store_config import MemoryStoreConfig
from enrgdaq_core.stores.base import Destination, StoreOptions, TableBackend, TableWriter

if TYPE_CHECKING:
    import pyarrow as pa

    from enrgdaq_core.envelope import Envelope

__all__ = ["MemoryBackend", "collect"]


class _MemoryWriter(TableWriter):
    """One destination of one source: the tables written to it, in order."""

    def __init__(self, backend: MemoryBackend, dest: Destination, schema: pa.Schema | None):
        self._backend = backend
        self.source = dest.source
        self.run = dest.run
        self.schema = schema
        self.tables: list[pa.Table] = []
        self._nbytes = 0

    def write(self, table: pa.Table) -> None:
        with self._backend._lock:
            self.tables.append(table)
            self._nbytes += table.nbytes
            if self.schema is None:
                self.schema = table.schema

    def flush(self) -> None:
        """Nothing to do: a written table is readable at once."""

    def close(self) -> None:
        """Nothing to release: the tables stay readable after the writer is closed."""

    def size(self) -> int:
        return self._nbytes

    def accepts(self, schema: pa.Schema) -> bool:
        """A new schema starts a new version, so one version never mixes columns."""
        return self.schema is None or self.schema.equals(schema)


class MemoryBackend(TableBackend):
    """Keeps every table it is given, per source, until `clear()`; safe to read from another
    thread while a runner writes."""

    name = "memory"
    Settings = MemoryStoreConfig
    default_flush_rows = 1  # each message readable as soon as it is handled
    default_flush_seconds = 1.0

    def __init__(self, options: StoreOptions | None = None) -> None:
        super().__init__(options or StoreOptions())
        self._lock = threading.Lock()
        self._writers: dict[str, list[_MemoryWriter]] = {}

    def open(self, dest: Destination, schema: pa.Schema | None) -> TableWriter:
        writer = _MemoryWriter(self, dest, schema)
        with self._lock:
            self._writers.setdefault(dest.source, []).append(writer)
        return writer

    def sources(self) -> list[str]:
        """The sources that have rows here, in the order they first wrote."""
        with self._lock:
            return [s for s, ws in self._writers.items() if any(w.tables for w in ws)]

    def tables(self, source: str) -> list[pa.Table]:
        """The rows of `source`, one table per schema version, in the order written."""
        import pyarrow as pa

        with self._lock:
            parts = [(w.schema, list(w.tables)) for w in self._writers.get(source, []) if w.tables]
        versions: list[tuple[Any, list[pa.Table]]] = []
        for schema, tables in parts:  # a new run with the same columns is the same version
            if versions and versions[-1][0].equals(schema):
                versions[-1][1].extend(tables)
            else:
                versions.append((schema, tables))
        return [pa.concat_tables(tables) for _, tables in versions]

    def table(self, source: str) -> pa.Table:
        """Every row of `source` in one table; versions with other columns are combined
        (missing columns null, types widened where Arrow can). KeyError: no rows from it."""
        import pyarrow as pa

        versions = self.tables(source)
        if not versions:
            known = ", ".join(self.sources()) or "none"
            raise KeyError(f"no rows from source {source!r} (sources with rows: {known})")
        if len(versions) == 1:
            return versions[0]
        return pa.concat_tables(versions, promote_options="permissive")

    def clear(self) -> None:
        """Forget every table (open writers of a running runner start empty)."""
        with self._lock:
            for writers in self._writers.values():
                for w in writers:
                    w.tables.clear()
                    w._nbytes = 0

    def stats(self) -> dict[str, Any]:
        with self._lock:
            held = sum(w.size() for ws in self._writers.values() for w in ws)
        return {"held_mb": round(held / 1e6, 3)}


class _ListInput:
    """The runner's input over a finite sequence of envelopes."""

    damage = None
    undecodable = 0

    def __init__(self, envelopes: Iterable[Envelope]) -> None:
        self._it = iter(envelopes)

    def recv(self, timeout: float | None = None) -> Envelope | None:
        from enrgdaq_core.channels import EndOfInput

        try:
            return next(self._it)
        except StopIteration:
            raise EndOfInput from None

    def close(self) -> None:
        pass


def collect(
    envelopes: Iterable[Envelope],
    backend: MemoryBackend | None = None,
    *,
    name: str = "store-memory",
) -> MemoryBackend:
    """Run every envelope through a StoreRunner into `backend` (a new one by default): the
    same routing, batching, sequence checks and schema handling as a real store."""
    from enrgdaq_core.signals import StopFlag
    from enrgdaq_core.stores.runner import StoreRunner

    backend = backend if backend is not None else MemoryBackend()
    StoreRunner(backend, name=name).run(_ListInput(envelopes), StopFlag())
    return backend
