"""Retrying a GET the server shed (OVERLOADED): at most once, after a jittered pause, within the
GET's timeout and within a retry budget, so that retries never double a flood.

The budget is Finagle's RetryBudget (a token bucket whose deposits expire), with the numbers of
the Rust client: each GET the caller makes deposits 1/10 of a token, a retry spends a whole one,
and 10 tokens are there in every window however few GETs were sent. Deposits and withdrawals
older than the window (1 s, kept in ten slices of 100 ms) no longer count. So in any second a
client retries at most 10% of the GETs it sent in that second, plus 10.

:class:`OverloadRetry` holds a client's budget and counters; ``_retry.get`` asks it whether to
retry. Clocks and randomness are injectable, so the tests drive them.
"""

from __future__ import annotations

import random as _random
import threading
import time
from typing import Callable

WINDOW = 1.0
"""Seconds over which the budget counts GETs sent and retries made."""
GETS_PER_RETRY = 10
"""GETs sent per retry the budget allows: retries are at most 10% of the GETs."""
MIN_RETRIES = 10
"""Retries allowed in every window however few GETs were sent: 10 per second."""
_SLICES = 10


class RetryBudget:
    """The retry budget (see the module's docstring); ``now`` is the caller's clock, in seconds.

    Not thread-safe by itself: :class:`OverloadRetry` locks around it.
    """

    def __init__(self, now: float):
        self._origin = now
        self._newest = 0  # the newest slice's number, counted in slices since origin
        self._sent = [0] * _SLICES  # slice number i lives at i % _SLICES
        self._retried = [0] * _SLICES

    def deposit(self, now: float) -> None:
        """A GET was sent: deposits 1/10 of a token."""
        self._sent[self._current(now)] += 1

    def try_spend(self, now: float) -> bool:
        """Spends a token for a retry if the window holds a whole one; False (nothing spent) if not."""
        i = self._current(now)
        # Tokens: sent / 10 + 10 - retried; a retry needs one. In whole numbers:
        if (sum(self._retried) + 1) * GETS_PER_RETRY > sum(self._sent) + MIN_RETRIES * GETS_PER_RETRY:
            return False
        self._retried[i] += 1
        return True

    def _current(self, now: float) -> int:
        """The index of the slice ``now`` falls in, after clearing the slices that expired. A
        ``now`` older than the newest slice (another thread read the clock first) counts in it."""
        n = max(0, int((now - self._origin) * _SLICES / WINDOW))
        if n > self._newest:
            for i in range(self._newest + 1, min(n, self._newest + _SLICES) + 1):
                self._sent[i % _SLICES] = self._retried[i % _SLICES] = 0
            self._newest = n
        return self._newest % _SLICES


class OverloadRetry:
    """A client's overload retries: the longest pause (``backoff``, seconds), the budget and the
    counters. Thread-safe."""

    def __init__(
        self,
        backoff: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = _random.random,
    ):
        backoff = float(backoff)
        if not backoff >= 0:  # also refuses NaN
            raise ValueError(f"overload_backoff must be a number of seconds >= 0, not {backoff!r}")
        self.backoff = backoff
        self.clock = clock
        self._random = random
        self._lock = threading.Lock()
        self._budget = RetryBudget(clock())
        self.retries = 0
        self.refused = 0

    def sent(self, now: float) -> None:
        """A GET is being sent (its first attempt)."""
        with self._lock:
            self._budget.deposit(now)

    def pause(self, now: float, deadline: float) -> float | None:
        """A GET was answered OVERLOADED at ``now``: the pause before its one retry, drawn
        between half the backoff and all of it; or None to raise OVERLOADED at once, when the
        pause would not end before ``deadline`` or the budget has no token left (counted as
        refused)."""
        pause = self.backoff / 2 * (1 + self._random())
        if now + pause >= deadline:
            return None
        with self._lock:
            if not self._budget.try_spend(now):
                self.refused += 1
                return None
            self.retries += 1
        return pause
