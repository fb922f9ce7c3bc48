"""ROOT files (uproot): one TTree per source, branches from the Arrow schema, big baskets.

Each write is one `TTree.extend`, so one basket per branch: the runner's batching (default
100 000 rows or 5 s) is what makes baskets large. Branches: numbers and booleans as scalars,
timestamps as int64 ns since 1970 UTC, strings as `char*`, fixed-size waveforms as fixed
arrays (`int16_t[1024]`), variable-length lists as jagged arrays with a counter branch
`n<column>`. The tree title is the Arrow schema as JSON (names and types as the source sent
them). Compression is the file's: `compression_type` / `compression_level`, ZSTD 5 by
default (the first writer of a file sets it).

uproot rewrites the tree's metadata and the file's directory after every extend; the store
applies those in-place writes in an order that keeps the file consistent at every instant
(see `_crash_ordered`), so after a kill -9 the file opens in uproot and ROOT with every
completed write. While the store writes
a file it holds a key `enrgdaq_writing` (a TObjString), removed on a clean close; a restart
that finds it knows the file was left by a crash and starts the next file part instead of
appending (uproot cannot always reopen such a file for update). A clean file is reopened
with `uproot.update` and its tree extended.

A schema change (a column added, removed or retyped) starts a new tree `<name>_v2`,
`<name>_v3`, ... in the same file; the first tree is never altered.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from enrgdaq_core.store_config import ROOTStoreConfig
from enrgdaq_core.stores._columns import ColumnPlan, column_data, plan_schema, schema_signature
from enrgdaq_core.stores._shared_files import SharedFiles
from enrgdaq_core.stores.base import Destination, StoreOptions, TableBackend, TableWriter
from enrgdaq_core.stores.paths import CannotAppend, open_series

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger("enrgdaq.store.root")

WRITING_KEY = "enrgdaq_writing"
TESTED_UPROOT = ">=5.3,<5.8"  # the range `_crash_ordered` was checked against (pyproject.toml)


def _compression(settings: ROOTStoreConfig) -> Any:
    import uproot

    kind = settings.compression_type
    if kind == "NONE":
        return None
    return {"ZSTD": uproot.ZSTD, "ZLIB": uproot.ZLIB, "LZ4": uproot.LZ4, "LZMA": uproot.LZMA}[kind](
        settings.compression_level
    )


def _version_name(base: str, version: int) -> str:
    return base if version == 1 else f"{base}_v{version}"


def _key_names(keys: list[str]) -> set[str]:
    return {k.split(";")[0] for k in keys}


class _Recorder:
    """Stands in for uproot's sink while a tree's metadata is updated: keeps the writes."""

    def __init__(self) -> None:
        self.writes: list[tuple[int, bytes]] = []

    def write(self, location: int, serialization: Any) -> int:
        data = bytes(serialization)
        self.writes.append((location, data))
        return len(data)

    def flush(self) -> None:
        pass


COALESCE_GAP = 32  # merge writes this close together into one (reading the bytes between)


def crash_ordering_problem() -> str | None:
    """Why `_crash_ordered` cannot be installed in this uproot, or None when it can.

    The hook replaces an internal method, uproot's `Tree.write_updates(sink)`, and uses the
    file sink's `read(location, n)` and `write(location, data)`; an uproot that renamed or
    changed any of them would silently lose the crash ordering, so the store checks first.
    """
    import inspect

    import uproot

    version = getattr(uproot, "__version__", "?")
    try:
        from uproot.sink.file import FileSink
        from uproot.writing._cascadetree import Tree
    except ImportError as exc:
        return f"uproot {version} has no {exc.name}"
    method = getattr(Tree, "write_updates", None)
    if method is None or list(inspect.signature(method).parameters) != ["self", "sink"]:
        return f"uproot {version} has no Tree.write_updates(self, sink)"
    for name, params in (("read", ["self", "location", "num_bytes"]), ("write", None)):
        fn = getattr(FileSink, name, None)
        if fn is None or (params and list(inspect.signature(fn).parameters)[:3] != params):
            return f"uproot {version} has no FileSink.{name} as expected"
    return None


def _crash_ordered(cascading: Any) -> bool:
    """Make a tree's metadata update survive a kill -9 at any point.

    After each extend, uproot updates the tree in place with many small writes, the tree's
    entry count first, then per branch its counters and then its basket arrays. A kill
    between two of them leaves a branch whose counters promise a basket its arrays do not
    list, and uproot refuses to read the branch. Here the same writes are applied in
    reverse order, with writes a few bytes apart merged into one: every branch's basket
    arrays land before its counters (one write), and the tree's entry count lands last, so
    the file is always either before or after the extend, as far as any reader can tell.
    Relies on uproot's Tree.write_updates(sink) (checked by `crash_ordering_problem`);
    returns whether the hook is in place.
    """
    if getattr(cascading, "_enrgdaq_ordered", False):
        return True
    original = getattr(cascading, "write_updates", None)
    if original is None:
        return False

    def write_updates(sink: Any) -> None:
        rec = _Recorder()
        original(rec)
        groups: list[tuple[int, bytearray]] = []
        for location, data in rec.writes:
            if groups:
                start, buf = groups[-1]
                gap = location - (start + len(buf))
                if 0 <= gap <= COALESCE_GAP:
                    if gap:
                        buf += sink.read(start + len(buf), gap)
                    buf += data
                    continue
            groups.append((location, bytearray(data)))
        for location, buf in reversed(groups):
            sink.write(location, bytes(buf))
        sink.flush()

    cascading.write_updates = write_updates
    cascading._enrgdaq_ordered = True
    return True


def _branch_type(plan: ColumnPlan) -> Any:
    dtype = plan.dtype if plan.dtype != np.float16 else np.dtype(np.float32)
    if plan.kind == "scalar":
        return dtype
    if plan.kind == "fixed":
        return np.dtype((dtype, (plan.width,)))
    if plan.kind == "jagged":
        return f"var * {dtype.name}"
    return "string"


class _RootFile:
    """One open file, shared by the writers of every source that writes into it."""

    def __init__(self, path: Path, *, create: bool, compression: Any) -> None:
        import uproot

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        if create:
            self.file = uproot.recreate(path, compression=compression)
        else:
            self.file = uproot.update(path)
        self.file[WRITING_KEY] = f"written by enrgdaq pid {os.getpid()}"
        self.names = _key_names(self.file.keys())

    def size(self) -> int:
        try:
            return os.path.getsize(self.path)
        except OSError:
            return 0

    def close(self) -> None:
        if not self.file.closed:
            del self.file[WRITING_KEY]
            self.file.close()


class ROOTWriter(TableWriter):
    def __init__(self, backend: ROOTBackend, handle: _RootFile, dest: Destination) -> None:
        settings: ROOTStoreConfig = dest.settings
        self.backend = backend
        self.handle = handle
        self.base = backend._shared.claims.claim(
            handle.path.resolve(), settings.tree_name or dest.source, dest.source
        )
        self.tree_name = ""
        self.schema: pa.Schema | None = None
        self.plans: list[ColumnPlan] = []
        self.counters: dict[str, str] = {}
        self.closed = False

    def _select(self, schema: pa.Schema) -> None:
        """The tree for rows of `schema`: the last version if it matches, else a new one."""
        signature = schema_signature(schema)
        f = self.handle.file
        names = self.handle.names
        version = 1
        while _version_name(self.base, version + 1) in names:
            version += 1
        name = _version_name(self.base, version)
        if name in names and self.backend.title(self.handle, name) != signature:
            name = _version_name(self.base, version + 1)
        self.plans = plan_schema(schema)
        taken = set(schema.names)
        self.counters = {}
        for plan in self.plans:
            if plan.kind == "jagged":
                counter = "n" + plan.name
                while counter in taken:
                    counter = "n" + counter
                taken.add(counter)
                self.counters[plan.name] = counter
        if name not in names:
            f.mktree(
                name,
                {p.name: _branch_type(p) for p in self.plans},
                title=signature,
                counter_name=lambda column: self.counters[column],
            )
            names.add(name)
            self.backend.titles[(self.handle.path, name)] = signature
        self.tree_name = name
        self.schema = schema

    def write(self, table: pa.Table) -> None:
        import awkward as ak

        if self.schema is None or not table.schema.equals(self.schema):
            self._select(table.schema)
        if table.num_rows == 0:
            return
        branches: dict[str, Any] = {}
        for i, plan in enumerate(self.plans):
            col = column_data(plan, table.column(i))
            if col.nulls:
                self.backend.nulls_filled += col.nulls
            if plan.kind == "jagged":
                assert col.offsets is not None
                values = (
                    col.values.astype(np.float32) if col.values.dtype == np.float16 else col.values
                )
                branches[plan.name] = ak.unflatten(values, np.diff(col.offsets))
            elif plan.kind == "string":
                branches[plan.name] = np.asarray(col.values, dtype=str)
            elif col.values.dtype == np.float16:
                branches[plan.name] = col.values.astype(np.float32)
            else:
                branches[plan.name] = col.values
        tree = self.handle.file[self.tree_name]
        if not _crash_ordered(getattr(tree, "_cascading", None)):
            self.backend.unordered_writes += 1
        tree.extend(branches)
        self.backend.baskets += 1

    def size(self) -> int:
        return self.handle.size()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.backend._release(self.handle)


class ROOTBackend(TableBackend):
    name = "root"
    extension = ".root"
    Settings = ROOTStoreConfig
    default_flush_rows = 100_000  # one basket per branch per write: make them big
    default_flush_seconds = 5.0

    def __init__(self, options: StoreOptions) -> None:
        super().__init__(options)
        self._shared: SharedFiles[_RootFile] = SharedFiles()
        self.titles: dict[tuple[Path, str], str] = {}  # (file, tree) -> title, read on reopen
        self.baskets = 0
        self.nulls_filled = 0
        self.unordered_writes = 0  # extends without the crash-ordering hook
        self.crash_ordering_problem = crash_ordering_problem()
        if self.crash_ordering_problem:
            log.warning(
                "ROOT store: crash-safe write ordering is OFF (%s). A kill -9 during a write "
                "may leave a tree uproot refuses to read. enrgdaq is tested with uproot%s: "
                "install one of those (pip install 'uproot%s').",
                self.crash_ordering_problem,
                TESTED_UPROOT,
                TESTED_UPROOT,
            )

    def title(self, handle: _RootFile, tree: str) -> str:
        return self.titles.get((handle.path, tree), "")

    def open(self, dest: Destination, schema: pa.Schema) -> TableWriter:
        handle = self._shared.acquire(dest, self._open_file)
        return ROOTWriter(self, handle, dest)

    def _open_file(self, dest: Destination) -> _RootFile:
        assert dest.path is not None
        compression = _compression(dest.settings)

        def open_file(path: Path, create: bool) -> _RootFile:
            if create:
                return _RootFile(path, create=True, compression=compression)
            reason = self._unappendable(path)
            if reason is not None:
                raise CannotAppend(reason)
            try:
                return _RootFile(path, create=False, compression=compression)
            except Exception as exc:  # uproot raises assorted errors on damaged files
                raise CannotAppend(f"uproot cannot update it: {exc!r}") from None

        return open_series(
            dest.path, overwrite=dest.overwrite, append=dest.append, open_file=open_file, log=log
        )

    def _unappendable(self, path: Path) -> str | None:
        """Why an existing file must not be appended to, or None; remembers tree titles."""
        import uproot

        try:
            with uproot.open(path) as f:
                names = _key_names(f.keys(recursive=False))
                if WRITING_KEY in names:
                    return "it was not closed cleanly (a crash while writing)"
                for name, classname in f.classnames(recursive=False).items():
                    if classname == "TTree":
                        self.titles[(path, name.split(";")[0])] = f[name].title
        except Exception as exc:
            return f"it does not open as a ROOT file: {exc!r}"
        return None

    def _release(self, handle: _RootFile) -> None:
        self._shared.release(handle)

    def close(self) -> None:
        self._shared.close_all()

    def stats(self) -> dict[str, Any]:
        return {
            "baskets": self.baskets,
            "nulls_filled": self.nulls_filled,
            "crash_ordering": self.crash_ordering_problem is None and not self.unordered_writes,
        }
