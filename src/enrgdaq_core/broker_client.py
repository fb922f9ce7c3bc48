"""Questions to a running broker over its control endpoint (subscriptions, counters).

Apart from the broker itself so that a piece that only asks (a source confirming delivery, the
supervisor gating its sources, `daq stats`) does not import the hub. The schemas of the
questions are here too (the broker's `reqrep.Server` refuses anything else): each takes no
field, and each is answered with the broker's whole snapshot; `claim` asks for a source name.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Annotated, Any

import msgspec

from enrgdaq_core.envelope import node_name
from enrgdaq_core.reqrep import RemoteError, Request, request
from enrgdaq_core.transport import BrokerAddress, CurveKeys

__all__ = [
    "QUERIES",
    "ClaimRequest",
    "NameTaken",
    "CountersQuery",
    "StatusQuery",
    "SubscriptionsQuery",
    "claim",
    "query",
    "wait_for_subscriptions",
]


class StatusQuery(Request, tag="status"):
    """The broker's snapshot: uptime, per-topic counters, subscriptions."""


class SubscriptionsQuery(Request, tag="subscriptions"):
    """The same snapshot, asked for its subscriptions (`wait_for_subscriptions`)."""


class CountersQuery(Request, tag="counters"):
    """The same snapshot, asked for its counters."""


QUERIES: tuple[type[Request], ...] = (StatusQuery, SubscriptionsQuery, CountersQuery)
"""Every question the broker answers with its snapshot."""

_Name = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class ClaimRequest(Request, tag="claim"):
    """A source asks for its name before it publishes: granted unless a live claim holds it
    (`{"granted": true}`, else `{"granted": false, "holder": {...}}`)."""

    source: _Name
    node: _Name
    host: _Name
    pid: Annotated[int, msgspec.Meta(ge=0, le=2**31)]
    epoch: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] = 0


class NameTaken(ConnectionError):
    """Another live process publishes under this source name at this broker (one line)."""


def claim(
    address: BrokerAddress,
    source: str,
    *,
    epoch: int = 0,
    timeout: float = 5.0,
    keys: CurveKeys | None = None,
) -> None:
    """Claim `source` at the broker for this process; NameTaken if a live one holds it.

    Two publishers of one name would mix two sequences in every store (false loss, split
    files), so a source claims its name before its first message.
    """
    body = ClaimRequest(
        source=source, node=node_name(), host=socket.gethostname(), pid=os.getpid(), epoch=epoch
    )
    try:
        answer = request(
            address.control,
            msgspec.to_builtins(body),
            timeout=timeout,
            keys=keys,
            expect="broker",
            hint=" (start one with `daq broker`)",
        )
    except (TimeoutError, RemoteError) as exc:
        raise ConnectionError(f"cannot claim source name {source!r}: {exc}") from None
    if not answer.get("granted"):
        h = answer.get("holder") or {}
        raise NameTaken(
            f"source name {source!r} is taken at {address.base} by a live source on node "
            f"{h.get('node', '?')} (pid {h.get('pid', '?')}): give this one another name"
        )


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
