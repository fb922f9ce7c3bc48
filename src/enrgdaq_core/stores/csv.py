"""CSV files: a header once per file, rows appended, flushed so a kill -9 keeps whole lines."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from enrgdaq_core.store_config import CSVStoreConfig
from enrgdaq_core.stores.base import Backend, Destination, Writer
from enrgdaq_core.stores.paths import unique

if TYPE_CHECKING:
    import pyarrow as pa


class CSVWriter(Writer):
    def __init__(self, dest: Destination, schema: pa.Schema) -> None:
        import pyarrow.csv as pacsv

        settings: CSVStoreConfig = dest.settings
        path = dest.path
        assert path is not None
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.schema = schema
        self._pacsv = pacsv
        mode = "wb" if settings.overwrite else "ab"
        self._f: Any = open(path, mode)  # noqa: SIM115 - closed in close()
        self._header = self._f.tell() == 0

    def write(self, table: pa.Table) -> None:
        options = self._pacsv.WriteOptions(include_header=self._header)
        self._pacsv.write_csv(table, self._f, options)
        self._header = False

    def flush(self) -> None:
        self._f.flush()

    def size(self) -> int:
        return self._f.tell()

    def accepts(self, schema: pa.Schema) -> bool:
        return schema.names == self.schema.names

    def close(self) -> None:
        self._f.close()


class CSVBackend(Backend):
    name = "csv"
    extension = ".csv"
    Settings = CSVStoreConfig

    def open(self, dest: Destination, schema: pa.Schema | None) -> Writer:
        assert schema is not None and dest.path is not None
        if dest.path.exists() and dest.path.stat().st_size > 0 and not dest.settings.overwrite:
            with open(dest.path, "rb") as f:
                first = f.readline().decode(errors="replace").strip()
            header = ",".join(f'"{n}"' for n in schema.names)
            if first != header:
                dest.path = unique(dest.path)  # another layout: never mix columns in one file
        return CSVWriter(dest, schema)
