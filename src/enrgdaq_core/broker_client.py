"""Questions to a running broker over its control endpoint (subscriptions, counters).

Apart from the broker itself so that a piece that only asks (a source confirming delivery, the
supervisor gating its sources, `daq stats`) does not import the hub. The schemas of the
questions are here too (the broker's `reqrep.Server` refuses anything else): each takes no
field, and each is answered with the broker's whole snapshot.
"""

from __future__ import annotations

import time
from typing import Any

from enrgdaq_core.reqrep import RemoteError, Request, request
from enrgdaq_core.transport import BrokerAddress, CurveKeys

__all__ = [
    "QUERIES",
    "CountersQuery",
    "StatusQuery",
    "SubscriptionsQuery",
    "query",
    "subscribers_of",
    "wait_for_subscriptions",
]


class StatusQuery(Request, tag="status"):
    """The broker's snapshot: uptime, per-topic counters, subscriptions."""


class SubscriptionsQuery(Request, tag="subscriptions"):
    """The same snapshot, asked for its subscriptions (`wait_for_subscriptions`)."""


class CountersQuery(Request, tag="counters"):
    """The same snapshot, asked for its counters."""


QUERIES: tuple[type[Request], ...] = (StatusQuery, SubscriptionsQuery, CountersQuery)
"""Every question the broker answers (all with its snapshot)."""


def query(
    address: BrokerAddress,
    cmd: str = "status",
    timeout: float = 2.0,
    *,
    keys: CurveKeys | None = None,
) -> dict[str, Any]:
    """The broker's answer to `cmd` (status, subscriptions, counters: all its snapshot).

    TimeoutError if no broker answers, `RemoteError` if it refuses (an unknown command).
    """
    return request(
        address.control,
        {"cmd": cmd},
        timeout=timeout,
        keys=keys,
        expect="broker",
        hint=" (start one with `daq broker`)",
    )


def subscribers_of(snapshot: dict[str, Any], topic: str) -> int:
    """How many lossless consumers of a broker snapshot get `topic`: exact subscriptions
    (listed with a trailing `$`) to it and prefix subscriptions it starts with."""
    counts = snapshot.get("subscribers") or {}
    total = 0
    for sub, n in counts.items():
        if sub.endswith("$"):
            total += n if sub[:-1] == topic else 0
        elif topic.startswith(sub):
            total += n
    return total


def wait_for_subscriptions(
    address: BrokerAddress,
    topics: list[str],
    timeout: float = 10.0,
    *,
    keys: CurveKeys | None = None,
) -> bool:
    """True once a lossless consumer has subscribed to each topic (the slow-joiner guard)."""
    want = {t.rstrip("*") for t in topics}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            subs = query(address, "subscriptions", timeout=1.0, keys=keys)["subscriptions"]
        except (TimeoutError, RemoteError, KeyError):
            subs = []
        have = {s.rstrip("$") for s in subs}
        if all(any(t.startswith(h) for h in have) for t in want):
            return True
        time.sleep(0.05)
    return False
