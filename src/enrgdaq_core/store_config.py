"""Per-backend store settings: `[store_config.<backend>]` in a source's TOML.

A source carries these in every message header, so a store knows where the source wants its
data without a config of its own; flags on `daq store` override them. Keys follow the seed
(ENRGDAQ) names; ours come after them.

`BACKENDS` is the one list of store backends; everything else that names them is derived
from it. This module imports only msgspec, so `daq --help` and config loading stay cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec

__all__ = [
    "BACKENDS",
    "BACKEND_CONFIGS",
    "BackendSpec",
    "CSVStoreConfig",
    "HDF5StoreConfig",
    "MemoryStoreConfig",
    "MySQLStoreConfig",
    "ROOTStoreConfig",
    "RawStoreConfig",
    "RedisStoreConfig",
    "StoreConfig",
]


Count = Annotated[int, msgspec.Meta(ge=0)]
Seconds = Annotated[float, msgspec.Meta(ge=0)]
Megabytes = Annotated[float, msgspec.Meta(ge=0)]


class _FileStore(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Keys every file backend takes (docs/stores.md: file names, rotation, batching).

    `file_path` from a message header stays inside the store's out_dir and `overwrite` from
    a header is ignored (docs/stores.md, Header settings are confined).
    """

    file_path: str = ""  # empty: "<source>.<ext>" in the store's out_dir
    add_date: bool = False
    overwrite: bool = False  # honoured from the store's own settings only
    rotate: str = ""  # time period: "30m", "1h", "1d"; empty: never
    rotate_mb: Megabytes = 0.0  # size limit per file; 0: never
    flush_rows: Count = 0  # 0: the backend's default
    flush_seconds: Seconds = 0.0

    def __post_init__(self) -> None:
        # checked here, so a bad period is refused by the config loader and in a header,
        # not after the first write
        if self.rotate:
            from enrgdaq_core.timefmt import parse_period

            try:
                parse_period(self.rotate)
            except ValueError as exc:
                raise ValueError(f"rotate: {exc}") from None


class CSVStoreConfig(_FileStore):
    """`[store_config.csv]`: file keys, plus gzip or zstd compression."""

    use_gzip: bool = False
    use_zstd: bool = False


class ROOTStoreConfig(_FileStore):
    """`[store_config.root]`: file keys, the tree name and the file's compression."""

    tree_name: str = ""  # empty: the source name
    compression_type: Literal["ZSTD", "ZLIB", "LZ4", "LZMA", "NONE"] = "ZSTD"
    compression_level: Annotated[int, msgspec.Meta(ge=0)] = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        top = _ROOT_LEVELS.get(self.compression_type)
        if top is not None and self.compression_level > top:
            raise ValueError(
                f"compression_level: expected 0 to {top} for {self.compression_type}, "
                f"got {self.compression_level}"
            )


_ROOT_LEVELS = {"ZSTD": 22, "ZLIB": 9, "LZ4": 12, "LZMA": 9}  # uproot's ranges


class HDF5StoreConfig(_FileStore):
    """`[store_config.hdf5]`: file keys, the group name and the dataset compression."""

    dataset_name: str = ""  # empty: the source name (one group per source)
    compression: Literal["gzip", "lzf", "none"] = "gzip"


class RawStoreConfig(_FileStore):
    """`[store_config.raw]`: file keys; `payload_only` writes bare payloads."""

    payload_only: bool = False


class MySQLStoreConfig(
    msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """`[store_config.mysql]`: the table and how timestamps and lists are stored."""

    table_name: str = ""
    flush_rows: Count = 0
    flush_seconds: Seconds = 0.0
    # auto: ns timestamps as BIGINT ns (exact), coarser ones as DATETIME(6) (exact)
    timestamp_type: Literal["auto", "datetime", "bigint"] = "auto"
    list_type: Literal["blob", "json"] = "blob"  # numeric lists (waveforms): packed or JSON


class RedisStoreConfig(
    msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """`[store_config.redis]`: the key, its expiry and the layout (lists, timeseries, stream)."""

    key: str = ""
    key_expiration_days: Annotated[int, msgspec.Meta(gt=0)] | None = None
    use_timeseries: bool | None = None
    flush_rows: Count = 0
    flush_seconds: Seconds = 0.0
    # "lists": the seed's RPUSH per column; "timeseries": RedisTimeSeries (what
    # use_timeseries = true asks for); "stream": one Redis stream per source, ids = row time
    # in ms, range-queried with XRANGE on plain Redis (no module)
    layout: Literal["", "lists", "timeseries", "stream"] = ""
    timestamp_column: str = "timestamp"  # the row time for the time-ordered layouts


class MemoryStoreConfig(
    msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """The in-process store (`enrgdaq_core.stores.memory`): batching only, it has no files."""

    flush_rows: Count = 0  # 0: every message is readable as soon as the runner handled it
    flush_seconds: Seconds = 0.0


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """One store backend: the single entry every list of backends is derived from."""

    name: str  # `daq store NAME`, `[store_config.NAME]`, the `store` key of headers
    backend: str  # "module:Class" of its Backend, imported only when a store needs it
    settings: type[msgspec.Struct]  # the keys of `[store_config.NAME]`
    seed_type: str = ""  # the seed's store job (`daq_job_type` of a store TOML); "": none
    in_process: bool = False  # keeps data in the caller's memory: no store process runs it


# The one table of store backends. StoreConfig, BACKEND_CONFIGS, the seed store types, the
# `daq store` choice and help, and what `daq up` accepts all come from it.
BACKENDS: tuple[BackendSpec, ...] = (
    BackendSpec("csv", "enrgdaq_core.stores.csv:CSVBackend", CSVStoreConfig, "DAQJobStoreCSV"),
    BackendSpec("root", "enrgdaq_core.stores.root:ROOTBackend", ROOTStoreConfig, "DAQJobStoreROOT"),
    BackendSpec("hdf5", "enrgdaq_core.stores.hdf5:HDF5Backend", HDF5StoreConfig, "DAQJobStoreHDF5"),
    BackendSpec(
        "mysql", "enrgdaq_core.stores.mysql:MySQLBackend", MySQLStoreConfig, "DAQJobStoreMySQL"
    ),
    BackendSpec(
        "redis", "enrgdaq_core.stores.redis:RedisBackend", RedisStoreConfig, "DAQJobStoreRedis"
    ),
    BackendSpec("raw", "enrgdaq_core.stores.raw:RawBackend", RawStoreConfig, "DAQJobStoreRaw"),
    BackendSpec(
        "memory",
        "enrgdaq_core.stores.memory:MemoryBackend",
        MemoryStoreConfig,
        in_process=True,
    ),
)

BACKEND_CONFIGS: dict[str, type[msgspec.Struct]] = {b.name: b.settings for b in BACKENDS}


class _StoreConfigBase(
    msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    def backends(self) -> list[str]:
        """The backends this source configured, in the table's order."""
        return [name for name in self.__struct_fields__ if getattr(self, name) is not None]

    def for_header(self) -> dict[str, dict[str, Any]]:
        """The settings as they travel in message headers: only the configured backends."""
        return {name: msgspec.to_builtins(getattr(self, name)) for name in self.backends()}


# `[store_config]`: one optional table per backend of BACKENDS, in its order. (A struct made
# from the table, so a backend added to BACKENDS is a valid key with nothing else to edit.)
StoreConfig = msgspec.defstruct(
    "StoreConfig",
    [(b.name, b.settings | None, None) for b in BACKENDS],
    bases=(_StoreConfigBase,),
    module=__name__,
    kw_only=True,
    forbid_unknown_fields=True,
    omit_defaults=True,
    namespace={
        "__doc__": "`[store_config]` of a job: one optional `[store_config.<backend>]` table "
        "per backend; the tables given travel in every header of the job's messages."
    },
)
