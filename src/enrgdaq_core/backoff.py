"""Exponential backoff: the one retry-delay rule (restarts, store retries, sends, webhooks)."""

from __future__ import annotations

import math

__all__ = ["Backoff"]


class Backoff:
    """A delay that starts at `initial` and doubles per failure up to `cap`.

    `reset()` after a success starts over; with `reset_after`, `next_delay(ran_for)` also
    starts over when the attempt ran that long (a child that ran healthily for an hour and
    then died is restarted at once, not after the cap).
    """

    __slots__ = ("cap", "failures", "initial", "reset_after")

    def __init__(self, initial: float, cap: float, *, reset_after: float = math.inf) -> None:
        self.initial = initial
        self.cap = cap
        self.reset_after = reset_after
        self.failures = 0

    def next_delay(self, ran_for: float = 0.0) -> float:
        """The delay before the next attempt (counts one more failure)."""
        if ran_for >= self.reset_after:
            self.failures = 0
        delay = min(self.cap, self.initial * 2.0 ** min(self.failures, 64))
        self.failures += 1
        return delay

    @property
    def current(self) -> float:
        """The delay the next failure would get, without counting one."""
        return min(self.cap, self.initial * 2.0 ** min(self.failures, 64))

    def reset(self) -> None:
        self.failures = 0
