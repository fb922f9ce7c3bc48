"""The seed system's `DAQJobTest`: random integers A, B, C with a millisecond timestamp."""

from __future__ import annotations

import random
import time

from enrgdaq_core.jobs.base import Job, JobConfig, Paced


class TestJobConfig(JobConfig, kw_only=True, forbid_unknown_fields=True):
    interval_seconds: Paced = 1.0  # its step returns at once: 0 would run it unpaced
    rand_min: int = 0
    rand_max: int = 100


class TestJob(Job):
    type_name = "test"
    aliases = ("DAQJobTest",)
    description = "Random integers A, B, C and a timestamp in ms, as the seed's DAQJobTest."
    Config = TestJobConfig

    def start(self) -> None:
        import pyarrow as pa

        self._pa = pa
        self._schema = pa.schema(
            [("timestamp", pa.int64()), ("A", pa.int64()), ("B", pa.int64()), ("C", pa.int64())]
        )

    def step(self) -> object:
        cfg: TestJobConfig = self.config  # type: ignore[assignment]
        lo, hi = sorted((cfg.rand_min, cfg.rand_max))
        row = [int(time.time() * 1000)] + [random.randint(lo, hi) for _ in range(3)]
        return self._pa.RecordBatch.from_pylist(
            [dict(zip(self._schema.names, row, strict=True))], schema=self._schema
        )
