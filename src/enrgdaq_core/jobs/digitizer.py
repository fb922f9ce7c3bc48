"""A simulated digitizer: events of N channels x M samples at a set rate (the load generator)."""

from __future__ import annotations

import time
from typing import Annotated, Literal

import msgspec

from enrgdaq_core.jobs.base import Job, JobConfig, Paced

MAX_CHANNELS = 256
MAX_SAMPLES = 1 << 20
MAX_STEP_SAMPLES = 1 << 26  # samples made per step: bounds one step's memory (~0.5 GB)


class DigitizerConfig(JobConfig, kw_only=True, forbid_unknown_fields=True):
    interval_seconds: Paced = 0.01  # its step does not block: 0 would run it unpaced
    channels: Annotated[int, msgspec.Meta(ge=1, le=MAX_CHANNELS)] = 4
    samples: Annotated[int, msgspec.Meta(ge=1, le=MAX_SAMPLES)] = 1024
    event_rate: Annotated[float, msgspec.Meta(gt=0, le=1e6)] = (
        100.0  # events per second; spread over steps of interval_seconds
    )
    baseline: int = 1000
    pulse_height: int = 500
    noise: Annotated[float, msgspec.Meta(ge=0)] = 5.0
    output: Literal["table", "raw"] = "table"
    seed: int | None = None

    def __post_init__(self) -> None:
        per_step = (self.event_rate * self.interval_seconds + 1) * self.channels * self.samples
        if per_step > MAX_STEP_SAMPLES:
            raise ValueError(
                f"event_rate: {self.event_rate:g} events/s x interval_seconds "
                f"{self.interval_seconds:g} x channels {self.channels} x samples "
                f"{self.samples} is {per_step:.3g} samples per step, expected at most "
                f"{MAX_STEP_SAMPLES} (lower one of them)"
            )


class DigitizerJob(Job):
    type_name = "digitizer"
    description = "Simulated digitizer: events of channels x samples waveforms at an event rate."
    Config = DigitizerConfig

    def start(self) -> None:
        import numpy as np
        import pyarrow as pa

        cfg: DigitizerConfig = self.config  # type: ignore[assignment]
        self._np, self._pa = np, pa
        self._rng = np.random.default_rng(cfg.seed)
        self._event = 0
        self._owed = 0.0
        t = np.arange(cfg.samples)
        peak = cfg.samples // 4
        self._pulse = np.where(t >= peak, np.exp(-(t - peak) / max(cfg.samples / 20, 1)), 0.0)
        self._schema = pa.schema(
            [
                ("event", pa.uint64()),
                ("timestamp", pa.timestamp("ns", tz="UTC")),
                ("trigger_channel", pa.int16()),
            ]
            + [(f"ch{i}", pa.list_(pa.int16(), cfg.samples)) for i in range(cfg.channels)]
        )

    def step(self) -> object:
        cfg: DigitizerConfig = self.config  # type: ignore[assignment]
        np, pa = self._np, self._pa
        self._owed += cfg.event_rate * (self.interval or 1.0)
        n = int(self._owed)
        if n == 0:
            return None
        self._owed -= n
        shape = (n, cfg.channels, cfg.samples)
        noise = self._rng.normal(0.0, cfg.noise, size=shape)
        amp = self._rng.uniform(0.2, 1.0, size=(n, cfg.channels, 1)) * cfg.pulse_height
        waves = (cfg.baseline - amp * self._pulse + noise).astype(np.int16)
        first = self._event
        self._event += n
        if cfg.output == "raw":
            return waves.tobytes()
        now = time.time_ns()
        cols = [
            pa.array(np.arange(first, first + n, dtype=np.uint64)),
            pa.array(np.full(n, now, dtype=np.int64)).cast(pa.timestamp("ns", tz="UTC")),
            pa.array(self._rng.integers(0, cfg.channels, size=n, dtype=np.int16)),
        ]
        for ch in range(cfg.channels):
            flat = pa.array(np.ascontiguousarray(waves[:, ch, :]).ravel())
            cols.append(pa.FixedSizeListArray.from_arrays(flat, cfg.samples))
        return pa.RecordBatch.from_arrays(cols, schema=self._schema)
