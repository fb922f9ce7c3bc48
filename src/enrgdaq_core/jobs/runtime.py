"""Runs one job: pace its steps, stamp and publish what it returns, report, stop cleanly.

SIGTERM/SIGINT set a flag; the current step finishes, an end-of-stream message goes out, the
job's `stop()` runs, and the process exits 0. The same runtime serves `daq job run` and the
supervisor's children, on a broker or on a pipe.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from enrgdaq_core.channels import Output
from enrgdaq_core.envelope import Kind, Source
from enrgdaq_core.jobs.base import Job, as_outputs
from enrgdaq_core.signals import StopFlag
from enrgdaq_core.stats import Meter
from enrgdaq_core.transport import Publisher, TelemetryPublisher

__all__ = [
    "run_job",
]

log = logging.getLogger("enrgdaq.job")


def run_job(
    job: Job,
    output: Output,
    *,
    stop: StopFlag,
    telemetry: TelemetryPublisher | None = None,
    run: int = 0,
    max_messages: int | None = None,
    stats_interval: float = 1.0,
    on_report: Callable[[Any], None] | None = None,
    stats: bool = True,
) -> Meter:
    """Drive `job` until `stop` is set (or `max_messages` are sent); returns its counters.

    `stats=False` counts nothing but messages and sends no heartbeat (to measure the cost).
    """
    cfg = job.config
    source = Source(job.name, run=run, tag=cfg.tag, store=cfg.store_config.for_header())
    stats_source = Source(job.name, topic=f"stats.{job.name}")
    meter = Meter(job.name, "job")
    interval = job.interval
    next_report = time.monotonic() + stats_interval
    sent = 0

    def heartbeat() -> None:
        """A stats report once `stats_interval` has passed: from the loop, and from a send
        that waits on backpressure (held back by a store is not hung: the supervisor judges
        each piece by its own heartbeat)."""
        nonlocal next_report
        now = time.monotonic()
        if now < next_report:
            return
        _output_figures(meter, output)
        report = meter.report()
        if telemetry is not None:
            telemetry.send(stats_source.control(Kind.STATS, stats_source.topic, report))
        if on_report is not None:
            on_report(report)
        next_report = now + stats_interval

    publisher = getattr(output, "publisher", None)  # a BrokerOutput's: it may wait
    if stats and isinstance(publisher, Publisher):
        publisher.on_wait = heartbeat
    job.start()
    try:
        deadline = time.monotonic()
        # Reaching max_messages ends the run without setting `stop`: a set stop flag tells the
        # output to give up on a broker that takes nothing, and a --count run is no such stop.
        counted_out = False
        while not stop.is_set() and not counted_out:
            for item in as_outputs(job.step()):
                if isinstance(item, bytes | bytearray | memoryview):
                    env = source.raw(item)
                else:
                    env = source.table(item)
                output.send(env)
                sent += 1
                if stats:
                    meter.sent(env.nbytes, env.header.rows)
                if max_messages is not None and sent >= max_messages:
                    counted_out = True
                    break  # a step that returned several items must not overshoot --count
            if stats:
                heartbeat()
            delay = 0.0
            if interval > 0:
                deadline += interval
                delay = deadline - time.monotonic()
                if delay < -interval:  # fell behind by more than a step: do not burst to catch up
                    deadline = time.monotonic()
            # A pipe's buffer must not sit on data while we sleep (a 1 Hz sensor would reach
            # the store seconds late, and a kill would lose it): flush before waiting. Running
            # flat out, at most every channels.FLUSH_EVERY (a step that blocks for its next
            # event must not hold the previous ones back).
            if delay > 0:
                output.flush()
                stop.wait(delay)
            else:
                output.flush_due()
    finally:
        try:
            output.send(source.end_of_stream())
            output.flush()
        finally:
            job.stop()
            meter.msgs_out = max(meter.msgs_out, sent)
            if telemetry is not None and stats:
                _output_figures(meter, output)
                report = meter.report()
                report.extra["final"] = True
                telemetry.send(stats_source.control(Kind.STATS, stats_source.topic, report))
    log.info("%s: %d messages sent, then end-of-stream", job.name, sent)  # a clean end only
    return meter


def _output_figures(meter: Meter, output: Output) -> None:
    """The output's own figures in the heartbeat: what it holds back (`queue`, `held`) and
    what it dropped while the broker was away (`dropped`)."""
    figures = output.stats()
    meter.extra.update(figures)
    meter.queue = int(figures.get("held", 0))
