"""The arena's owner: the one place that indexes, admits, evicts and pins L1 chunks.

Readers in any process ask the owner where chunks are (``lookup``), read them straight
from their own mapping of the segment, and hand back the places when their views are
gone (``release``). A pinned slot is never reused: evicting it only removes it from
the index, and its memory returns to the allocator when the last pin goes. Pins belong
to a session (one per reader connection), so a reader that dies, even by SIGKILL,
releases everything it held when its connection closes.

A fill is ``reserve`` (the owner evicts to make room and returns a slot), a write of
the bytes by the filler into the segment, then ``commit``. While a chunk is being
filled, other lookups of it wait for the commit, so concurrent misses on one host reach
the tiers below once.
"""

from __future__ import annotations

import itertools
import os
import secrets
import threading
import time
from collections import Counter
from collections.abc import Hashable, Sequence

from blobtier.cache_l1_l2.arena import Segment, SlabAllocator
from blobtier.eviction import make_policy

Place = tuple[int, int]  # (offset in the segment, length)
REFUSED, GRANTED, BUSY = 0, 1, 2  # answers to a claim
FILL_WAIT_S = 10.0  # how long a lookup waits for another session's fill of the same chunk
SESSION_GRACE_S = 60.0  # pins of a closed session outlive it by this much (see end_session)
_MAX_EVICTIONS = 256  # per reservation: beyond this the chunk is refused, not forced in


class ArenaOwner:
    """Args:
        capacity: bytes of shared memory (the hard cap).
        policy: eviction policy name (``blobtier.eviction.POLICIES``).
        name: the segment's file name in /dev/shm (default: unique per owner).
    """

    def __init__(self, capacity: int, policy: str = "sieve", name: str | None = None) -> None:
        self.allocator = SlabAllocator(capacity)
        name = name or f"blobtier-l1-{os.getpid()}-{secrets.token_hex(4)}"  # unique per owner
        self.segment = Segment.create(name, self.allocator.capacity)
        self.policy_name = policy
        self._policy = make_policy(policy)
        self._index: dict[bytes, Place] = {}
        self._filling: dict[bytes, tuple[int, int, int]] = {}  # digest -> (session, offset, length)
        self._pins: Counter[int] = Counter()  # offset -> pins from every session
        self._session_pins: dict[int, Counter[int]] = {}
        self._zombies: set[int] = set()  # evicted while pinned: freed on the last release
        self._leases: list[tuple[float, Counter[int]]] = []  # pins of ended sessions, by expiry
        self._cv = threading.Condition()
        self._sessions = itertools.count(1)
        self.counters = Counter()

    # -- sessions ----------------------------------------------------------------------
    def open_session(self) -> int:
        with self._cv:
            session = next(self._sessions)
            self._session_pins[session] = Counter()
            return session

    def end_session(self, session: int, grace_s: float = SESSION_GRACE_S) -> None:
        """Abort a session's fills; its pins expire after ``grace_s``.

        A reader whose connection broke may still be alive and reading the views it was
        given, so its slots are not reused at once; a reader that died frees them when
        the grace period ends.
        """
        with self._cv:
            pins = self._session_pins.pop(session, Counter())
            if pins:
                self._leases.append((time.monotonic() + grace_s, pins))
            for digest in [d for d, f in self._filling.items() if f[0] == session]:
                self._abort(digest)
            self._expire_leases()
            self._cv.notify_all()

    def _expire_leases(self) -> None:
        now = time.monotonic()
        keep = []
        for deadline, pins in self._leases:
            if deadline > now:
                keep.append((deadline, pins))
                continue
            for offset, n in pins.items():
                self._unpin(offset, n)
        self._leases = keep

    # -- reading -----------------------------------------------------------------------
    def lookup(self, digests: Sequence[bytes], session: int, wait_s: float = FILL_WAIT_S,
               touch: bool = True) -> list[Place | None]:
        """Pinned places of the chunks held; None for a miss. Waits for fills in flight.
        ``touch=False`` (a prefetcher's look) does not count as a use for the policy."""
        out: list[Place | None] = []
        with self._cv:
            pins = self._session_pins[session]
            for digest in digests:
                place = self._index.get(digest)
                if place is None and digest in self._filling and self._filling[digest][0] != session:
                    self._cv.wait_for(lambda d=digest: d not in self._filling, timeout=wait_s)
                    place = self._index.get(digest)
                if place is None:
                    self.counters["misses"] += 1
                    out.append(None)
                    continue
                if touch:
                    self._policy.hit(digest)
                self._pins[place[0]] += 1
                pins[place[0]] += 1
                self.counters["hits"] += 1
                out.append(place)
        return out

    def release(self, offsets: Sequence[int], session: int) -> None:
        with self._cv:
            pins = self._session_pins.get(session)
            for offset in offsets:
                if pins is None or pins[offset] <= 0:
                    continue  # a stale or forged release changes nothing
                pins[offset] -= 1
                if not pins[offset]:
                    del pins[offset]
                self._unpin(offset, 1)

    def _unpin(self, offset: int, n: int) -> None:
        self._pins[offset] -= n
        if self._pins[offset] <= 0:
            del self._pins[offset]
            if offset in self._zombies:
                self._zombies.discard(offset)
                self.allocator.free(offset)

    # -- filling -----------------------------------------------------------------------
    def reserve(self, digest: bytes, length: int, session: int) -> int | None:
        """A slot to write ``length`` bytes of ``digest`` into, or None: already held,
        being filled, too big, or refused by the policy."""
        return self.claim(digest, length, session)[1]

    def claim(self, digest: bytes, length: int, session: int) -> tuple[int, int | None]:
        """(GRANTED, slot) to fill ``digest``; (BUSY, None) if it is held or being filled
        (a lookup will wait for it); (REFUSED, None) if the cache will not take it."""
        with self._cv:
            if digest in self._index or digest in self._filling:
                return BUSY, None
            if length <= 0 or length > self.allocator.page or session not in self._session_pins:
                return REFUSED, None
            if self._leases:
                self._expire_leases()
            full = not self.allocator.room_for(length)
            if not self._policy.admit(digest, full):
                self.counters["rejected"] += 1
                return REFUSED, None
            offset = self.allocator.alloc(length)
            evictions = 0
            while offset is None and evictions < _MAX_EVICTIONS:
                victim = self._policy.victim()
                if victim is None:
                    break
                self._evict(victim)
                evictions += 1
                offset = self.allocator.alloc(length)
            if offset is None:
                self.counters["rejected"] += 1
                return REFUSED, None
            self._filling[digest] = (session, offset, length)
            return GRANTED, offset

    def commit(self, digest: bytes, session: int, accessed: bool = True) -> bool:
        """Publish a filled slot; ``accessed=False`` for a prefetch (not a use yet)."""
        with self._cv:
            fill = self._filling.get(digest)
            if fill is None or fill[0] != session:
                return False
            del self._filling[digest]
            self._index[digest] = (fill[1], fill[2])
            self._policy.insert(digest, accessed)
            self.counters["inserts"] += 1
            self._cv.notify_all()
            return True

    def abort(self, digest: bytes, session: int) -> None:
        with self._cv:
            fill = self._filling.get(digest)
            if fill is not None and fill[0] == session:
                self._abort(digest)
                self._cv.notify_all()

    def _abort(self, digest: bytes) -> None:
        _, offset, _ = self._filling.pop(digest)
        self.allocator.free(offset)

    def _evict(self, digest: Hashable) -> None:
        offset, _ = self._index.pop(digest)
        self.counters["evictions"] += 1
        if self._pins.get(offset):
            self._zombies.add(offset)
        else:
            self.allocator.free(offset)

    # -- hints and housekeeping ----------------------------------------------------------
    def announce(self, digests: Sequence[bytes], job: Hashable = None) -> None:
        with self._cv:
            self._policy.announce(digests, job)

    def contains(self, digest: bytes) -> bool:
        return digest in self._index

    def drop(self) -> None:
        """Forget every chunk (pinned ones stay readable until released)."""
        with self._cv:
            for digest in list(self._index):
                self._policy.remove(digest)
                self._evict(digest)

    def stats(self) -> dict[str, int]:
        with self._cv:
            return {**self.counters, "chunks": len(self._index), "capacity": self.allocator.capacity,
                    "used_bytes": self.allocator.used_bytes, "pinned": len(self._pins),
                    "zombies": len(self._zombies)}

    def check(self) -> list[str]:
        """Invariants the fault tests assert after every run; an empty list when sound."""
        with self._cv:
            problems = []
            places = [p[0] for p in self._index.values()] + [f[1] for f in self._filling.values()]
            if len(set(places)) != len(places):
                problems.append("two chunks share a slot")
            if set(places) & self._zombies:
                problems.append("an indexed slot is also awaiting release")
            if self.allocator.used_bytes > self.allocator.capacity:
                problems.append("used bytes exceed the arena")
            total = Counter()
            for pins in [*self._session_pins.values(), *(p for _, p in self._leases)]:
                total.update(pins)
            if +total != +self._pins:
                problems.append("pin counts disagree with the sessions' pins")
            return problems

    def close(self) -> None:
        self.segment.close()
