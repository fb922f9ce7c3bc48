"""The receive loop of `daq tap`: take messages from an input, hand each on, count what is odd.

A plain function so it is tested with a fake input (no broker, no process); the CLI only
chooses the input and the sink (the envelope stream, or a line per message) and renders.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from enrgdaq_core.envelope import Envelope, Kind
from enrgdaq_core.stats import DUPLICATE, SequenceTracker

__all__ = ["DUPLICATE", "TapResult", "tap"]

POLL = 0.2  # seconds one wait for a message lasts: how soon a stop flag or idle flush acts


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
    poll: float = POLL,
    clock: Callable[[], float] = time.monotonic,
) -> TapResult:
    """Hand each message to `sink(env, missed_before_it)` until `stop`, `count` or idle.

    `missed_before_it` is DUPLICATE for a message seen before (it is handed on all the same:
    a tap shows what flows). `on_idle` runs whenever a wait for a message ends empty (flush a pipe: its reader must
    not wait for a full buffer). `idle_timeout` ends the tap after that many seconds without
    a message. Stats reports are not sequence-checked (a piece's reports are not data).
    """
    seqs = SequenceTracker()
    result = TapResult()
    last = clock()
    while not stop.is_set() and (count is None or result.seen < count):
        env = inp.recv(poll)
        if env is None:
            if on_idle is not None:
                on_idle()
            if idle_timeout is not None and clock() - last > idle_timeout:
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
