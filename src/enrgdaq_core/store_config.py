"""Per-backend store settings: `[store_config.<backend>]` in a source's TOML.

A source carries these in every message header, so a store knows where the source wants its
data without a config of its own; flags on `daq store` override them. Keys follow the seed
(ENRGDAQ) names; ours come after them.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class _FileStore(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    file_path: str = ""  # empty: "<source>.<ext>" in the working directory
    add_date: bool = False
    overwrite: bool = False
    rotate: str = ""  # time period: "30m", "1h", "1d"; empty: never
    rotate_mb: float = 0.0  # size limit per file; 0: never
    flush_rows: int = 0  # 0: the backend's default
    flush_seconds: float = 0.0


class CSVStoreConfig(_FileStore):
    use_gzip: bool = False
    use_zstd: bool = False


class ROOTStoreConfig(_FileStore):
    tree_name: str = ""  # empty: the source name
    compression_type: Literal["ZSTD", "ZLIB", "LZ4", "LZMA", "NONE"] = "ZSTD"
    compression_level: int = 5


class HDF5StoreConfig(_FileStore):
    dataset_name: str = ""  # empty: the source name (one group per source)
    compression: Literal["gzip", "lzf", "none"] = "gzip"


class RawStoreConfig(_FileStore):
    payload_only: bool = False


class MySQLStoreConfig(
    msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    table_name: str = ""
    flush_rows: int = 0
    flush_seconds: float = 0.0
    # auto: ns timestamps as BIGINT ns (exact), coarser ones as DATETIME(6) (exact)
    timestamp_type: Literal["auto", "datetime", "bigint"] = "auto"
    list_type: Literal["blob", "json"] = "blob"  # numeric lists (waveforms): packed or JSON


class RedisStoreConfig(
    msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    key: str = ""
    key_expiration_days: int | None = None
    use_timeseries: bool | None = None
    flush_rows: int = 0
    flush_seconds: float = 0.0
    # "lists": the seed's RPUSH per column; "timeseries": RedisTimeSeries (what
    # use_timeseries = true asks for); "stream": one Redis stream per source, ids = row time
    # in ms, range-queried with XRANGE on plain Redis (no module)
    layout: Literal["", "lists", "timeseries", "stream"] = ""
    timestamp_column: str = "timestamp"  # the row time for the time-ordered layouts


class MemoryStoreConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class StoreConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    csv: CSVStoreConfig | None = None
    root: ROOTStoreConfig | None = None
    hdf5: HDF5StoreConfig | None = None
    mysql: MySQLStoreConfig | None = None
    redis: RedisStoreConfig | None = None
    raw: RawStoreConfig | None = None
    memory: MemoryStoreConfig | None = None

    def backends(self) -> list[str]:
        return [name for name in self.__struct_fields__ if getattr(self, name) is not None]

    def for_header(self) -> dict[str, dict[str, Any]]:
        """The settings as they travel in message headers: only the configured backends."""
        return {name: msgspec.to_builtins(getattr(self, name)) for name in self.backends()}


BACKEND_CONFIGS: dict[str, type[msgspec.Struct]] = {
    "csv": CSVStoreConfig,
    "root": ROOTStoreConfig,
    "hdf5": HDF5StoreConfig,
    "mysql": MySQLStoreConfig,
    "redis": RedisStoreConfig,
    "raw": RawStoreConfig,
    "memory": MemoryStoreConfig,
}
