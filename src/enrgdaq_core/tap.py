"""The receive loop of `daq tap`: take messages from an input, hand each on, count what is odd.

A plain function so it is tested with a fake input (no broker, no process); the CLI only
chooses the input and the sink (the envelope stream, or a line per message) and renders.
A tap that sees nothing (a mistyped topic is silence) asks `on_quiet` what to say:
`silence_hint` names the topics the broker carries.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from enrgdaq_core.envelope import Envelope, Kind, subscription, topic_frame
from enrgdaq_core.stats import DUPLICATE, SequenceTracker
from enrgdaq_core.transport import BrokerAddress, CurveKeys

__all__ = ["DUPLICATE", "QUIET_AFTER", "TapResult", "silence_hint", "tap"]

POLL = 0.2  # seconds one wait for a message lasts: how soon a stop flag or idle flush acts
QUIET_AFTER = 3.0  # seconds with nothing before `on_quiet` is asked (then again as often)


class _Receiver(Protocol):
    def recv(self, timeout: float | None = None) -> Envelope | None: ...


class _Stop(Protocol):
    def is_set(self) -> bool: ...


@dataclass(slots=True)
class TapResult:
    """What a tap saw: messages handed on, messages missed (sequence gaps), and the messages
    wrong in other ways (docs/metrics.md "Loss, exactly"): not decodable (skipped by the
    input), seen before, far off their source's sequence, of an older epoch."""

    seen: int = 0
    missed: int = 0
    undecodable: int = 0
    duplicates: int = 0
    jumps: int = 0
    out_of_epoch: int = 0

    def problems(self) -> dict[str, int]:
        """The non-zero counts, by name, for a summary line."""
        counts = {
            "missed": self.missed,
            "undecodable": self.undecodable,
            "duplicates": self.duplicates,
            "jumps": self.jumps,
            "out_of_epoch": self.out_of_epoch,
        }
        return {k: v for k, v in counts.items() if v}


def tap(
    inp: _Receiver,
    sink: Callable[[Envelope, int], None],
    *,
    stop: _Stop,
    count: int | None = None,
    idle_timeout: float | None = None,
    on_idle: Callable[[], None] | None = None,
    on_quiet: Callable[[], bool] | None = None,
    quiet_after: float = QUIET_AFTER,
    poll: float = POLL,
    clock: Callable[[], float] = time.monotonic,
) -> TapResult:
    """Hand each message to `sink(env, missed_before_it)` until `stop`, `count` or idle.

    `missed_before_it` is DUPLICATE for a message seen before (it is handed on all the same:
    a tap shows what flows). `on_idle` runs whenever a wait for a message ends empty (flush a pipe: its reader must
    not wait for a full buffer). `idle_timeout` ends the tap after that many seconds without
    a message. Before the first message, `on_quiet` runs every `quiet_after` seconds until
    it returns True (it has said what there was to say). Stats reports are not
    sequence-checked (a piece's reports are not data).
    """
    seqs = SequenceTracker()
    result = TapResult()
    last = clock()
    ask_at = last + quiet_after
    while not stop.is_set() and (count is None or result.seen < count):
        env = inp.recv(poll)
        if env is None:
            if on_idle is not None:
                on_idle()
            now = clock()
            if on_quiet is not None and not result.seen and now >= ask_at:
                ask_at = now + quiet_after
                if on_quiet():
                    on_quiet = None
            if idle_timeout is not None and now - last > idle_timeout:
                break
            continue
        last = clock()
        result.seen += 1
        gap = seqs.observe(env.header) if env.kind is not Kind.STATS else 0
        sink(env, gap)
    result.missed = seqs.total_lost
    result.undecodable = getattr(inp, "undecodable", 0)  # the input skips and counts those
    result.duplicates = seqs.total_duplicates
    result.jumps = seqs.total_jumps
    result.out_of_epoch = seqs.total_out_of_epoch
    return result


def silence_hint(
    address: BrokerAddress,
    topics: list[str],
    *,
    waited: float = QUIET_AFTER,
    keys: CurveKeys | None = None,
) -> tuple[bool, str | None]:
    """What a tap that has seen nothing should say: (done, line).

    Asks the broker which topics it has carried; when none matches `topics` (a mistyped
    `data.sensr1`), the line names them, with the closest as a guess. done is False while
    the broker does not answer (ask again later); the line is None when a topic matches
    (its source is only quiet).
    """
    from enrgdaq_core.broker_client import query
    from enrgdaq_core.reqrep import RemoteError

    try:
        carried = sorted(query(address, "status", timeout=1.0, keys=keys)["topics"])
    except (TimeoutError, RemoteError, KeyError, TypeError):
        return False, None
    prefixes = [subscription(t) for t in topics] or [b""]
    if any(topic_frame(t).startswith(p) for t in carried for p in prefixes):
        return True, None
    wanted = " ".join(topics) or "every topic"
    line = f"nothing on {wanted} after {waited:g} s; "
    if not carried:
        return True, line + f"the broker at {address.base} has carried no message yet"
    guesses = {g for t in topics for g in difflib.get_close_matches(t.rstrip("*"), carried, 1)}
    data = [t for t in carried if not t.startswith("stats.")]
    pieces = len(carried) - len(data)
    shown = ", ".join(data[:12]) + (", ..." if len(data) > 12 else "")
    line += f"topics on the broker: {shown or 'none'}"
    if pieces:
        line += f" (and stats. of {pieces} piece{'s' if pieces != 1 else ''})"
    if guesses:
        line += f"; did you mean {' or '.join(sorted(guesses))}?"
    return True, line
