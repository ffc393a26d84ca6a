"""Exponential backoff with jitter, for retries and for servers that recently failed.

Shared by every client that spreads calls over several servers: the replicas of a chunk
(``blockstore_sim.replicated``) and the endpoints of a metadata service
(``metadata.remote``).

Jitter spreads the retries of many clients that failed at the same moment (a restart of
the block layer) over time instead of letting them return in lockstep. "Equal jitter":
half the exponential delay is kept, half drawn at random, so a retry never comes back at
once yet never waits longer than the cap.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable
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


_BENCH = Backoff(base_s=0.05, cap_s=5.0)


class ReplicaHealth:
    """Which servers to ask first: those that recently failed are put last for a while.

    A server (a replica, an endpoint; named by an int) that answers with an error, a
    timeout or bytes that fail their checksum is "benched" for a backoff that doubles with
    each further failure and ends at its first success. Benched servers are still tried,
    after every healthy one: when every one is benched, the call goes on with the one that
    failed longest ago rather than failing.
    """

    def __init__(self, backoff: Backoff = _BENCH,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.backoff = backoff
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[int, int] = {}
        self._benched_until: dict[int, float] = {}

    def failed(self, sid: int) -> None:
        with self._lock:
            n = self._failures.get(sid, 0)
            self._failures[sid] = n + 1
            self._benched_until[sid] = self._clock() + self.backoff.delay(n)

    def ok(self, sid: int) -> None:
        if sid in self._failures:
            with self._lock:
                self._failures.pop(sid, None)
                self._benched_until.pop(sid, None)

    def usable(self, sid: int) -> bool:
        until = self._benched_until.get(sid)
        return until is None or until <= self._clock()

    def order(self, sids: Iterable[int]) -> list[int]:
        """``sids`` with benched servers moved to the end (earliest release first)."""
        sids = list(sids)
        if not self._benched_until:
            return sids
        now = self._clock()
        benched = {s: u for s in sids if (u := self._benched_until.get(s)) is not None and u > now}
        if not benched:
            return sids
        return [s for s in sids if s not in benched] + sorted(benched, key=benched.__getitem__)

    def benched(self) -> list[int]:
        now = self._clock()
        return sorted(s for s, u in self._benched_until.items() if u > now)
