"""Exponential backoff with jitter, for retries and for servers that recently failed.

Jitter spreads the retries of many clients that failed at the same moment (a restart of
the block layer) over time instead of letting them return in lockstep. "Equal jitter":
half the exponential delay is kept, half drawn at random, so a retry never comes back at
once yet never waits longer than the cap.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    base_s: float = 0.01
    cap_s: float = 1.0
    factor: float = 2.0

    def ceiling(self, attempt: int) -> float:
        """The delay before jitter after ``attempt`` failures (0: the first retry)."""
        return min(self.cap_s, self.base_s * self.factor ** min(attempt, 64))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        top = self.ceiling(attempt)
        return top / 2 + (rng or random).uniform(0, top / 2)
