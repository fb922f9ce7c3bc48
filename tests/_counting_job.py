"""A counting source for fault tests: row `seq` of a process is its step number (0, 1, ...),
which is its message's sequence number; `pid` tells its incarnations apart in the stores."""

from __future__ import annotations

import os
import time

from enrgdaq_core.jobs.base import Job, JobConfig, Paced


class CountingConfig(JobConfig, kw_only=True, forbid_unknown_fields=True):
    interval_seconds: Paced = 0.004


class CountingJob(Job):
    type_name = "counting"
    description = "One row per step: timestamp, seq (the step number) and pid."
    Config = CountingConfig

    def start(self) -> None:
        import pyarrow as pa

        self._pa = pa
        self._n = 0
        self._pid = os.getpid()
        self._schema = pa.schema(
            [("timestamp", pa.timestamp("ns", tz="UTC")), ("seq", pa.int64()), ("pid", pa.int64())]
        )

    def step(self) -> object:
        pa = self._pa
        batch = pa.RecordBatch.from_arrays(
            [
                pa.array([time.time_ns()], pa.timestamp("ns", tz="UTC")),
                pa.array([self._n], pa.int64()),
                pa.array([self._pid], pa.int64()),
            ],
            schema=self._schema,
        )
        self._n += 1
        return batch
