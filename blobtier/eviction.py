"""Chunk-level eviction policies, chosen by name.

A policy only orders keys; the cache that uses it owns the bytes and the byte budget.
The cache calls ``insert`` for a new key (``accessed=False`` when it was fetched ahead
of its reader: a prefetch, which is not a use), ``hit`` on every hit, ``remove`` when it drops a
key itself, and ``victim`` when it needs room; ``victim`` forgets the key it returns.
``admit`` lets a policy refuse a new key when the cache is full (return False) instead
of evicting for it. ``announce`` tells a policy the future: the order in which a job
will read keys (the sampler knows it); order-blind policies ignore it.

Training reads a fresh random permutation of the dataset every epoch: LRU's worst case.
For one job no policy beats a hit ratio equal to the cache's share of the dataset, and
``keep`` ("admit until full, then keep what you have") reaches it. With several jobs
sharing a cache, ``clairvoyant`` (Belady's MIN over the announced orders) evicts the
chunk needed farthest in the future and needs far fewer origin reads than any
order-blind policy.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Protocol


class EvictionPolicy(Protocol):
    evicts: bool
    """False for a policy whose keys must never be evicted to make room for others (Keep):
    a cache then leaves its keys alone, even when it frees space in bulk."""

    def announce(self, keys: Sequence[Hashable], job: Hashable = None) -> None: ...

    def insert(self, key: Hashable, accessed: bool = True) -> None: ...

    def hit(self, key: Hashable) -> None: ...

    def remove(self, key: Hashable) -> None: ...

    def victim(self) -> Hashable | None: ...

    def admit(self, key: Hashable, full: bool) -> bool: ...


class _OrderBlind:
    evicts = True

    def announce(self, keys: Sequence[Hashable], job: Hashable = None) -> None:
        pass  # knowing the future does not change these policies

    def admit(self, key: Hashable, full: bool) -> bool:
        return True


class LRU(_OrderBlind):
    """Least recently used: evict the key whose last use is oldest."""

    def __init__(self) -> None:
        self._order: OrderedDict[Hashable, None] = OrderedDict()

    def insert(self, key: Hashable, accessed: bool = True) -> None:
        self._order[key] = None

    def hit(self, key: Hashable) -> None:
        if key in self._order:
            self._order.move_to_end(key)

    def remove(self, key: Hashable) -> None:
        self._order.pop(key, None)

    def victim(self) -> Hashable | None:
        return self._order.popitem(last=False)[0] if self._order else None


class _Node:
    __slots__ = ("key", "newer", "older", "visited")

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self.newer: _Node | None = None
        self.older: _Node | None = None
        self.visited = False


class SIEVE(_OrderBlind):
    """SIEVE (Zhang et al., NSDI '24): a FIFO queue plus one visited bit and a moving hand.

    A hit only sets a bit (no list surgery, so hits are cheap and lock-friendly). The hand
    walks from the oldest entry towards the newest, clearing visited bits, and evicts the
    first unvisited entry; new entries go in at the newest end.

    A chunk fetched ahead of its reader (``accessed=False``) enters with its bit set: its
    use is still to come. Entering unvisited, it was the first thing the hand found in a
    cache full of chunks already read once (whose bits the reads had set), so a random-order
    epoch evicted most prefetched chunks before the trainer read them (84% in
    ``blobtier plan``, 783 of 1,000 samples fetched twice in a real first epoch).
    """

    def __init__(self) -> None:
        self._nodes: dict[Hashable, _Node] = {}
        self._newest: _Node | None = None
        self._oldest: _Node | None = None
        self._hand: _Node | None = None

    def insert(self, key: Hashable, accessed: bool = True) -> None:
        if key in self._nodes:
            return
        node = _Node(key)
        node.visited = not accessed  # a prefetch: passed over once, as a use would be
        node.older = self._newest
        if self._newest is not None:
            self._newest.newer = node
        self._newest = node
        if self._oldest is None:
            self._oldest = node
        self._nodes[key] = node

    def hit(self, key: Hashable) -> None:
        node = self._nodes.get(key)
        if node is not None:
            node.visited = True

    def remove(self, key: Hashable) -> None:
        node = self._nodes.pop(key, None)
        if node is not None:
            self._unlink(node)

    def victim(self) -> Hashable | None:
        node = self._hand or self._oldest
        while node is not None and node.visited:
            node.visited = False
            node = node.newer or self._oldest
        if node is None:
            return None
        del self._nodes[node.key]
        self._hand = node  # _unlink moves it on to the next newer entry (None: wrap around)
        self._unlink(node)
        return node.key

    def _unlink(self, node: _Node) -> None:
        if self._hand is node:
            self._hand = node.newer
        if node.newer is not None:
            node.newer.older = node.older
        else:
            self._newest = node.older
        if node.older is not None:
            node.older.newer = node.newer
        else:
            self._oldest = node.newer
        node.newer = node.older = None


class Keep(_OrderBlind):
    """Admit until full, then keep what you have (CoorDL's MinIO cache).

    Under per-epoch random permutations every cached chunk is equally likely to be read
    next, so swapping one for another can only cost origin reads: once full, new chunks
    are refused and nothing is evicted (unless the cache drops a key itself).
    """

    evicts = False

    def __init__(self) -> None:
        self._keys: dict[Hashable, None] = {}

    def insert(self, key: Hashable, accessed: bool = True) -> None:
        self._keys[key] = None

    def hit(self, key: Hashable) -> None:
        pass

    def remove(self, key: Hashable) -> None:
        self._keys.pop(key, None)

    def victim(self) -> Hashable | None:
        return None  # never make room: refuse instead (see admit)

    def admit(self, key: Hashable, full: bool) -> bool:
        return not full


_NEVER = float("inf")
_SLACK = 4096  # accesses may run this far out of announced order (DataLoader workers)


class Clairvoyant:
    """Belady's MIN over announced access orders: evict the key needed farthest ahead.

    Each job announces the order in which it will read keys (the rest of this epoch
    and the next, say). Jobs are assumed to progress at the same rate, so a key's next
    use is comparable across jobs on one time line: ``start + position``, where
    ``start`` is the shared clock (accesses so far / jobs) when the job announced. An
    access consumes the key's earliest pending use. Keys with no announced future use
    go first, oldest insertion first; with nothing announced the policy is FIFO, and a
    full cache admits a key needed no later than its farthest one (so an unannounced key
    still replaces the oldest unannounced one).
    """

    evicts = True

    def __init__(self) -> None:
        self._jobs: dict[Hashable, list[Hashable]] = {}
        self._uses: dict[Hashable, list[tuple[float, Hashable]]] = {}  # key -> heap (time, job)
        # key -> (next-use time, tiebreak) it is filed under; the tiebreak holds the filing
        # tick, so compacting the heap keeps "oldest first" among equal next uses.
        self._cached: dict[Hashable, tuple[float, int]] = {}
        self._heap: list[tuple[float, int, Hashable]] = []  # (-next use, tiebreak, key)
        self._tick = 0
        self._accesses = 0

    def announce(self, keys: Sequence[Hashable], job: Hashable = None) -> None:
        """Replace ``job``'s future with ``keys``, starting now."""
        old = self._jobs.pop(job, None)
        if old is not None:
            for key in set(old):
                kept = [u for u in self._uses.get(key, ()) if u[1] != job]
                if kept:
                    heapq.heapify(kept)
                    self._uses[key] = kept
                else:
                    self._uses.pop(key, None)
        self._jobs[job] = list(keys)
        start = self._clock()
        for pos, key in enumerate(keys):
            heapq.heappush(self._uses.setdefault(key, []), (start + pos, job))
        self._heap = []
        for key in list(self._cached):
            self._file(key)

    def _clock(self) -> float:
        return self._accesses / max(1, len(self._jobs))

    def _next_use(self, key: Hashable) -> float:
        uses = self._uses.get(key)
        horizon = self._clock() - _SLACK
        while uses and uses[0][0] < horizon:  # a use that never happened: forget it
            heapq.heappop(uses)
        return uses[0][0] if uses else _NEVER

    def _file(self, key: Hashable) -> None:
        nxt = self._next_use(key)
        self._tick += 1
        # Largest next use first; among keys never used again, the oldest first.
        tiebreak = self._tick if nxt == _NEVER else -self._tick
        self._cached[key] = (nxt, tiebreak)
        heapq.heappush(self._heap, (-nxt, tiebreak, key))
        if len(self._heap) > 4 * len(self._cached) + 1024:
            self._heap = [(-t, tb, k) for k, (t, tb) in self._cached.items()]
            heapq.heapify(self._heap)

    def _consume(self, key: Hashable) -> None:
        self._accesses += 1
        uses = self._uses.get(key)
        if uses:
            heapq.heappop(uses)
            if not uses:
                del self._uses[key]

    def insert(self, key: Hashable, accessed: bool = True) -> None:
        if accessed:
            self._consume(key)
        self._file(key)

    def hit(self, key: Hashable) -> None:
        self._consume(key)
        if key in self._cached:
            self._file(key)

    def remove(self, key: Hashable) -> None:
        self._cached.pop(key, None)

    def _top(self) -> Hashable | None:
        """The cached key filed with the farthest next use (dropping stale heap entries)."""
        while self._heap:
            prio, tiebreak, key = self._heap[0]
            if self._cached.get(key) == (-prio, tiebreak):
                return key
            heapq.heappop(self._heap)
        return None

    def victim(self) -> Hashable | None:
        key = self._top()
        if key is not None:
            heapq.heappop(self._heap)
            del self._cached[key]
        return key

    def admit(self, key: Hashable, full: bool) -> bool:
        """When full, admit a key only if it is needed no later than the farthest cached
        one. Ties admit: swapping two keys never needed again costs no hit, and it keeps
        a cache with nothing announced caching (FIFO) instead of freezing when full."""
        if not full:
            return True
        top = self._top()
        if top is not None and self._next_use(key) <= self._cached[top][0]:
            return True
        self._consume(key)  # the access happened; the cache just will not keep it
        return False


POLICIES: dict[str, Callable[[], EvictionPolicy]] = {
    "lru": LRU, "sieve": SIEVE, "keep": Keep, "clairvoyant": Clairvoyant}


def make_policy(name: str) -> EvictionPolicy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown eviction policy {name!r}; choose one of {sorted(POLICIES)}") from None


def check_shares(shares: Mapping[str, float], what: str = "namespace share") -> dict[str, float]:
    """Per-namespace shares of a cache (the fraction of its capacity kept for each
    namespace, used by L1 and L3) as a plain dict. Raises ``InvalidRequest`` naming the
    first bad entry (not a namespace, a share outside (0, 1]) or a sum past 1."""
    from blobtier.errors import InvalidRequest

    out = {}
    for ns, share in shares.items():
        if not isinstance(ns, str) or not ns or "/" in ns or len(ns.encode()) > 255:
            raise InvalidRequest(f"{what} {ns!r}: not a namespace")
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
            raise InvalidRequest(f"{what} {ns}={share!r}: a share is a fraction in (0, 1]")
        out[ns] = float(share)
    if sum(out.values()) > 1 + 1e-9:
        raise InvalidRequest(f"{what}s sum to {sum(out.values()):.3g}, more than 1")
    return out
