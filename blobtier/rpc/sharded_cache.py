"""``ShardedChunkCache``: one cache tier spread over several nodes by weighted rendezvous hashing.

Each chunk has a home node: the best-ranked of the configured nodes for its digest
(``blobtier.placement``), so every client sends a chunk to the same node and a node's
single flight covers every reader of it. A node that fails a call is skipped for a while
(a backoff that doubles with each further failure, reset by the next success); its chunks
go to their next-ranked node, which reads them through from the block layer. When it
answers again it takes its chunks back. Losing one node of N moves only the chunks it was
home to (about 1/N); the others keep their homes and their cached copies.

A chunk whose every candidate is skipped is a miss: the chain reads it from the block
layer itself. ``ShardedReadThroughCache`` is the same over nodes that read their misses
through from the block layer (flash nodes; L2 peer daemons do not).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from blobtier import placement
from blobtier.chunks import Buffer, ChunkCache, ChunkKey, ChunkRef, Lookup, ReportsCorrupt
from blobtier.errors import InvalidRequest, TierUnavailable
from blobtier.rpc.remote_cache import LocalRegions, ProcessLocalPool, RemoteChunkCache
from blobtier.rpc.tls import Tls

log = logging.getLogger(__name__)


class NodeHealth:
    """Which nodes to skip: a node that failed is benched for ``retry_after_s``, doubling
    with each consecutive failure up to ``max_s``; a success forgets its failures.

    No lock, so nothing can be held across a fork: each update is a dict operation, atomic
    under the GIL, and two racing failures can at worst shorten one backoff.
    """

    def __init__(self, retry_after_s: float = 1.0, max_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.retry_after_s = retry_after_s
        self.max_s = max_s
        self._clock = clock
        self._failures: dict[str, int] = {}
        self._until: dict[str, float] = {}

    def failed(self, node: str) -> None:
        n = self._failures.get(node, 0)
        self._failures[node] = n + 1
        self._until[node] = self._clock() + min(self.max_s, self.retry_after_s * 2 ** min(n, 32))

    def ok(self, node: str) -> None:
        if node in self._failures:
            self._failures.pop(node, None)
            self._until.pop(node, None)

    def usable(self, node: str) -> bool:
        until = self._until.get(node)
        return until is None or until <= self._clock()

    def benched(self) -> list[str]:
        return sorted(n for n in list(self._until) if not self.usable(n))


class ShardedChunkCache:
    """A ``ChunkCache`` over several nodes; each chunk lives on its rendezvous home.

    Args:
        nodes: (node id, weight, cache) of each node; the id names it in the hash, so it
            must be the same in every client (its address).
        name: the tier's name ("l3", "l2").
        health: which nodes are skipped (default: 1 s backoff doubling to 60 s).
        local: the node that is this host's own (an L2 client's daemon, whose arena is
            the L1 above): chunks homed there are neither asked for nor offered.
    """

    trusted = False

    def __init__(self, nodes: Sequence[tuple[str, float, ChunkCache]], *, name: str = "l3",
                 health: NodeHealth | None = None, local: str | None = None) -> None:
        if not nodes:
            raise InvalidRequest("a sharded cache needs at least one node")
        self.name = name
        self.local = local
        self.ids = [n for n, _, _ in nodes]
        self.weights = [w for _, w, _ in nodes]
        self.members = {n: cache for n, _, cache in nodes}
        self.health = health or NodeHealth()
        self._pool = ProcessLocalPool(max(2, len(self.ids)), f"blobtier-{name}")

    @classmethod
    def connect(cls, endpoints: Sequence[tuple[str, float]], *, name: str = "l3", tls: Tls | None = None,
                timeout_s: float = 10.0, retry_after_s: float = 1.0, read_through: bool = True,
                local: str | None = None, local_reads: Callable[[str], LocalRegions] | None = None,
                token: str | None = None) -> ShardedChunkCache:
        """Over gRPC nodes given as (``host:port``, weight); ``read_through``: the nodes
        read misses through from the block layer (a ``ShardedReadThroughCache``)."""
        kind = ShardedReadThroughCache if read_through else ShardedChunkCache
        return kind([(addr, w, RemoteChunkCache(addr, name=name, tls=tls, timeout_s=timeout_s,
                                                local_reads=local_reads, token=token))
                     for addr, w in endpoints], name=name, health=NodeHealth(retry_after_s), local=local)

    def rank(self, key: ChunkKey) -> list[str]:
        """Every node, best home first, for ``key``."""
        return placement.rank(key.digest(), self.ids, self.weights)

    def home(self, key: ChunkKey, exclude: frozenset[str] = frozenset()) -> str | None:
        """The best-ranked node that is not skipped (nor in ``exclude``)."""
        for node in self.rank(key):
            if node not in exclude and self.health.usable(node):
                return node
        return None

    # -- ChunkCache ------------------------------------------------------------------
    def get_many(self, keys: Sequence[ChunkKey], touch: bool = True) -> dict[ChunkKey, memoryview]:
        """Ask each key's home node; the keys of a node that fails go to their next
        candidate once, then count as misses."""
        return self._lookup(keys, touch, None).found

    def _lookup(self, keys: Sequence[ChunkKey], touch: bool,
                ref_of: dict[ChunkKey, ChunkRef] | None) -> Lookup:
        found = Lookup()
        failed: frozenset[str] = frozenset()
        todo = list(keys)
        for _ in range(2):
            groups = self._homes(todo, failed)
            if not groups:
                break
            todo = []
            for node, sub, got in self._ask(groups, touch, ref_of):
                if got is None:
                    failed |= {node}
                    todo += sub
                else:
                    found.merge(got)
            if not todo:
                break
        return found

    def _homes(self, keys: list[ChunkKey], failed: frozenset[str]) -> dict[str, list[ChunkKey]]:
        """Keys grouped by their home node (``home``), leaving out those homed here."""
        if len(self.ids) == 1:  # one node: every key's home, no ranking to do per key
            node = self.ids[0]
            usable = node not in failed and node != self.local and self.health.usable(node)
            return {node: keys} if usable and keys else {}
        groups: dict[str, list[ChunkKey]] = {}
        for key in keys:
            node = self.home(key, failed)
            if node is not None and node != self.local:
                groups.setdefault(node, []).append(key)
        return groups

    def _ask(self, groups: dict[str, list[ChunkKey]], touch: bool, ref_of: dict | None):
        def call(node: str, sub: list[ChunkKey]) -> Lookup | None:
            try:
                member = self.members[node]
                if ref_of is None:
                    got = Lookup(member.get_many(sub, touch=touch))
                else:
                    got = member.read_through(sub, [ref_of[k] for k in sub], touch)
            except (TierUnavailable, OSError) as exc:
                self._failed(node, exc)
                return None
            self.health.ok(node)
            return got

        items = list(groups.items())
        if len(items) == 1:
            return [(items[0][0], items[0][1], call(*items[0]))]
        results = self._pool.get().map(lambda item: call(*item), items)
        return [(node, sub, got) for (node, sub), got in zip(items, results)]

    def _failed(self, node: str, exc: BaseException) -> None:
        if self.health.usable(node):
            log.warning("%s node %s skipped for now: %s", self.name, node, exc)
        self.health.failed(node)

    def put(self, key: ChunkKey, data: Buffer, touch: bool = True) -> bool:
        """Offer a chunk to its home; True if it took it (False for this host's own node:
        its arena is the L1 above). ``TierUnavailable`` when every node is skipped."""
        node = self.home(key)
        if node is None:
            raise TierUnavailable(f"every {self.name} node is skipped for now")
        if node == self.local:
            return False
        try:
            return self.members[node].put(key, data, touch)
        except (TierUnavailable, OSError) as exc:
            self._failed(node, exc)
            raise

    def report_corrupt(self, keys: Sequence[ChunkKey]) -> None:
        """Tell each key's home that its copy failed its checksum. A node that cannot be
        told is skipped like any failing node; the others are told all the same."""
        for node, sub in self._homes(list(keys), frozenset()).items():
            member = self.members[node]
            if not isinstance(member, ReportsCorrupt):
                continue
            try:
                member.report_corrupt(sub)
            except (TierUnavailable, OSError) as exc:
                self._failed(node, exc)

    def contains(self, key: ChunkKey) -> bool:
        node = self.home(key)
        if node is None or node == self.local:
            return False
        try:
            return self.members[node].contains(key)
        except (TierUnavailable, OSError) as exc:
            self._failed(node, exc)
            return False

    def close(self) -> None:
        self._pool.close()
        for member in self.members.values():
            member.close()

    def __repr__(self) -> str:
        return f"<ShardedChunkCache {self.name} {self.ids}>"


class ShardedReadThroughCache(ShardedChunkCache):
    """A ``ShardedChunkCache`` over nodes that read their misses through from the block
    layer: every node a ``ReadThroughCache``, and so is the whole."""

    def read_through(self, keys: Sequence[ChunkKey], refs: Sequence[ChunkRef],
                     touch: bool = True) -> Lookup:
        """``get_many``, where each key's home reads it through when it misses; ``refs``:
        the record and index of each key."""
        if len(refs) != len(keys):
            raise InvalidRequest(f"{len(keys)} keys but {len(refs)} refs")
        return self._lookup(keys, touch, dict(zip(keys, refs)))
