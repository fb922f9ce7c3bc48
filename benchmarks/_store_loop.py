"""The store loop alone, shared by the store benchmarks: the ceiling any backend can reach."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def run_null_store(stream: Path, backend: str) -> float:
    """Seconds for the store loop to take `stream` into a backend that discards rows
    (stream reading, envelope decoding, batching); `backend` names whose settings it reads."""
    import pyarrow as pa

    from enrgdaq_core.channels import StreamInput
    from enrgdaq_core.signals import StopFlag
    from enrgdaq_core.store_config import BACKEND_CONFIGS
    from enrgdaq_core.stores.base import StoreOptions, TableBackend, TableWriter
    from enrgdaq_core.stores.runner import StoreRunner

    class Discard(TableWriter):
        def write(self, table: pa.Table) -> None:
            pass

    class Null(TableBackend):
        name = backend
        Settings = BACKEND_CONFIGS[backend]

        def open(self, dest: Any, schema: Any) -> TableWriter:
            return Discard()

    runner = StoreRunner(Null(StoreOptions()), name="bench-null")
    with stream.open("rb") as f:
        t0 = time.perf_counter()
        runner.run(StreamInput(f), StopFlag(), exit_on_eos=True)
        return time.perf_counter() - t0
