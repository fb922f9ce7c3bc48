"""The `Alert` wire struct: the payload of a kind ALERT message on `alert.<job>`.

Kept apart from the rules (`alerts`), so that readers of the stream (the monitor, `daq stats`,
Prometheus) can decode alerts without depending on the engine that raises them.
"""

from __future__ import annotations

import time

import msgspec

__all__ = ["Alert"]


class Alert(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One alert transition, as an alerts job sends it (kind ALERT, topic `alert.<job>`)."""

    job: str  # the alerts job that evaluated the rule
    name: str  # the rule's name
    condition: str  # one of alerts.CONDITIONS
    state: str  # "raised" or "cleared"
    node: str  # the piece the alert is about ("" for a piece never seen)
    piece: str
    severity: str = "warning"
    message: str = ""
    value: float | None = None
    threshold: float | None = None
    time_ns: int = msgspec.field(default_factory=time.time_ns)
    since_ns: int = 0  # when the condition began
    suppressed: int = 0  # raises held back by the hold-off since the last notice

    @property
    def key(self) -> str:
        """One alert per (alerts job, rule, node, piece): what a raise and its clear share."""
        return f"{self.job}/{self.name}/{self.node}/{self.piece}"
