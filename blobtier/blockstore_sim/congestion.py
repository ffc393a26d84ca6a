"""Adaptive concurrency: an AIMD limit on requests in flight to the block layer.

The limit grows by one per window of successful requests (additive increase) and shrinks
by a factor on a congestion signal (multiplicative decrease): an error or timeout from a
server, a retry, or latency rising (the median of recent requests above ``rise`` times a
slowly moving baseline). It is cut at most once per window, so one event that fails a
burst of requests (a server restart) cuts it once, not once per request; while servers
fail, the limit sinks towards ``min_limit`` and the clients' retries trickle instead of
storming. Stragglers do not move a median, so a heavy tail alone is not congestion.
"""

from __future__ import annotations

import statistics
import threading
from collections import deque


class AdaptiveLimit:
    def __init__(self, initial: int, *, min_limit: int = 1, max_limit: int | None = None,
                 decrease: float = 0.5, rise: float = 2.0, window: int = 16) -> None:
        self.min_limit = min_limit
        self.max_limit = max_limit or initial
        self.limit = float(max(min_limit, min(initial, self.max_limit)))
        self.decrease = decrease
        self.rise = rise
        self.in_flight = 0
        self.cuts = 0
        self._recent: deque[float] = deque(maxlen=window)
        self._baseline: float | None = None
        self._since_cut = 1 << 30
        self._cond = threading.Condition()

    def acquire(self) -> None:
        """Wait for room under the limit and take it."""
        with self._cond:
            while self.in_flight >= int(self.limit):
                self._cond.wait()
            self.in_flight += 1

    def try_acquire(self) -> bool:
        """Take room if there is some now (hedges never wait: they are optional load)."""
        with self._cond:
            if self.in_flight >= int(self.limit):
                return False
            self.in_flight += 1
            return True

    def release(self, latency_s: float | None = None, congested: bool = False) -> None:
        """Give back room; ``latency_s`` of a success, or ``congested`` for a failure."""
        with self._cond:
            self.in_flight -= 1
            self._since_cut += 1
            if congested:
                self._cut()
            elif latency_s is not None:
                self._sample(latency_s)
            self._cond.notify_all()

    def signal(self) -> None:
        """Congestion seen outside a request (a retry about to be made)."""
        with self._cond:
            self._cut()

    def _sample(self, latency_s: float) -> None:
        recent = self._recent
        recent.append(latency_s)
        if len(recent) < recent.maxlen:
            self._grow()
            return
        median = statistics.median(recent)
        base = self._baseline
        if base is None or median < base:
            self._baseline = median
        else:  # drift up slowly, so a lasting change of conditions becomes the new normal
            self._baseline = base + (median - base) / 64
        if median > self.rise * self._baseline:
            self._cut()
        else:
            self._grow()

    def _grow(self) -> None:
        self.limit = min(self.max_limit, self.limit + 1 / self.limit)

    def _cut(self) -> None:
        if self._since_cut < self.limit:
            return
        self.limit = max(self.min_limit, self.limit * self.decrease)
        self._since_cut = 0
        self.cuts += 1
