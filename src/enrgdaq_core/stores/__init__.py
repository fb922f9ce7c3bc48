"""Stores: one module per backend, one runner (`runner.py`) that feeds any of them.

A backend turns batches of rows (or whole envelopes, for the raw store) into writes; the
runner owns everything common: routing by header, batching, flush timing, rotation, schema
changes, retries while a server is down, stats, and a clean stop.
"""

from __future__ import annotations

import importlib

from enrgdaq_core.stores.base import Backend

_BACKENDS = {
    "csv": "enrgdaq_core.stores.csv:CSVBackend",
    "root": "enrgdaq_core.stores.root:ROOTBackend",
    "hdf5": "enrgdaq_core.stores.hdf5:HDF5Backend",
    "mysql": "enrgdaq_core.stores.mysql:MySQLBackend",
    "redis": "enrgdaq_core.stores.redis:RedisBackend",
    "raw": "enrgdaq_core.stores.raw:RawBackend",
}

# The seed's store jobs (`daq_job_type = "DAQJobStoreCSV"` in a store TOML).
SEED_STORE_TYPES = {
    "DAQJobStoreCSV": "csv",
    "DAQJobStoreROOT": "root",
    "DAQJobStoreHDF5": "hdf5",
    "DAQJobStoreMySQL": "mysql",
    "DAQJobStoreRedis": "redis",
    "DAQJobStoreRaw": "raw",
}


def names() -> list[str]:
    return list(_BACKENDS)


def backend_class(name: str) -> type[Backend]:
    try:
        path = _BACKENDS[name]
    except KeyError:
        raise LookupError(
            f"unknown store backend {name!r} (known: {', '.join(_BACKENDS)})"
        ) from None
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)
