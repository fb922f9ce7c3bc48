"""The load a benchmark producer sends: a job that returns the same prebuilt table every step.

Run by the real `daq job run` (as `daq_job_type = "_bench_job:ConstJob"`, with this directory on
PYTHONPATH), so the producer side of a benchmark is the shipped job runtime, Source and
Publisher, not a copy of them. The table is built once: the benchmark measures the transport
and the envelope codec (encoding runs every step), not the job's own arithmetic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from enrgdaq_core.jobs.base import Job, JobConfig

if TYPE_CHECKING:
    import pyarrow as pa

Shape = Literal["small", "large"]

LARGE_ROWS = 512  # events of 4 channels x 1024 int16 samples: 4 MiB of waveforms
LARGE_CHANNELS = 4
LARGE_SAMPLES = 1024


def make_table(shape: Shape) -> pa.RecordBatch:
    """`small`: one row like the seed's DAQJobTest; `large`: 4 MiB of digitizer waveforms."""
    import numpy as np
    import pyarrow as pa

    if shape == "small":
        schema = pa.schema(
            [("timestamp", pa.int64()), ("A", pa.int64()), ("B", pa.int64()), ("C", pa.int64())]
        )
        return pa.RecordBatch.from_pylist(
            [{"timestamp": 1_700_000_000_000, "A": 1, "B": 2, "C": 3}], schema=schema
        )
    rng = np.random.default_rng(1)
    cols: list[pa.Array] = [pa.array(np.arange(LARGE_ROWS, dtype=np.uint64))]
    names = ["event"]
    for ch in range(LARGE_CHANNELS):
        flat = rng.integers(900, 1100, size=LARGE_ROWS * LARGE_SAMPLES, dtype=np.int16)
        cols.append(pa.FixedSizeListArray.from_arrays(pa.array(flat), LARGE_SAMPLES))
        names.append(f"ch{ch}")
    return pa.RecordBatch.from_arrays(cols, names=names)


class ConstConfig(JobConfig, kw_only=True, forbid_unknown_fields=True):
    interval_seconds: float = 0.0
    shape: Shape = "small"


class ConstJob(Job):
    type_name = "bench-const"
    description = "Benchmark load: the same prebuilt table every step."
    Config = ConstConfig

    def start(self) -> None:
        cfg: ConstConfig = self.config  # type: ignore[assignment]
        self._table = make_table(cfg.shape)

    def step(self) -> object:
        return self._table
