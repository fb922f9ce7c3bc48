"""CSV files: a header once per file, rows appended, each write flushed so a kill -9 keeps it.

Values are written by Arrow's CSV writer: numbers as shortest round-trip decimals (`nan`,
`inf` for floats), booleans `true`/`false`, strings quoted, nulls empty, timestamps ISO 8601
with their full precision and zone (`2026-11-25 14:30:00.123456789Z` for UTC). Columns
Arrow cannot write as text are converted: lists (waveforms) become JSON arrays in one field
(`"[12,15,-3]"`, floats may be `NaN`/`Infinity`), binary becomes base64, anything nested
becomes JSON. docs/stores.md has the reader recipes.

Compressed output writes one complete compressed unit per write: a zstd frame (`use_zstd`,
`.csv.zst`) or a gzip member (`use_gzip`, `.csv.gz`). Both formats define a file as the
concatenation of such units, so pandas and zstdcat/zcat read the whole file, and a kill -9
loses at most the unit being written.
"""

from __future__ import annotations

import base64
import gzip
import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enrgdaq_core.store_config import CSVStoreConfig
from enrgdaq_core.stores._columns import json_strings
from enrgdaq_core.stores._shared_files import Claims
from enrgdaq_core.stores.base import Destination, TableBackend, TableWriter
from enrgdaq_core.stores.paths import CannotAppend, open_series, split_name

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger("enrgdaq.store.csv")

ZSTD_LEVEL = 3
GZIP_LEVEL = 6


def _compression(path: Path) -> str:
    ext = split_name(path.name)[1].lower()
    if ext.endswith(".zst"):
        return "zstd"
    if ext.endswith(".gz"):
        return "gzip"
    return ""


def _json_lists(arr: pa.Array) -> pa.Array:
    """A list array as JSON array strings, vectorised for lists of numbers and booleans."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if len(arr) == 0:
        return pa.array([], pa.string())
    if pa.types.is_fixed_size_list(arr.type) or pa.types.is_large_list(arr.type):
        arr = arr.cast(pa.list_(arr.type.value_type))
    offsets = arr.offsets
    start = offsets[0]
    values = arr.values.slice(start.as_py(), (offsets[-1].as_py() - start.as_py()))
    offsets = pc.subtract(offsets, start)  # a fresh array: from_arrays refuses sliced offsets
    vtype = values.type
    if pa.types.is_integer(vtype) or pa.types.is_boolean(vtype):
        text = values.cast(pa.string())
    elif pa.types.is_floating(vtype):
        wide = values.cast(pa.float64())
        # float32 prints its own shortest form (0.1, not 0.10000000149011612)
        text = values.cast(pa.string()) if pa.types.is_float32(vtype) else wide.cast(pa.string())
        text = pc.if_else(pc.is_nan(wide), "NaN", text)
        text = pc.if_else(pc.equal(wide, float("inf")), "Infinity", text)
        text = pc.if_else(pc.equal(wide, float("-inf")), "-Infinity", text)
    else:
        return _json_python(arr)
    text = pc.fill_null(text, "null")
    lists = pa.ListArray.from_arrays(offsets, text, mask=arr.is_null())
    joined = pc.binary_join(lists, ",")
    return pc.binary_join_element_wise("[", joined, "]", "")


def _json_python(arr: pa.Array) -> pa.Array:
    import pyarrow as pa

    return pa.array(json_strings(arr), pa.string())


def _text_column(arr: pa.Array) -> pa.Array:
    """A column as Arrow's CSV writer can write it (unchanged when it already can)."""
    import pyarrow as pa

    t = arr.type
    if pa.types.is_dictionary(t):
        return _text_column(arr.dictionary_decode())
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _json_lists(arr)
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return pa.array(
            [None if v is None else base64.b64encode(v).decode() for v in arr.to_pylist()],
            pa.string(),
        )
    if pa.types.is_nested(t):  # struct, map, list views, unions
        return _json_python(arr)
    return arr


def _needs_text(t: pa.DataType) -> bool:
    import pyarrow as pa

    return (
        pa.types.is_dictionary(t)
        or pa.types.is_nested(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_fixed_size_binary(t)
    )


def csv_table(table: pa.Table) -> pa.Table:
    """`table` with every column in a form the CSV writer takes (see the module docstring)."""
    import pyarrow as pa

    if not any(_needs_text(f.type) for f in table.schema):
        return table
    columns = []
    for f, col in zip(table.schema, table.columns, strict=True):
        if _needs_text(f.type):
            col = pa.chunked_array([_text_column(c) for c in col.chunks], pa.string())
        columns.append(col)
    return pa.table(columns, names=table.schema.names)


def header_line(schema: pa.Schema) -> bytes:
    """The header exactly as the writer puts it at the top of a file."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    buf = io.BytesIO()
    empty = pa.table({n: pa.array([], pa.null()) for n in schema.names})
    pacsv.write_csv(empty, buf, pacsv.WriteOptions(include_header=True))
    return buf.getvalue()


class CSVWriter(TableWriter):
    def __init__(
        self,
        path: Path,
        schema: pa.Schema,
        *,
        truncate: bool = False,
    ) -> None:
        import pyarrow.csv as pacsv

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.schema = schema
        self._pacsv = pacsv
        self.compression = _compression(path)
        self._zstd: Any = None
        if self.compression == "zstd":
            import zstandard

            self._zstd = zstandard.ZstdCompressor(
                level=ZSTD_LEVEL, write_checksum=True, write_content_size=True
            )
        self._f: Any = open(path, "wb" if truncate else "ab")  # noqa: SIM115 - closed in close()
        self._size = self._f.tell()
        self._header = self._size == 0

    def write(self, table: pa.Table) -> None:
        import pyarrow as pa

        sink = pa.BufferOutputStream()  # the whole write in memory, then one write() call
        options = self._pacsv.WriteOptions(include_header=self._header)
        self._pacsv.write_csv(csv_table(table), sink, options)
        data: Any = memoryview(sink.getvalue())
        if self.compression == "zstd":
            data = self._zstd.compress(data)
        elif self.compression == "gzip":
            data = gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)
        self._f.write(data)  # one write: a frame or whole lines, never half of one
        self._size += len(data)
        self._header = False

    def flush(self) -> None:
        self._f.flush()

    def size(self) -> int:
        return self._size

    def accepts(self, schema: pa.Schema) -> bool:
        """Any change (a column added, removed, renamed or retyped) opens a new file part."""
        return schema.equals(self.schema)

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


class CSVBackend(TableBackend):
    name = "csv"
    extension = ".csv"
    Settings = CSVStoreConfig

    def __init__(self, options: Any) -> None:
        super().__init__(options)
        self._claims = Claims()  # a file is one source's: a second one gets its own name

    def extension_for(self, settings: Any) -> str:
        if settings.use_zstd:
            return ".csv.zst"
        if settings.use_gzip:
            return ".csv.gz"
        return self.extension

    def open(self, dest: Destination, schema: pa.Schema) -> TableWriter:
        assert dest.path is not None
        path = dest.path
        # Two sources, one file name: never mix their rows; the second gets its own file.
        stem, ext = split_name(path.name)
        path = path.with_name(
            self._claims.claim((path.parent.resolve(), ext), stem, dest.source) + ext
        )

        def open_file(p: Path, create: bool) -> CSVWriter:
            if not create:
                _check_append(p, schema)
            return CSVWriter(p, schema, truncate=create)

        writer = open_series(
            path, overwrite=dest.overwrite, append=dest.append, open_file=open_file, log=log
        )
        dest.path = writer.path
        return writer


def _check_append(path: Path, schema: pa.Schema) -> None:
    """Raise CannotAppend unless rows of `schema` may be appended to the existing `path`."""
    if path.stat().st_size == 0:
        return
    if _compression(path):
        raise CannotAppend("compressed files are never appended to after a restart", warn=False)
    with open(path, "rb") as f:
        first = f.readline()
        f.seek(-1, 2)
        tail = f.read(1)
    if first != header_line(schema):
        raise CannotAppend("its columns differ", warn=False)
    if tail != b"\n":
        raise CannotAppend("it ends in a partial line (a crash mid-write)", warn=False)
