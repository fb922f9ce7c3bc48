"""Questions to a running broker over its control endpoint (subscriptions, counters).

Apart from the broker itself so that a piece that only asks (a source confirming delivery, the
supervisor gating its sources, `daq stats`) does not import the hub. The schemas of the
questions are here too (the broker's `reqrep.Server` refuses anything else): each takes no
field, and each is answered with the broker's whole snapshot; `claim` asks for a source name.

A command that waits for a broker never waits in silence: `BrokerWatch` (consumers, whose
sockets connect whenever the broker comes) and `channels.BrokerOutput` (producers) say at
once, after NOTICE_AFTER seconds, that they wait and where (`waiting_line`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Annotated, Any

import msgspec

from enrgdaq_core.envelope import node_name
from enrgdaq_core.reqrep import RemoteError, Request, request
from enrgdaq_core.transport import BrokerAddress, CurveKeys

__all__ = [
    "NOTICE_AFTER",
    "QUERIES",
    "START_HINT",
    "BrokerWatch",
    "ClaimRequest",
    "NameTaken",
    "CountersQuery",
    "StatusQuery",
    "SubscriptionsQuery",
    "claim",
    "query",
    "subscribers_of",
    "wait_for_subscriptions",
    "waiting_line",
]

log = logging.getLogger("enrgdaq.broker")

START_HINT = "start one with `daq broker` or `daq up`"
NOTICE_AFTER = 1.0  # seconds without a broker before a command says it waits


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
        hint=f" ({START_HINT})",
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


def waiting_line(address: BrokerAddress) -> str:
    """What a command says when it waits for a broker that is not there (one line)."""
    return f"waiting for the broker at {address.base}; {START_HINT}"


class BrokerWatch:
    """Says (through `say`, once) that a consumer waits for a broker that does not answer, and
    once more when it does; `answered` tells the caller whether it ever did.

    A subscriber's socket connects whenever the broker comes, so without this a store or a
    tap started before its broker waits in silence. A thread asks the control endpoint
    every `poll` seconds until the broker answers or `close()`.
    """

    def __init__(
        self,
        address: BrokerAddress,
        *,
        say: Callable[[str], None] | None = None,
        keys: CurveKeys | None = None,
        first: float = NOTICE_AFTER,
        poll: float = 1.0,
    ) -> None:
        self.address = address
        self.answered = threading.Event()
        self._say = say or log.warning
        self._keys = keys
        self._first = first
        self._poll = poll
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="broker-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        said = False
        timeout = self._first
        while not self._closed.is_set():
            try:
                query(self.address, "status", timeout=timeout, keys=self._keys)
            except TimeoutError:
                if not said and not self._closed.is_set():
                    self._say(waiting_line(self.address))
                    said = True
                timeout = self._poll
                continue
            except RemoteError:
                pass  # it refused the question, but it is a broker and it is there
            self.answered.set()
            if said and not self._closed.is_set():
                self._say(f"the broker at {self.address.base} answered")
            return

    def close(self) -> None:
        """Stop asking (the thread ends within `poll` seconds; it never holds the exit)."""
        self._closed.set()
