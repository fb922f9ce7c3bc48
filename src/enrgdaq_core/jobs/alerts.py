"""The `alerts` job: watches the stats stream and raises the alerts written in its TOML.

    daq_job_type = "alerts"
    interval_seconds = 0.5     # how often the rules are evaluated
    hold_off_seconds = 300     # at most one notice per alert in this time

    [[alert]]
    piece = "sensor*"
    rate_below = 5.0

    [[webhook]]
    url = "https://hooks.slack.com/services/..."
    format = "slack"

Every transition goes to the broker (kind ALERT on `alert.<job>`, shown by `daq stats`); notices
for people go to the log and to the webhooks, through the hold-off. See docs/metrics.md.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import msgspec

from enrgdaq_core.alerts import (
    AlertEngine,
    AlertRule,
    Transition,
    WebhookConfig,
    WebhookSender,
    log_alert,
)
from enrgdaq_core.envelope import Kind, Source, node_name
from enrgdaq_core.jobs.base import Job, JobConfig, Paced
from enrgdaq_core.monitor import STALE_AFTER, Monitor, StatsFeed
from enrgdaq_core.transport import BrokerAddress, TelemetryPublisher

log = logging.getLogger("enrgdaq.alerts")


class AlertsConfig(JobConfig, kw_only=True, forbid_unknown_fields=True):
    interval_seconds: Paced = 0.5  # evaluating back to back would only burn a core
    hold_off_seconds: Annotated[float, msgspec.Meta(ge=0)] = 300.0
    stale_after_seconds: Annotated[float, msgspec.Meta(gt=0)] = (
        STALE_AFTER  # when a silent piece counts as stale (rates: 0)
    )
    alert: list[AlertRule] = msgspec.field(default_factory=list)
    webhook: list[WebhookConfig] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for rule in self.alert:
            if rule.name in seen:
                raise ValueError(f"two [[alert]] tables are named {rule.name!r}")
            seen.add(rule.name)
        if self.hold_off_seconds < 0:
            raise ValueError("hold_off_seconds must be >= 0")


class AlertsJob(Job):
    type_name = "alerts"
    description = "Health checks: raise alerts on rates, loss, stale pieces, restarts, queues."
    Config = AlertsConfig

    def start(self) -> None:
        cfg: AlertsConfig = self.config  # type: ignore[assignment]
        address = self.broker or BrokerAddress.parse(None)
        self.monitor = Monitor(stale_after=cfg.stale_after_seconds)
        self.feed = StatsFeed(address, self.monitor, topics=("stats.",))
        self.engine = AlertEngine(
            self.name,
            list(cfg.alert),
            hold_off=cfg.hold_off_seconds,
            exclude={(node_name(), self.name)},
        )
        self.publisher = TelemetryPublisher(address)
        self.source = Source(self.name, topic=f"alert.{self.name}")
        self.senders = [WebhookSender(h) for h in cfg.webhook]
        self.sent: list[Transition] = []  # every transition, for tests and introspection
        if not cfg.alert:
            log.warning("%s: no [[alert]] tables: nothing to watch", self.name)

    def step(self) -> Any:
        self.feed.poll(0)
        for tr in self.engine.evaluate(self.monitor):
            self.sent.append(tr)
            self.publisher.send(self.source.control(Kind.ALERT, self.source.topic, tr.alert))
            if tr.notify:
                log_alert(tr.alert)
                for sender in self.senders:
                    sender.send(tr.alert)
            else:
                log.debug("held back by the hold-off: %s", tr.alert.message)
        if len(self.sent) > 1000:
            del self.sent[:-1000]
        return None

    def stop(self) -> None:
        for sender in getattr(self, "senders", []):
            sender.close()
        if hasattr(self, "feed"):
            self.feed.close()
            self.publisher.close()
