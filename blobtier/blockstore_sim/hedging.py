"""When to send a hedged (second) request: after a fixed delay, or one learnt from latency.

What is timed is how long a server takes to start answering (time to first byte), which
does not depend on the chunk size. The automatic threshold is a high percentile (p99 by
default) of recent such times, with a floor: a request still unanswered by then is
probably a straggler, and asking another replica costs only the few percent of requests
that cross it (Dean & Barroso, "The Tail at Scale").

Only winners are timed, and hedged stragglers lose, so the window holds the body of the
distribution; the threshold is further capped at ``cap`` times the median so that a heavy
tail that did get in (while the threshold sat above it) cannot lift the threshold onto
the stragglers themselves. p95 would hedge 5% of healthy requests by definition; p99 keeps
that share near 1% on top of the tail. Until enough requests have been seen, the initial
threshold applies.
"""

from __future__ import annotations

import threading


class LatencyWindow:
    """The last ``size`` latencies; percentiles are recomputed every ``every`` samples."""

    def __init__(self, size: int = 512, every: int = 16) -> None:
        self.size = size
        self.every = every
        self._ring: list[float] = []
        self._next = 0
        self._added = 0
        self._sorted: list[float] = []
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            if len(self._ring) < self.size:
                self._ring.append(seconds)
            else:
                self._ring[self._next] = seconds
            self._next = (self._next + 1) % self.size
            self._added += 1
            if self._added % self.every == 0 or len(self._ring) < self.every:
                self._sorted = sorted(self._ring)

    def __len__(self) -> int:
        return len(self._ring)

    def percentile(self, q: float) -> float | None:
        ordered = self._sorted
        if not ordered:
            return None
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


class HedgeTimer:
    """How long to wait for an answer before hedging; ``None`` means never.

    Args:
        after_ms: > 0: a fixed threshold; 0: automatic; < 0: never hedge.
        percentile: the automatic threshold's percentile of recent latencies.
        cap: the automatic threshold is at most this many times the median.
        floor_ms: the automatic threshold is never below this.
        initial_ms: the threshold until ``min_samples`` latencies have been seen.
    """

    def __init__(self, after_ms: float = 0.0, *, percentile: float = 99.0, cap: float = 3.0,
                 floor_ms: float = 1.0, initial_ms: float = 50.0, min_samples: int = 20,
                 window: int = 512) -> None:
        self.after_ms = after_ms
        self.percentile = percentile
        self.cap = cap
        self.floor_ms = floor_ms
        self.initial_ms = initial_ms
        self.min_samples = min_samples
        self.window = LatencyWindow(window)

    def observe(self, seconds: float) -> None:
        if self.after_ms == 0:
            self.window.add(seconds)

    def delay(self) -> float | None:
        """Seconds to wait before a hedge, or None."""
        if self.after_ms < 0:
            return None
        if self.after_ms > 0:
            return self.after_ms / 1000
        if len(self.window) < self.min_samples:
            return self.initial_ms / 1000
        high = self.window.percentile(self.percentile) or 0.0
        median = self.window.percentile(50) or 0.0
        return max(self.floor_ms / 1000, min(high, self.cap * median))
