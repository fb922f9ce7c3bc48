"""Questions to a running broker over its control endpoint (subscriptions, counters).

Apart from the broker itself so that a piece that only asks (a source confirming delivery, the
supervisor gating its sources, `daq stats`) does not import the hub.
"""

from __future__ import annotations

import time
from typing import Any

from enrgdaq_core.reqrep import RemoteError, request
from enrgdaq_core.transport import BrokerAddress, CurveKeys

__all__ = ["query", "wait_for_subscriptions"]


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
