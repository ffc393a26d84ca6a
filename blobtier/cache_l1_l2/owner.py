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

**Namespaces.** A fill may name the namespace of its chunk (the first component of the
blob's key, ``imagenet`` for ``imagenet/train/0001.jpg``; chunks filed with none share
the namespace ``""``). Each namespace has an eviction policy of its own, over its own
chunks only: the one ``namespace_policies`` names for it, else the default ``policy``.
A fill is admitted by its own namespace's policy. When room is needed, the victim comes
from the filling namespace if it already holds at least an equal share of the arena
(the capacity over the namespaces holding chunks, itself included); otherwise, and when
its policy gives up nothing, from the namespace holding the most bytes, then the next.
A ``keep`` namespace never gives up a chunk. (The equal-share guard keeps a namespace
that arrives at a full arena from evicting only its own few chunks forever.)

**Shares.** A namespace may be given a share of the arena (``namespace_shares``, a
fraction; ``configure_namespaces`` changes them while serving: the daemon reads them from
the region's namespace objects, ``blobtier ns set NS --l1-share``). Its share replaces the
equal share above, and while it holds no more than its share, no other namespace's fill
evicts its chunks (neither as a victim nor by moving its pages): such a fill evicts
elsewhere or is refused.

**Room for a size.** The arena is a slab allocator (``arena.py``): each size class owns
runs of pages. When a class has no free slot and no free run of pages, the owner takes
the policy's victim: a victim of the same class frees a slot; a victim of another class
is evicted and the run of pages around it is moved to the filling class, evicting the
other chunks on those pages (memcached's slab automove, driven by the policy's choice
instead of a background thread). Pages holding a pinned slot, a fill in flight or a
chunk of a namespace whose policy never evicts are not moved; a victim on such pages is
passed over (filed again as if new) rather than evicted for nothing. So memory follows
the sizes in use and a cache of mixed sizes stays full, never past its capacity.

**Fork.** An owner serves only the process that made it. A forked child's copy of it
refuses every call (``TierUnavailable``, from the moment the child starts): it would hand
out slots the parent's owner also hands out, so the parent would read the child's bytes
as its own. A child reaches the arena as any other reader does, through the owner's
socket.
"""

from __future__ import annotations

import collections
import itertools
import os
import secrets
import threading
import time
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence

from blobtier import checksum, forks
from blobtier.cache_l1_l2.arena import Segment, SlabAllocator
from blobtier.errors import InvalidRequest, TierUnavailable
from blobtier.eviction import POLICIES, EvictionPolicy, check_shares, make_policy

Place = tuple[int, int]  # (offset in the segment, length)
REFUSED, GRANTED, BUSY = 0, 1, 2  # answers to a claim
FILL_WAIT_S = 10.0  # how long a lookup waits for another session's fill of the same chunk
SESSION_GRACE_S = 60.0  # pins of a closed session outlive it by this much (see end_session)
_MAX_EVICTIONS = 256  # per reservation: beyond this the chunk is refused, not forced in
MAX_NAMESPACE_BYTES = 255  # a namespace travels in one length byte on the wire


def namespace_of(key: str) -> str:
    """The namespace of a blob key: its first path component."""
    return key.split("/", 1)[0]


def check_namespace_policies(policies: Mapping[str, str],
                             what: str = "namespace policy") -> dict[str, str]:
    """``policies`` as a plain dict, or ``InvalidRequest`` naming the first bad entry."""
    out = {}
    for ns, policy in policies.items():
        if not ns or "/" in ns or len(ns.encode()) > MAX_NAMESPACE_BYTES:
            raise InvalidRequest(f"{what} {ns}={policy}: {ns!r} is not a namespace")
        if policy not in POLICIES:
            raise InvalidRequest(f"{what} {ns}={policy}: unknown policy {policy!r}; "
                                 f"choose one of {sorted(POLICIES)}")
        out[ns] = policy
    return out


def parse_namespace_policies(entries: Iterable[str],
                             what: str = "--namespace-policy") -> dict[str, str]:
    """``["imagenet=keep", "text=lru"]`` (the daemon's ``--namespace-policy`` flags) as
    ``{namespace: policy}``; ``InvalidRequest`` names the first bad entry."""
    out: dict[str, str] = {}
    for entry in entries:
        ns, sep, policy = entry.partition("=")
        ns, policy = ns.strip(), policy.strip()
        if not sep:
            raise InvalidRequest(f"{what} {entry!r}: expected NAMESPACE=POLICY")
        if ns in out:
            raise InvalidRequest(f"{what} {entry!r}: namespace {ns!r} is given twice")
        out.update(check_namespace_policies({ns: policy}, what))
    return out


class _ForkedCopy:
    """The lock of an owner copied into a forked child: entering it raises."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __enter__(self) -> None:
        raise TierUnavailable(f"the L1 arena's owner is process {self.pid}, not this forked "
                              "child; a child reaches the arena through the owner's socket")

    def __exit__(self, *exc: object) -> None:
        return None


class ArenaOwner:
    """Args:
        capacity: bytes of shared memory (the hard cap).
        policy: the default eviction policy name (``blobtier.eviction.POLICIES``).
        name: the segment's name (default: unique per owner).
        namespace_policies: ``{namespace: policy name}`` for namespaces that do not use
            the default.
        max_chunk: the largest chunk the arena takes (default: ``default_max_chunk``).
        namespace_shares: ``{namespace: fraction of the arena}`` kept for it (module doc).
    """

    def __init__(self, capacity: int, policy: str = "sieve", name: str | None = None,
                 namespace_policies: Mapping[str, str] | None = None,
                 max_chunk: int | None = None, namespace_shares: Mapping[str, float] | None = None) -> None:
        make_policy(policy)  # a bad name fails here, not on the first fill
        self.namespace_policies = check_namespace_policies(namespace_policies or {})
        self.namespace_shares = check_shares(namespace_shares or {})
        self.allocator = SlabAllocator(capacity, max_chunk)
        name = name or f"blobtier-l1-{os.getpid()}-{secrets.token_hex(4)}"  # unique per owner
        self.segment = Segment.create(name, self.allocator.capacity)
        self.policy_name = policy
        self._policies: dict[str, EvictionPolicy] = {}
        self._index: dict[bytes, Place] = {}
        self._ns_of: dict[bytes, str] = {}  # digest -> namespace, for indexed chunks
        self._at: dict[int, bytes] = {}  # slot offset -> digest, for indexed chunks
        self._ns_bytes: Counter[str] = Counter()  # slot bytes of indexed chunks per namespace
        # digest -> (session, offset, length, namespace)
        self._filling: dict[bytes, tuple[int, int, int, str]] = {}
        self._pins: Counter[int] = Counter()  # offset -> pins from every session
        self._session_pins: dict[int, Counter[int]] = {}
        self._zombies: set[int] = set()  # evicted while pinned: freed on the last release
        self._leases: list[tuple[float, Counter[int]]] = []  # pins of ended sessions, by expiry
        # (session, offset) releases queued by code that must not take the lock (a view's
        # finaliser, which may run inside any call): applied at the start of the next call.
        self._deferred: collections.deque[tuple[int, int]] = collections.deque()
        self._cv = threading.Condition()
        self._sessions = itertools.count(1)
        self.counters = Counter()
        self.pid = os.getpid()
        forks.register(self)

    def _after_fork_in_child(self) -> None:
        # Every call but ``release_later`` and ``contains`` (a read of the index that hands
        # out nothing) goes through the lock: the copy's lock refuses, its releases vanish.
        self._cv = _ForkedCopy(self.pid)
        self._deferred = collections.deque(maxlen=0)

    def _policy(self, namespace: str) -> EvictionPolicy:
        policy = self._policies.get(namespace)
        if policy is None:
            policy = self._policies[namespace] = make_policy(
                self.namespace_policies.get(namespace, self.policy_name))
        return policy

    # -- sessions ----------------------------------------------------------------------
    def open_session(self) -> int:
        with self._cv:
            session = next(self._sessions)
            self._session_pins[session] = Counter()
            return session

    def end_session(self, session: int, grace_s: float | None = None) -> None:
        """Abort a session's fills; its pins expire after ``grace_s`` (default:
        ``SESSION_GRACE_S`` as it is when called).

        A reader whose connection broke may still be alive and reading the views it was
        given, so its slots are not reused at once; a reader that died frees them when
        the grace period ends.
        """
        if grace_s is None:
            grace_s = SESSION_GRACE_S
        with self._cv:
            self._apply_deferred()
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
        ``touch=False`` (a prefetcher's look) does not count as a use for the policy.

        A session that ends while this waits gets the places it waited for unpinned
        (nobody is left to release them) and waits for nothing more.
        """
        out: list[Place | None] = []
        # The hot path of every L1 hit: plain dict get/set (Counter's += and del run Python
        # code), counters added once per batch.
        hits = misses = hit_bytes = 0
        with self._cv:
            self._apply_deferred()
            pins = self._session_pins.get(session)
            if pins is None:
                raise InvalidRequest(f"lookup in session {session}, which is not open")
            all_pins = self._pins
            for digest in digests:
                place = self._index.get(digest)
                if place is None and pins is not None and digest in self._filling \
                        and self._filling[digest][0] != session:
                    self._cv.wait_for(lambda d=digest: d not in self._filling, timeout=wait_s)
                    # end_session may have run while we waited: pin only into a live session.
                    if self._session_pins.get(session) is not pins:
                        pins = None
                    place = self._index.get(digest)
                if place is None:
                    misses += 1
                    out.append(None)
                    continue
                if touch:
                    self._policy(self._ns_of[digest]).hit(digest)
                if pins is not None:
                    offset = place[0]
                    all_pins[offset] = all_pins.get(offset, 0) + 1
                    pins[offset] = pins.get(offset, 0) + 1
                hits += 1
                hit_bytes += place[1]
                out.append(place)
            self.counters["hits"] += hits
            self.counters["hit_bytes"] += hit_bytes  # L1 throughput: bytes readers found here
            self.counters["misses"] += misses
        return out

    def release(self, offsets: Sequence[int], session: int) -> None:
        with self._cv:
            self._apply_deferred()
            self._release(offsets, session)

    def release_later(self, offsets: Sequence[int], session: int) -> None:
        """``release`` without taking the lock, safe from a finaliser that may run while
        this thread is inside the owner: applied at the start of the next call."""
        self._deferred.extend((session, o) for o in offsets)

    def _apply_deferred(self) -> None:
        while self._deferred:
            try:
                session, offset = self._deferred.popleft()
            except IndexError:
                break
            self._release((offset,), session)

    def _release(self, offsets: Iterable[int], session: int) -> None:
        pins = self._session_pins.get(session)
        if pins is None:
            return  # a stale or forged release changes nothing
        for offset in offsets:
            n = pins.get(offset, 0)
            if n <= 0:
                continue
            if n == 1:
                pins.pop(offset)
            else:
                pins[offset] = n - 1
            self._unpin(offset, 1)

    def _unpin(self, offset: int, n: int) -> None:
        left = self._pins.get(offset, 0) - n
        if left > 0:
            self._pins[offset] = left
        else:
            self._pins.pop(offset, None)
            if offset in self._zombies:
                self._zombies.discard(offset)
                self.allocator.free(offset)

    # -- filling -----------------------------------------------------------------------
    def reserve(self, digest: bytes, length: int, session: int, namespace: str = "") -> int | None:
        """A slot to write ``length`` bytes of ``digest`` into, or None: already held,
        being filled, too big, or refused by the policy."""
        return self.claim(digest, length, session, namespace)[1]

    def claim(self, digest: bytes, length: int, session: int,
              namespace: str = "") -> tuple[int, int | None]:
        """(GRANTED, slot) to fill ``digest`` of ``namespace``; (BUSY, None) if it is held
        or being filled (a lookup will wait for it); (REFUSED, None) if the cache will not
        take it."""
        with self._cv:
            self._apply_deferred()
            if digest in self._index or digest in self._filling:
                return BUSY, None
            if length <= 0 or length > self.allocator.max_chunk or session not in self._session_pins:
                return REFUSED, None
            if self._leases:
                self._expire_leases()
            full = not self.allocator.room_for(length)
            if not self._policy(namespace).admit(digest, full):
                self.counters["rejected"] += 1
                return REFUSED, None
            offset = self.allocator.alloc(length)
            if offset is None:
                offset = self._make_room(length, namespace)
            if offset is None:
                self.counters["rejected"] += 1
                return REFUSED, None
            self._filling[digest] = (session, offset, length, namespace)
            return GRANTED, offset

    def _make_room(self, length: int, namespace: str) -> int | None:
        """Evict until a slot for ``length`` bytes frees (see the module docstring)."""
        k = self.allocator.klass(length)
        skipped: list[bytes] = []  # victims on pages that cannot move: kept, refiled below
        try:
            for _ in range(_MAX_EVICTIONS):
                victim = self._victim(namespace)
                if victim is None:
                    return None
                offset = self._index[victim][0]
                if self.allocator.class_of(offset) == k:
                    self._evict(victim)  # a slot of our size (or, if pinned, one later)
                else:
                    chunks = self._pages_to_move(offset, k)
                    if chunks is None:
                        skipped.append(victim)  # evicting it would free nothing we can use
                        continue
                    for digest in chunks:  # the victim among them; its policy forgot it
                        self._policy(self._ns_of[digest]).remove(digest)
                        self._evict(digest)
                    self.counters["pages_moved"] += 1
                offset = self.allocator.alloc(length)
                if offset is not None:
                    return offset
            return None
        finally:
            for digest in skipped:  # back to their policies, as newly filed chunks
                self._policy(self._ns_of[digest]).insert(digest, accessed=False)

    def _victim(self, namespace: str) -> bytes | None:
        """The next chunk to evict for a fill of ``namespace`` (the module's rule)."""
        holders = [ns for ns, n in self._ns_bytes.items() if n > 0]
        share = self.allocator.capacity // max(1, len(set(holders) | {namespace}))
        if namespace in self.namespace_shares:
            share = int(self.namespace_shares[namespace] * self.allocator.capacity)
        order = sorted(holders, key=lambda ns: -self._ns_bytes[ns])
        if self._ns_bytes[namespace] >= share:
            order.insert(0, namespace)
        elif namespace not in order:
            order.append(namespace)
        for ns in dict.fromkeys(order):
            if ns != namespace and self._within_share(ns):
                continue  # kept for it: another namespace's fill never takes it
            policy = self._policies.get(ns)
            victim = policy.victim() if policy is not None else None
            if victim is not None:
                return victim
        return None

    def _within_share(self, namespace: str) -> bool:
        """Whether ``namespace`` has a share and holds no more than it."""
        share = self.namespace_shares.get(namespace)
        return share is not None and self._ns_bytes[namespace] <= share * self.allocator.capacity

    def configure_namespaces(self, shares: Mapping[str, float], policies: Mapping[str, str]) -> None:
        """Replace the namespaces' shares, and their policies where given (a namespace
        whose policy changes files its chunks under the new one, as not yet used).

        Raises ``InvalidRequest`` naming a bad entry (nothing changed then)."""
        shares = check_shares(shares)
        policies = check_namespace_policies(policies)
        with self._cv:
            self.namespace_shares = shares
            for ns, name in policies.items():
                if self.namespace_policies.get(ns, self.policy_name) == name:
                    continue
                self.namespace_policies[ns] = name
                if self._policies.pop(ns, None) is not None:
                    new = self._policy(ns)
                    for digest in [d for d, owner in self._ns_of.items() if owner == ns]:
                        new.insert(digest, accessed=False)

    def _pages_to_move(self, offset: int, k: int) -> list[bytes] | None:
        """The chunks to evict to free a run of pages for class ``k`` around the slab of
        ``offset``: of the runs of ``k``'s span over that slab, the one with the fewest
        bytes in use; None if each holds a slot that must stay."""
        start, span = self.allocator.slab_pages(offset)
        need, n_pages = self.allocator.spans[k], self.allocator.n_pages
        if need > n_pages:
            return None
        # Runs of `need` pages that overlap the slab (or lie inside it, when it is longer).
        lo, hi = sorted((max(0, start + span - need), min(start, n_pages - need)))
        best: tuple[int, list[bytes]] | None = None
        for s in range(lo, hi + 1):
            if self.allocator.run_holds(s, k):  # one over the short last page may not
                found = self._movable(s, need)
                if found is not None and (best is None or found[0] < best[0]):
                    best = found
        return None if best is None else best[1]

    def _movable(self, start: int, span: int) -> tuple[int, list[bytes]] | None:
        """(bytes in use, chunks) over pages ``[start, start + span)``, or None when a slot
        there must stay: pinned, a zombie, a fill in flight, or a kept chunk."""
        cost, chunks = 0, []
        for _, _, used in self.allocator.runs_over(start, span):
            for offset in used:
                digest = self._at.get(offset)  # None: a fill in flight, or a zombie
                if (digest is None or self._pins.get(offset)
                        or not self._policy(self._ns_of[digest]).evicts
                        or self._within_share(self._ns_of[digest])):
                    return None
                chunks.append(digest)
                cost += self.allocator.slot_size(offset)
        return cost, chunks

    def commit(self, digest: bytes, session: int, accessed: bool = True) -> bool:
        """Publish a filled slot; ``accessed=False`` for a prefetch (not a use yet)."""
        with self._cv:
            fill = self._filling.get(digest)
            if fill is None or fill[0] != session:
                return False
            del self._filling[digest]
            _, offset, length, namespace = fill
            self._index[digest] = (offset, length)
            self._ns_of[digest] = namespace
            self._at[offset] = digest
            self._ns_bytes[namespace] += self.allocator.slot_size(offset)
            self._policy(namespace).insert(digest, accessed)
            self.counters["inserts"] += 1
            self._cv.notify_all()
            return True

    def commit_written(self, digest: bytes, session: int, length: int, algo: str, expected: int,
                       accessed: bool = True) -> None:
        """``commit`` a fill another process wrote into the segment, once its slot is
        known to hold what the filler meant: the ``length`` it claimed and bytes whose
        ``algo`` checksum is ``expected`` (from the chunk's record).

        Raises ``InvalidRequest`` naming what is wrong: no such claim (never made,
        committed already, or ended), a claim of another session (left alone), a length
        other than the claimed one, or bytes that are not those announced (a torn or
        stray write). The fill of this session is then dropped, never published.
        """
        with self._cv:
            fill = self._filling.get(digest)
            if fill is None:
                why = "is cached already" if digest in self._index else "was never claimed or has ended"
                raise InvalidRequest(f"commit refused: the chunk {why} in this session")
            if fill[0] != session:
                raise InvalidRequest("commit refused: the chunk is claimed by another session")
            offset, claimed = fill[1], fill[2]
        # Hashed outside the lock: only this session can end its own fill, and it is here.
        if length != claimed:
            why = f"{length} bytes committed into a slot claimed for {claimed}"
        elif checksum.compute(algo, self.segment.view[offset:offset + length]) != expected:
            why = "the slot does not hold the bytes announced (not fully written)"
        else:
            self.commit(digest, session, accessed)
            return
        self.abort(digest, session)
        self.counters["refused_commits"] += 1
        raise InvalidRequest(f"commit refused: {why}; the fill is dropped")

    def discard(self, digests: Iterable[bytes]) -> int:
        """Forget chunks a reader found corrupt (pinned slots stay readable until
        released, then are reused); returns how many were held."""
        n = 0
        with self._cv:
            self._apply_deferred()
            for digest in digests:
                if digest in self._index:
                    self._policy(self._ns_of[digest]).remove(digest)
                    self._evict(digest)
                    n += 1
            self.counters["corrupt"] += n
        return n

    def abort(self, digest: bytes, session: int) -> None:
        with self._cv:
            fill = self._filling.get(digest)
            if fill is not None and fill[0] == session:
                self._abort(digest)
                self._cv.notify_all()

    def _abort(self, digest: bytes) -> None:
        offset = self._filling.pop(digest)[1]
        self.allocator.free(offset)

    def _evict(self, digest: Hashable) -> None:
        """Drop an indexed chunk (its policy has already forgotten it)."""
        offset, _ = self._index.pop(digest)
        namespace = self._ns_of.pop(digest)
        del self._at[offset]
        self._ns_bytes[namespace] -= self.allocator.slot_size(offset)
        if not self._ns_bytes[namespace]:
            del self._ns_bytes[namespace]
        self.counters["evictions"] += 1
        if self._pins.get(offset):
            self._zombies.add(offset)
        else:
            self.allocator.free(offset)

    # -- hints and housekeeping ----------------------------------------------------------
    def announce(self, digests: Sequence[bytes], job: Hashable = None, namespace: str = "") -> None:
        """Tell ``namespace``'s policy the order in which ``job`` will read ``digests``."""
        with self._cv:
            self._policy(namespace).announce(digests, job)

    def contains(self, digest: bytes) -> bool:
        return digest in self._index

    def namespace_bytes(self) -> dict[str, int]:
        """Slot bytes of the chunks held, per namespace."""
        with self._cv:
            return dict(self._ns_bytes)

    def drop(self) -> None:
        """Forget every chunk (pinned ones stay readable until released)."""
        with self._cv:
            self._apply_deferred()
            for digest in list(self._index):
                self._policy(self._ns_of[digest]).remove(digest)
                self._evict(digest)

    def stats(self) -> dict[str, int]:
        with self._cv:
            self._apply_deferred()
            return {**self.counters, "chunks": len(self._index), "capacity": self.allocator.capacity,
                    "used_bytes": self.allocator.used_bytes, "pinned": len(self._pins),
                    "zombies": len(self._zombies)}

    def check(self) -> list[str]:
        """Invariants the fault tests assert after every run; an empty list when sound."""
        with self._cv:
            self._apply_deferred()
            problems = []
            places = [p[0] for p in self._index.values()] + [f[1] for f in self._filling.values()]
            if len(set(places)) != len(places):
                problems.append("two chunks share a slot")
            if set(places) & self._zombies:
                problems.append("an indexed slot is also awaiting release")
            if self.allocator.used_bytes > self.allocator.capacity:
                problems.append("used bytes exceed the arena")
            reverse = {o: d for d, (o, _) in self._index.items()}
            if reverse != self._at or self._ns_of.keys() != self._index.keys():
                problems.append("the index and its reverse maps disagree")
            held = Counter()
            for digest, (offset, _) in self._index.items():
                held[self._ns_of[digest]] += self.allocator.slot_size(offset)
            if +held != +self._ns_bytes:
                problems.append("bytes per namespace disagree with the index")
            total = Counter()
            for pins in [*self._session_pins.values(), *(p for _, p in self._leases)]:
                total.update(pins)
            if +total != +self._pins:
                problems.append("pin counts disagree with the sessions' pins")
            return problems

    def close(self) -> None:
        self.segment.close()
