"""Prometheus exporter: the Monitor's view at `/metrics`, through the official client library.

A custom collector reads the Monitor at scrape time, so what Grafana shows is exactly what
`daq stats` shows. Every piece is labelled `node` and `piece`; per-source figures add `source`.
Pieces that stopped reporting keep their last figures with `daq_piece_up` 0 (stale), they do
not vanish. The names below are the documented interface (docs/metrics.md); a test keeps the
two in step.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

if TYPE_CHECKING:
    from enrgdaq_core.monitor import Monitor, PieceView

DEFAULT_PORT = 9464
PIECE = ("node", "piece")


@dataclass(frozen=True)
class MetricSpec:
    name: str  # as exposed (counters end in _total)
    type: str  # counter, gauge or summary
    help: str
    labels: tuple[str, ...]


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "daq_piece_up",
        "gauge",
        "1 while the piece reports, 0 once stale or stopped.",
        (*PIECE, "role"),
    ),
    MetricSpec(
        "daq_piece_status",
        "gauge",
        "1 for the piece's current status (ok, lossy, alert, stale, stopped).",
        (*PIECE, "status"),
    ),
    MetricSpec("daq_report_age_seconds", "gauge", "Seconds since the piece's last report.", PIECE),
    MetricSpec("daq_uptime_seconds", "gauge", "Seconds since the piece's process started.", PIECE),
    MetricSpec("daq_messages_in_total", "counter", "Messages received.", PIECE),
    MetricSpec(
        "daq_messages_out_total", "counter", "Messages sent (or written, for a store).", PIECE
    ),
    MetricSpec("daq_bytes_in_total", "counter", "Payload bytes received.", PIECE),
    MetricSpec("daq_bytes_out_total", "counter", "Payload bytes sent.", PIECE),
    MetricSpec("daq_rows_in_total", "counter", "Table rows received.", PIECE),
    MetricSpec("daq_rows_out_total", "counter", "Table rows sent or written.", PIECE),
    MetricSpec(
        "daq_messages_in_rate", "gauge", "Messages/s received over the last interval.", PIECE
    ),
    MetricSpec("daq_messages_out_rate", "gauge", "Messages/s sent over the last interval.", PIECE),
    MetricSpec("daq_bytes_in_rate", "gauge", "Bytes/s received over the last interval.", PIECE),
    MetricSpec("daq_bytes_out_rate", "gauge", "Bytes/s sent over the last interval.", PIECE),
    MetricSpec(
        "daq_lost_messages_total",
        "counter",
        "Messages missed, from per-source sequence gaps.",
        (*PIECE, "source"),
    ),
    MetricSpec(
        "daq_undecodable_messages_total", "counter", "Messages that could not be decoded.", PIECE
    ),
    MetricSpec(
        "daq_duplicate_messages_total",
        "counter",
        "Messages seen before (same source, epoch, sequence number).",
        PIECE,
    ),
    MetricSpec(
        "daq_sequence_jumps_total",
        "counter",
        "Lone sequence numbers far off their source's sequence (not loss).",
        PIECE,
    ),
    MetricSpec(
        "daq_out_of_epoch_messages_total",
        "counter",
        "Messages of an older epoch than their source's current one (not a restart).",
        PIECE,
    ),
    MetricSpec(
        "daq_latency_seconds",
        "summary",
        "End-to-end latency: quantiles 0.5, 0.99 and 1 (the max) over the last interval; "
        "_sum and _count since the piece started.",
        PIECE,  # the quantile samples add `quantile`
    ),
    MetricSpec(
        "daq_queue_depth",
        "gauge",
        "Messages or rows waiting inside the piece (a store's pending rows).",
        PIECE,
    ),
    MetricSpec("daq_flush_duration_seconds", "gauge", "Duration of a store's last flush.", PIECE),
    MetricSpec("daq_restarts_total", "counter", "Restarts of the piece.", PIECE),
    MetricSpec(
        "daq_cpu_percent", "gauge", "CPU use of the piece's process (100 = one core).", PIECE
    ),
    MetricSpec(
        "daq_resident_memory_bytes", "gauge", "Resident memory of the piece's process.", PIECE
    ),
    MetricSpec(
        "daq_broker_topic_messages_total",
        "counter",
        "Messages through the broker, by topic.",
        (*PIECE, "topic"),
    ),
    MetricSpec(
        "daq_broker_topic_bytes_total",
        "counter",
        "Bytes through the broker, by topic.",
        (*PIECE, "topic"),
    ),
    MetricSpec(
        "daq_alert_active",
        "gauge",
        "1 for each alert now raised about a piece.",
        (*PIECE, "alert", "severity", "job"),
    ),
    MetricSpec(
        "daq_monitor_missed_reports_total",
        "counter",
        "Stats reports this exporter did not receive (it is a dropping monitor).",
        (),
    ),
)


def _family(spec: MetricSpec) -> Metric:
    labels = list(spec.labels)
    if spec.type == "counter":
        return CounterMetricFamily(spec.name.removesuffix("_total"), spec.help, labels=labels)
    if spec.type == "summary":
        # the client's SummaryMetricFamily has no quantile samples: they are added by hand
        return Metric(spec.name, spec.help, "summary")
    return GaugeMetricFamily(spec.name, spec.help, labels=labels)


def _latency(fam: Metric, labels: dict[str, str], r: Any) -> None:
    """A summary: quantile samples of the last interval, _sum/_count since the piece started.

    Prometheus lints a `quantile` label on anything but a summary (`promtool check metrics`).
    """
    for q, ms in (("0.5", r.latency_p50_ms), ("0.99", r.latency_p99_ms), ("1", r.latency_max_ms)):
        if ms is not None:
            fam.add_sample(fam.name, {**labels, "quantile": q}, ms / 1e3)
    if r.latency_count:
        fam.add_sample(f"{fam.name}_sum", labels, r.latency_sum_ms / 1e3)
        fam.add_sample(f"{fam.name}_count", labels, float(r.latency_count))


class MonitorCollector(Collector):
    """Turns the Monitor's pieces into metric families at each scrape."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def collect(self) -> Iterator[Metric]:
        fam = {s.name: _family(s) for s in METRICS}
        mon = self.monitor
        now = mon.clock()
        for v in mon.pieces(now=now):
            self._piece(fam, v, now)
        for a in mon.alerts():
            fam["daq_alert_active"].add_metric([a.node, a.piece, a.name, a.severity, a.job], 1)
        fam["daq_monitor_missed_reports_total"].add_metric([], mon.missed_reports)
        yield from fam.values()

    def _piece(self, fam: dict[str, Metric], v: PieceView, now: float) -> None:
        r = v.report
        lab = [v.node, v.piece]
        status = v.status(now, self.monitor.stale_after, self.monitor.lossy_window)

        def put(name: str, value: float | None, *extra: str) -> None:
            if value is not None:
                fam[name].add_metric([*lab, *extra], float(value))

        put("daq_piece_up", 0 if status in ("stale", "stopped") else 1, r.role)
        put("daq_piece_status", 1, status)
        put("daq_report_age_seconds", v.age(now))
        put("daq_uptime_seconds", r.uptime_s)
        put("daq_messages_in_total", r.msgs_in)
        put("daq_messages_out_total", r.msgs_out)
        put("daq_bytes_in_total", r.bytes_in)
        put("daq_bytes_out_total", r.bytes_out)
        put("daq_rows_in_total", r.rows_in)
        put("daq_rows_out_total", r.rows_out)
        put("daq_messages_in_rate", r.rate_in)
        put("daq_messages_out_rate", r.rate_out)
        put("daq_bytes_in_rate", r.mb_in * 1e6)
        put("daq_bytes_out_rate", r.mb_out * 1e6)
        for source, lost in v.lost_by_source.items():
            put("daq_lost_messages_total", lost, source)
        put("daq_undecodable_messages_total", r.undecodable)
        put("daq_duplicate_messages_total", r.duplicates)
        put("daq_sequence_jumps_total", r.jumps)
        put("daq_out_of_epoch_messages_total", r.out_of_epoch)
        _latency(fam["daq_latency_seconds"], dict(zip(PIECE, lab, strict=True)), r)
        put("daq_queue_depth", r.queue)
        flush_ms = r.extra.get("flush_ms")
        if isinstance(flush_ms, int | float):
            put("daq_flush_duration_seconds", flush_ms / 1e3)
        put("daq_restarts_total", v.restarts)
        put("daq_cpu_percent", r.cpu_percent)
        put("daq_resident_memory_bytes", r.rss_mb * 1e6)
        topics = r.extra.get("topics") if r.role == "broker" else None
        if isinstance(topics, dict):
            for topic, counts in topics.items():
                if isinstance(counts, list | tuple) and len(counts) == 2:
                    put("daq_broker_topic_messages_total", counts[0], str(topic))
                    put("daq_broker_topic_bytes_total", counts[1], str(topic))


def registry_for(monitor: Monitor) -> CollectorRegistry:
    """A private registry with only our figures (no exporter-process noise)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MonitorCollector(monitor))
    return registry


def parse_listen(value: str) -> tuple[str, int]:
    """`:9464`, `9464`, `127.0.0.1:9464` or `[::1]:9464` -> (host, port); host "" is all."""
    text = value.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    elif text.isdigit():
        host, port_text = "", text
    else:
        raise ValueError(f"listen address {value!r}: expected [HOST]:PORT")
    try:
        port = int(port_text) if port_text else DEFAULT_PORT
    except ValueError:
        raise ValueError(f"listen address {value!r}: bad port {port_text!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"listen address {value!r}: port out of range")
    return host, port


@dataclass
class Exporter:
    server: Any
    thread: threading.Thread
    host: str
    port: int

    @property
    def url(self) -> str:
        host = self.host or "0.0.0.0"
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(2.0)


def serve(monitor: Monitor, listen: str = f":{DEFAULT_PORT}") -> Exporter:
    """Start the HTTP exporter on a thread; port 0 picks a free port (see `.port`)."""
    from prometheus_client import start_http_server

    host, port = parse_listen(listen)
    server, thread = start_http_server(port, addr=host or "0.0.0.0", registry=registry_for(monitor))
    return Exporter(server, thread, host, server.server_port)


def scrape_text(monitor: Monitor) -> str:
    """The exposition text without a server (tests, `daq stats --json` peers)."""
    from prometheus_client import generate_latest

    return generate_latest(registry_for(monitor)).decode()
