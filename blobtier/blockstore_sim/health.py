"""Which replicas to ask first: servers that recently failed are put last for a while.

A server that answers with an error, a timeout or bytes that fail their checksum is
"benched" for a backoff that doubles with each further failure and ends at its first
success. Benched servers are still tried, after every healthy replica: when every replica
is benched, the read goes on with the one that failed longest ago rather than failing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from blobtier.blockstore_sim.backoff import Backoff

_BENCH = Backoff(base_s=0.05, cap_s=5.0)


class ReplicaHealth:
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
