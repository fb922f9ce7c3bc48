"""Host metrics of this machine: CPU, memory, disk and network counters (psutil)."""

from __future__ import annotations

import time

from enrgdaq_core.jobs.base import Job, JobConfig, Paced


class MetricsConfig(JobConfig, kw_only=True, forbid_unknown_fields=True):
    interval_seconds: Paced = 1.0  # its step returns at once: 0 would run it unpaced
    disk_path: str = "/"


class MetricsJob(Job):
    type_name = "metrics"
    aliases = ("DAQJobPCMetrics", "pc_metrics")
    description = "Host metrics: CPU, memory, disk usage and network byte counters."
    Config = MetricsConfig

    def start(self) -> None:
        import psutil
        import pyarrow as pa

        self._psutil, self._pa = psutil, pa
        psutil.cpu_percent(None)

    def step(self) -> object:
        cfg: MetricsConfig = self.config  # type: ignore[assignment]
        ps, pa = self._psutil, self._pa
        mem = ps.virtual_memory()
        disk = ps.disk_usage(cfg.disk_path)
        net = ps.net_io_counters()
        row = {
            "timestamp": pa.array([time.time_ns()], pa.timestamp("ns", tz="UTC")),
            "cpu_percent": pa.array([ps.cpu_percent(None)], pa.float64()),
            "memory_percent": pa.array([mem.percent], pa.float64()),
            "memory_used_mb": pa.array([mem.used / 1e6], pa.float64()),
            "disk_percent": pa.array([disk.percent], pa.float64()),
            "net_sent_bytes": pa.array([net.bytes_sent], pa.uint64()),
            "net_recv_bytes": pa.array([net.bytes_recv], pa.uint64()),
        }
        return pa.RecordBatch.from_pydict(row)
