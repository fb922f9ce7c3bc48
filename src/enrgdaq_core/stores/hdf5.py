"""HDF5 files (h5py): one group per source, one chunked, resizable dataset per column.

Layout: `/<dataset_name or source>/<column>`; scalars are 1-D datasets, fixed-size waveforms
2-D `(rows, samples)`, variable-length arrays and strings variable-length datasets. Every
dataset carries `arrow_type` (and `units` for timestamps, stored as int64 ns since 1970 UTC);
the group carries `arrow_schema` and `rows`, the number of complete rows (after a crash a
dataset may hold a few more, from the write that was cut short: read `ds[:group.attrs["rows"]]`).

The file is written in SWMR mode (single writer, multiple readers): readers open it while it
is being written with `h5py.File(path, "r", swmr=True)`, and every write is followed by a
flush, so a kill -9 leaves a file that opens (with `swmr=True`, as it is still marked open
for writing; `h5clear -s` removes that mark) with everything flushed. SWMR covers
fixed-size data: variable-length columns (strings, lists) may not read while being written. SWMR forbids creating
objects, so a new source or a schema change briefly closes and reopens the file.

The file format is bounded to HDF5 1.10 (`LIBVER`): every HDF5 1.10 or later reads it.

A schema change (a column added, removed or retyped) never touches the existing datasets: the
rows go to a new group version `<name>_v2`, `<name>_v3`, ... A restarted store appends to
the last version if its schema matches, else starts the next version; a file that was not
closed cleanly (a crash) is never written again: the store starts the next file part.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from enrgdaq_core.store_config import HDF5StoreConfig
from enrgdaq_core.stores._columns import (
    ColumnPlan,
    column_data,
    plan_schema,
    schema_signature,
)
from enrgdaq_core.stores._shared_files import SharedFiles
from enrgdaq_core.stores.base import Destination, StoreOptions, TableBackend, TableWriter
from enrgdaq_core.stores.paths import CannotAppend, open_series

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger("enrgdaq.store.hdf5")

CHUNK_BYTES = 256 << 10  # the largest chunk of one dataset
MIN_CHUNK_BYTES = 16 << 10  # the smallest: tiny chunks make a huge index and slow reads
MAX_CHUNK_ROWS = 32768
CACHE_BYTES = 64 << 20  # chunk cache per file: partly filled chunks stay in memory
# The file format: objects no newer than HDF5 1.10 (the oldest with SWMR), so HDF5 1.10 and
# later read every file; "latest" under h5py's bundled HDF5 2.0 writes layout messages that
# h5dump 1.10 and PyTables cannot read.
LIBVER = ("v110", "v110")


def _row_bytes(plan: ColumnPlan) -> int:
    if plan.kind == "fixed":
        return plan.dtype.itemsize * plan.width
    if plan.kind in ("jagged", "string"):
        return 16  # a variable-length reference
    return plan.dtype.itemsize


def chunk_rows(plan: ColumnPlan, batch_rows: int) -> int:
    """Rows per chunk: about one write's worth, within [MIN_CHUNK_BYTES, CHUNK_BYTES].

    A write that ends inside a compressed chunk rewrites that chunk at the next write, and
    in SWMR mode HDF5 never reuses the space the old copy took: chunks the size of a write
    keep a file written in many small flushes close to the size of its data.
    """
    row = max(_row_bytes(plan), 1)
    high = max(1, min(MAX_CHUNK_ROWS, CHUNK_BYTES // row))
    low = max(1, min(high, MIN_CHUNK_BYTES // row))
    want = 1 << max(0, int(batch_rows) - 1).bit_length()  # the next power of two
    return max(low, min(high, want))


def _dataset_name(column: str) -> str:
    """A column name as an HDF5 link name (`/` would make nested groups)."""
    return column.replace("/", "_") or "_"


def _version_name(base: str, version: int) -> str:
    return base if version == 1 else f"{base}_v{version}"


class _H5File:
    """One open file, shared by the writers of every source that writes into it."""

    def __init__(self, path: Path, *, create: bool) -> None:
        import h5py

        self._h5py = h5py
        self.path = path
        self.generation = 0  # bumped when the file is reopened: dataset handles go stale
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = self._open("w" if create else "a")
        self.swmr = False  # entered at the first flush, once the first groups exist
        self._swmr_refused = False

    def _open(self, mode: str) -> Any:
        return self._h5py.File(
            self.path, mode, libver=LIBVER, rdcc_nbytes=CACHE_BYTES, rdcc_nslots=100_003
        )

    def _enable_swmr(self) -> None:
        if self._swmr_refused:
            return
        try:
            self.file.swmr_mode = True
            self.swmr = True
        except (ValueError, OSError, RuntimeError) as exc:  # an old-format file
            log.info("%s: SWMR not available (%s); readers wait for each flush", self.path, exc)
            self._swmr_refused = True

    def writable(self) -> Any:
        """The file, ready to create groups and datasets (SWMR mode is left for that)."""
        if self.swmr:
            self.file.flush()
            self.file.close()
            self.file = self._open("a")
            self.swmr = False
            self.generation += 1
        return self.file

    def flush(self) -> None:
        """Flush, in SWMR mode (entered here, after objects were created)."""
        if not self.swmr:
            self.file.flush()
            self._enable_swmr()
        self.file.flush()

    def size(self) -> int:
        try:
            return os.path.getsize(self.path)
        except OSError:
            return 0

    def close(self) -> None:
        if self.file.id.valid:
            self.file.close()


class HDF5Writer(TableWriter):
    def __init__(self, backend: HDF5Backend, handle: _H5File, dest: Destination) -> None:
        settings: HDF5StoreConfig = dest.settings
        self.backend = backend
        self.handle = handle
        self.base = backend.claim(handle, settings.dataset_name or dest.source, dest.source)
        self.compression = None if settings.compression == "none" else settings.compression
        self.group_name = ""
        self.schema: pa.Schema | None = None
        self.plans: list[ColumnPlan] = []
        self._datasets: list[Any] = []
        self._group: Any = None
        self._generation = -1
        self.rows = 0
        self.closed = False

    # -- groups and datasets -------------------------------------------------------------

    def _select(self, schema: pa.Schema, batch_rows: int) -> None:
        """The group for rows of `schema`: the last version if it matches, else a new one."""
        signature = schema_signature(schema)
        f = self.handle.file
        version = 1
        while _version_name(self.base, version + 1) in f:
            version += 1
        name = _version_name(self.base, version)
        if name in f and (
            f[name].attrs.get("arrow_schema") != signature or self.group_name == name
        ):
            name = _version_name(self.base, version + 1)  # a change: never reuse a group
        self.plans = plan_schema(schema)
        if name not in f:
            self._create(name, signature, batch_rows)
        self.group_name = name
        self.schema = schema
        self._generation = -1
        self.rows = int(self.handle.file[name].attrs.get("rows", 0))

    def _create(self, name: str, signature: str, batch_rows: int) -> None:
        h5py = self.handle._h5py
        f = self.handle.writable()
        group = f.create_group(name, track_order=True)
        group.attrs["arrow_schema"] = signature
        group.attrs["source"] = self.base
        group.attrs["rows"] = np.int64(0)
        for plan in self.plans:
            rows = chunk_rows(plan, batch_rows)
            if plan.kind == "fixed":
                shape, maxshape, chunks = (
                    (0, plan.width),
                    (None, plan.width),
                    (rows, plan.width),
                )
                dtype: Any = plan.dtype
            else:
                shape, maxshape, chunks = (0,), (None,), (rows,)
                if plan.kind == "string":
                    dtype = h5py.string_dtype("utf-8")
                elif plan.kind == "jagged":
                    dtype = h5py.vlen_dtype(plan.dtype)
                else:
                    dtype = plan.dtype
            ds = group.create_dataset(
                _dataset_name(plan.name),
                shape=shape,
                maxshape=maxshape,
                chunks=chunks,
                dtype=dtype,
                compression=self.compression,
                shuffle=self.compression is not None and plan.kind in ("scalar", "fixed"),
            )
            ds.attrs["arrow_type"] = plan.arrow_type
            if plan.units:
                ds.attrs["units"] = plan.units

    def _handles(self) -> list[Any]:
        if self._generation != self.handle.generation:
            self._group = self.handle.file[self.group_name]
            self._datasets = [self._group[_dataset_name(p.name)] for p in self.plans]
            self._generation = self.handle.generation
        return self._datasets

    # -- the TableWriter contract ---------------------------------------------------------------

    def write(self, table: pa.Table) -> None:
        if self.schema is None or not table.schema.equals(self.schema):
            self._select(table.schema, table.num_rows)
        n = table.num_rows
        if n == 0:
            return
        data = [column_data(p, table.column(i)) for i, p in enumerate(self.plans)]
        start = self.rows
        for plan, ds, col in zip(self.plans, self._handles(), data, strict=True):
            if col.nulls:
                self.backend.nulls_filled += col.nulls
            ds.resize(start + n, axis=0)
            if plan.kind == "jagged":
                values = np.empty(n, dtype=object)
                for i, part in enumerate(col.rows_of_jagged()):
                    values[i] = part
                ds[start:] = values
            else:
                ds[start:] = col.values
        self.rows = start + n
        self._group.attrs.modify("rows", np.int64(self.rows))
        self.backend.resizes += 1

    def flush(self) -> None:
        self.handle.flush()

    def size(self) -> int:
        return self.handle.size()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.backend._release(self.handle)


class HDF5Backend(TableBackend):
    name = "hdf5"
    extension = ".h5"
    Settings = HDF5StoreConfig
    default_flush_rows = 10_000
    default_flush_seconds = 1.0

    def __init__(self, options: StoreOptions) -> None:
        super().__init__(options)
        self._shared: SharedFiles[_H5File] = SharedFiles()
        self.resizes = 0
        self.nulls_filled = 0

    def open(self, dest: Destination, schema: pa.Schema) -> TableWriter:
        import h5py  # noqa: F401 - fail here, at open, if h5py is missing

        handle = self._shared.acquire(dest, self._open_file)
        return HDF5Writer(self, handle, dest)

    def claim(self, handle: _H5File, group: str, source: str) -> str:
        """The group name for `source`: two sources never write into one group."""
        return self._shared.claims.claim(handle.path.resolve(), group, source)

    def _open_file(self, dest: Destination) -> _H5File:
        assert dest.path is not None

        def open_file(path: Path, create: bool) -> _H5File:
            if create:
                return _H5File(path, create=True)
            try:
                return _H5File(path, create=False)
            except OSError as exc:
                why = str(exc).split("\n")[0]
                raise CannotAppend(
                    f"{why}; if it was left by a crash, read it with "
                    "h5py.File(path, 'r', swmr=True) or clear its mark with `h5clear -s`"
                ) from None

        return open_series(
            dest.path, overwrite=dest.overwrite, append=dest.append, open_file=open_file, log=log
        )

    def _release(self, handle: _H5File) -> None:
        self._shared.release(handle)

    def close(self) -> None:
        self._shared.close_all()

    def stats(self) -> dict[str, Any]:
        return {"resizes": self.resizes, "nulls_filled": self.nulls_filled}
