"""A simulated slow-control sensor: N channels with noise and drift, one row per interval."""

from __future__ import annotations

import random
import time
from typing import Annotated

import msgspec

from enrgdaq_core.jobs.base import Job, JobConfig, Paced


class SensorConfig(JobConfig, kw_only=True, forbid_unknown_fields=True):
    interval_seconds: Paced = 1.0  # its step returns at once: 0 would run it unpaced
    channels: Annotated[int, msgspec.Meta(ge=0, le=4096)] = 4  # columns of one table
    mean: float = 20.0
    noise: Annotated[float, msgspec.Meta(ge=0)] = 0.1
    drift_per_hour: float = 0.0
    rows_per_step: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1
    seed: int | None = None


class SensorJob(Job):
    type_name = "sensor"
    description = "Simulated sensor: channels of a value with noise and drift."
    Config = SensorConfig

    def start(self) -> None:
        import pyarrow as pa

        cfg: SensorConfig = self.config  # type: ignore[assignment]
        self._pa = pa
        self._rng = random.Random(cfg.seed)
        self._t0 = time.time()
        self._schema = pa.schema(
            [("timestamp", pa.timestamp("ns", tz="UTC"))]
            + [(f"ch{i}", pa.float64()) for i in range(cfg.channels)]
        )

    def step(self) -> object:
        cfg: SensorConfig = self.config  # type: ignore[assignment]
        pa = self._pa
        n = cfg.rows_per_step
        now = time.time_ns()
        drift = cfg.drift_per_hour * (time.time() - self._t0) / 3600.0
        gauss = self._rng.gauss
        columns = [pa.array([now + i for i in range(n)], pa.timestamp("ns", tz="UTC"))]
        for _ in range(cfg.channels):
            columns.append(pa.array([cfg.mean + drift + gauss(0.0, cfg.noise) for _ in range(n)]))
        return pa.RecordBatch.from_arrays(columns, schema=self._schema)
