"""L2: the host daemons of a cluster pool their arenas for each other.

Every daemon started with ``--listen`` serves its arena to its peers over the same gRPC
``CacheService`` the flash nodes answer (``rpc/cache_service.py``), so a client reads an
L2 peer with the L3 client code. Each chunk has a home daemon: the best-ranked of the
cluster's daemons by rendezvous hashing on the chunk's digest, the same in every client
because every daemon is told the same peer list. A client whose host L1 missed asks the
chunk's home before L3; a chunk read from below is offered to its home. So a cluster reads
each chunk from L3 about once, however many hosts train on it.

A daemon started without a source never reads through: a miss on a peer is a MISS, and
the asking client reads L3 itself. A daemon given one (``HomeFill``: ``blobtier up`` with
``services.hosts`` above 1) reads a chunk homed at it that it misses through from the
region's flash nodes and chunk servers, once however many peers ask at the same time,
and keeps it: a burst of every host reading one checkpoint reaches L3 and the block layer
once per chunk. Its clients then keep in their L1 only the chunks homed at their own
host (``HomeShare``): the pooled arenas hold each chunk once, and a client asks every
home, its own host's included, so that no client holds a claim while it waits on another
host. Without fills, keys homed at the asking host's own daemon are not sent over gRPC
at all (its L1 already missed). A dead peer is skipped (``ShardedChunkCache`` benches it
and its chunks fall to their next-ranked peer) and comes back when it answers again.

Peer addresses are names in the hash as well as where to connect: every daemon's
``--peers`` must list the cluster's daemons spelled the same way (its own address may be
left out; it is added).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future
from contextlib import ExitStack
from typing import Any

import grpc

from blobtier.cache_l1_l2.l1 import Claim, SharedL1Cache
from blobtier.cache_l1_l2.owner import ArenaOwner
from blobtier.chunks import Buffer, ChunkKey, ChunkRef, ChunkSource
from blobtier.errors import BlobtierError, TierUnavailable
from blobtier.grants import KeyRing
from blobtier.rpc import cache_wire as wire
from blobtier.rpc.auth import TokenTable
from blobtier.rpc.cache_service import FAILED, FILLED, HIT, MISS, Answer, CacheServicer
from blobtier.rpc.gen import flash_pb2 as pb
from blobtier.rpc.gen import flash_pb2_grpc as pb_grpc
from blobtier.rpc.server import Service
from blobtier.rpc.status import answering
from blobtier.rpc.tls import Tls

log = logging.getLogger(__name__)
SERVICES = ("blobtier.flash.v1.CacheService", "blobtier.flash.v1.CacheAdmin")


class ArenaPeerCache:
    """The daemon's arena as a served cache: peers read views of it (pinned while the
    reply streams, no copy) and offer it chunks they read from below."""

    def __init__(self, owner: ArenaOwner) -> None:
        self.owner = owner
        self.l1 = SharedL1Cache(owner=owner)
        self.counters: Counter[str] = Counter()
        self._lock = threading.Lock()

    def get(self, key: ChunkKey, touch: bool = True) -> Buffer | None:
        view = self.l1.get_many([key], touch).get(key)
        with self._lock:
            if view is None:
                self.counters["misses"] += 1
            else:
                self.counters["hits"] += 1
                self.counters["bytes"] += len(view)
        return view

    def put(self, key: ChunkKey, data: Buffer, touch: bool = True) -> bool:
        self.l1.put(key, data, touch)
        admitted = self.l1.contains(key)
        with self._lock:
            self.counters["puts_admitted" if admitted else "puts_rejected"] += 1
        return admitted

    def contains(self, key: ChunkKey) -> bool:
        return self.l1.contains(key)

    def close(self) -> None:
        self.l1.close()


class HomeFill:
    """Reads the chunks a daemon is home to, when its arena misses them, from ``source``
    (the region's flash nodes over its chunk servers), once per chunk however many peers
    and local processes ask at the same time: a fill in flight in this daemon is waited
    for (``_inflight``), and so is a local process's fill of the same slot (the owner's
    claim). The bytes go into the arena, then to every asker. A ``cache_service.Filler``.

    Records come from the requests; they are read only through ``source``, which reads
    only the region's own chunk servers (a record names them by position in its list).
    A record of a blob registered by reference (an origin) is answered MISS: the daemon
    never reads an address a request names.
    """

    def __init__(self, cache: ArenaPeerCache, source: ChunkSource) -> None:
        self.cache = cache
        self.source = source
        self._lock = threading.Lock()
        self._inflight: dict[ChunkKey, Future] = {}
        self.counters: Counter[str] = Counter()

    def check(self, refs: Sequence[ChunkRef]) -> None:
        """Nothing to refuse up front: origins are answered MISS in ``fill``."""

    def fill(self, refs: Sequence[ChunkRef], touch: bool = True, force: bool = False) -> list[Answer]:
        """An answer per ref: HIT (filled by another asker meanwhile), FILLED, FAILED or MISS."""
        keys = [rec.chunk_key(index) for rec, index in refs]
        answers: list[Answer] = [Answer(MISS, None)] * len(refs)
        own, waits = self._take([i for i, (rec, _) in enumerate(refs) if not rec.origin], keys)
        try:
            if own:
                self._fill_own(own, refs, keys, answers, touch)
        finally:
            self._settle([keys[i] for i in own], answers, own)
        for i, fut in waits:
            try:
                answers[i] = Answer(HIT, fut.result())
            except (BlobtierError, OSError) as exc:
                answers[i] = Answer(FAILED, None, exc)
        return answers

    def _take(self, todo: list[int], keys: list[ChunkKey]) -> tuple[list[int], list[tuple[int, Future]]]:
        own, waits = [], []
        with self._lock:
            for i in todo:
                fut = self._inflight.get(keys[i])
                if fut is None:
                    self._inflight[keys[i]] = Future()
                    own.append(i)
                else:
                    waits.append((i, fut))
            self.counters["coalesced"] += len(waits)
        return own, waits

    def _fill_own(self, own: list[int], refs: Sequence[ChunkRef], keys: list[ChunkKey],
                  answers: list[Answer], touch: bool) -> None:
        """Claim the arena's slots; wait for what a local process fills; read the rest."""
        l1 = self.cache.l1
        items: list[Claim] = [(keys[i], refs[i][0].chunk_range(refs[i][1])[1], refs[i][0].namespace)
                              for i in own]
        claimed, busy = l1.claim(items)
        try:
            waited = l1.get_many([keys[i] for i in own if keys[i] in busy], touch) if busy else {}
            for i in own:
                if keys[i] in waited:
                    answers[i] = Answer(HIT, waited[keys[i]])
            read = [i for i in own if keys[i] not in waited]
            for i, got in zip(read, self._read([refs[i] for i in read])):
                if isinstance(got, BaseException):
                    answers[i] = Answer(FAILED, None, got)
                    continue
                rec, index = refs[i]
                if keys[i] in claimed:
                    l1.fill(keys[i], got, touch=touch, namespace=rec.namespace,
                            checksum=(rec.checksum_algo, rec.checksums[index]))
                    claimed.discard(keys[i])
                answers[i] = Answer(FILLED, got)
        finally:
            if claimed:
                l1.unclaim(list(claimed))

    def _read(self, refs: list[ChunkRef]) -> list[memoryview | BaseException]:
        """Verified bytes of each chunk (the source verifies), or why it could not be read:
        one batch, then each on its own if the batch failed."""
        if not refs:
            return []
        try:
            views = self.source.read_many(refs)
            self.counters["filled"] += len(views)
            return list(views)
        except (BlobtierError, OSError) as exc:
            if len(refs) == 1:
                self.counters["failed"] += 1
                return [exc]
            return [self._read([ref])[0] for ref in refs]

    def _settle(self, keys: list[ChunkKey], answers: list[Answer], positions: list[int]) -> None:
        with self._lock:
            futs = [self._inflight.pop(k, None) for k in keys]
        for i, key, fut in zip(positions, keys, futs):
            answer = answers[i]
            if fut is None:
                continue
            if answer.data is not None:
                fut.set_result(answer.data)
            elif isinstance(answer.error, (BlobtierError, OSError)):
                fut.set_exception(answer.error)
            else:  # the fill raised before this chunk was read
                fut.set_exception(TierUnavailable(f"the fill of chunk {key} was abandoned"))

    def close(self) -> None:
        self.source.close()


class HomeShare:
    """The host L1 of a client in a region whose daemons fill their homes (``HomeFill``).

    Every chunk a client's L1 misses is asked of its home daemon (L2), this host's own
    included: the home reads it through once for the whole region, however many hosts and
    processes ask. A client takes no claim of its own, so no client ever holds a claim
    while it waits on another host (two hosts each holding the claim the other waits for
    would deadlock until a timeout). The arena keeps only the chunks homed at this host,
    put there by its daemon: a chunk homed elsewhere is read from its home each time,
    never copied here, so the arenas of H hosts hold H times what one holds instead of H
    copies of the same chunks. Only when L2 fails does the chain read below itself; it
    then keeps a chunk here if this host is its home.

    It is no ``ClaimingCache`` (so it has no ``__getattr__`` that would make it look like
    one); the rest is the wrapped ``SharedL1Cache``'s (``ReportsCorrupt``,
    ``SampledVerify``, ``announce``, ``stats``).

    Args:
        l1: this process's view of the host's arena.
        peers: the L2 tier (``ShardedChunkCache`` over the daemons, this host's included).
        local: this host's daemon as the peers name it.
    """

    name = "l1"
    trusted = True

    def __init__(self, l1: SharedL1Cache, peers: Any, local: str) -> None:
        self.l1 = l1
        self.peers = peers
        self.local = local
        self.verify_rate = l1.verify_rate

    def is_home(self, key: ChunkKey) -> bool:
        """Whether ``key``'s home, skipping peers that fail, is this host (or no peer is left)."""
        return self.peers.home(key) in (None, self.local)

    def get_many(self, keys: Sequence[ChunkKey], touch: bool = True) -> dict[ChunkKey, memoryview]:
        return self.l1.get_many(keys, touch)

    def fill(self, key: ChunkKey, data: Buffer, *, touch: bool = True, namespace: str = "",
             checksum: tuple[str, int] | None = None) -> bool:
        if not self.is_home(key):
            return False
        return self.l1.fill(key, data, touch=touch, namespace=namespace, checksum=checksum)

    def put(self, key: ChunkKey, data: Buffer, touch: bool = True) -> bool:
        return self.fill(key, data, touch=touch)

    def report_corrupt(self, keys: Sequence[ChunkKey]) -> None:
        self.l1.report_corrupt(keys)

    def contains(self, key: ChunkKey) -> bool:
        return self.l1.contains(key)

    def close(self) -> None:
        self.l1.close()

    def announce(self, keys: Sequence[ChunkKey], job: int = 0, namespace: str = "") -> None:
        self.l1.announce(keys, job, namespace)

    def stats(self) -> dict:
        return self.l1.stats()


class _Admin(pb_grpc.CacheAdminServicer):
    def __init__(self, cache: ArenaPeerCache) -> None:
        self.cache = cache

    def Stats(self, request: pb.StatsRequest, context: grpc.ServicerContext) -> pb.StatsReply:
        with answering(context):
            counters = {k: float(v) for k, v in self.cache.owner.stats().items()}
            counters.update({f"peer_{k}": float(v) for k, v in self.cache.counters.items()})
            return pb.StatsReply(counters=counters)

    def Drop(self, request: pb.DropRequest, context: grpc.ServicerContext) -> pb.DropReply:
        if not request.all:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "a host daemon drops everything or nothing")
        with answering(context):
            dropped = self.cache.owner.stats()["chunks"]
            self.cache.owner.drop()
            return pb.DropReply(dropped=dropped)

    def Resize(self, request: pb.ResizeRequest, context: grpc.ServicerContext) -> pb.StatsReply:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "a host daemon's arena is sized at start")


class PeerServer(Service):
    """The daemon's gRPC face to its peers (CacheService, CacheAdmin, health).

    Raises:
        TierUnavailable: ``addr`` cannot be listened on (nothing is left open or bound).
    """

    def __init__(self, owner: ArenaOwner, addr: str, tls: Tls | None = None, workers: int = 16,
                 auth: TokenTable | None = None, source: ChunkSource | None = None,
                 grants: KeyRing | None = None) -> None:
        with ExitStack() as owned:
            self.cache = ArenaPeerCache(owner)
            owned.callback(self.cache.close)
            # With a source, the chunks homed here are read through (``HomeFill``).
            self.fill = HomeFill(self.cache, source) if source is not None else None
            if self.fill is not None:
                owned.callback(self.fill.close)
            self._start([(wire.add_cache_service, CacheServicer(self.cache, self.fill, grants, auth)),
                         (pb_grpc.add_CacheAdminServicer_to_server, _Admin(self.cache))],
                        addr, tls, workers=workers, auth=auth, services=SERVICES, owned=owned.pop_all())


def cluster(own: str | None, peers: tuple[str, ...] | list[str]) -> list[str]:
    """The cluster's daemons, own address included, in a fixed order."""
    members = set(peers)
    if own:
        members.add(own)
    return sorted(members)
