"""When to send a hedged (second) request: after a fixed delay, or one learnt from latency.

The automatic threshold is a high percentile (p95 by default) of the latencies of recent
answered requests, with a floor: a request still unanswered by then is probably a
straggler, and asking another replica costs only the few percent of requests that cross
it (Dean & Barroso, "The Tail at Scale"). Until enough requests have been seen, the
initial threshold applies.
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
        floor_ms: the automatic threshold is never below this.
        initial_ms: the threshold until ``min_samples`` latencies have been seen.
    """

    def __init__(self, after_ms: float = 0.0, *, percentile: float = 95.0, floor_ms: float = 1.0,
                 initial_ms: float = 50.0, min_samples: int = 20, window: int = 512) -> None:
        self.after_ms = after_ms
        self.percentile = percentile
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
        return max(self.floor_ms / 1000, self.window.percentile(self.percentile) or 0.0)
