"""Stores: one module per backend, one runner (`runner.py`) that feeds any of them.

A backend turns batches of rows (or whole envelopes, for the raw store) into writes; the
runner owns everything common: routing by header, batching, flush timing, rotation, schema
changes, retries while a server is down, stats, and a clean stop.

Which backends exist is `enrgdaq_core.store_config.BACKENDS`; the look-ups here derive from it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from enrgdaq_core.store_config import BACKENDS, BackendSpec

if TYPE_CHECKING:
    from enrgdaq_core.stores.base import Backend

_SPECS: dict[str, BackendSpec] = {b.name: b for b in BACKENDS}

# The seed's store jobs (`daq_job_type = "DAQJobStoreCSV"` in a store TOML) -> backend name.
SEED_STORE_TYPES: dict[str, str] = {b.seed_type: b.name for b in BACKENDS if b.seed_type}


def names() -> list[str]:
    """Every backend, in the table's order."""
    return list(_SPECS)


def process_names() -> list[str]:
    """The backends a store process runs (`daq store`, `daq up`): not the in-process ones."""
    return [b.name for b in BACKENDS if not b.in_process]


def spec(name: str) -> BackendSpec:
    """The registry row of backend `name` (LookupError naming the known ones)."""
    try:
        return _SPECS[name]
    except KeyError:
        raise LookupError(f"unknown store backend {name!r} (known: {', '.join(_SPECS)})") from None


def process_refusal(name: str) -> str | None:
    """Why `name` cannot run as a store process (`daq store`, `daq up`); None when it can."""
    try:
        entry = spec(name)
    except LookupError as exc:
        return str(exc)
    if not entry.in_process:
        return None
    module = entry.backend.partition(":")[0]
    return (
        f"{name} keeps its data in the memory of the Python process that runs it, for tests "
        f"and notebooks ({module}); daq store and daq up cannot run it"
    )


def backend_class(name: str) -> type[Backend]:
    """The backend class of `name`, imported only now (pyarrow, uproot and h5py load late)."""
    module, _, attr = spec(name).backend.partition(":")
    return getattr(importlib.import_module(module), attr)


__all__ = [
    "SEED_STORE_TYPES",
    "backend_class",
    "names",
    "process_names",
    "process_refusal",
    "spec",
]
