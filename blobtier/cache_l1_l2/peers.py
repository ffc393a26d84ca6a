"""L2: the host daemons of a cluster pool their arenas for each other.

Every daemon started with ``--listen`` serves its arena to its peers over the same gRPC
``CacheService`` the flash nodes answer (``rpc/cache_service.py``), so a client reads an
L2 peer with the L3 client code. Each chunk has a home daemon: the best-ranked of the
cluster's daemons by rendezvous hashing on the chunk's digest, the same in every client
because every daemon is told the same peer list. A client whose host L1 missed asks the
chunk's home before L3; a chunk read from below is offered to its home. So a cluster reads
each chunk from L3 about once, however many hosts train on it.

The daemon never reads through: a miss on a peer is a MISS, and the asking client reads
L3 itself. Keys homed at the asking host's own daemon are not sent over gRPC at all (its
L1 already missed). A dead peer is skipped (``ShardedChunkCache`` benches it and its
chunks fall to their next-ranked peer) and comes back when it answers again.

Peer addresses are names in the hash as well as where to connect: every daemon's
``--peers`` must list the cluster's daemons spelled the same way (its own address may be
left out; it is added).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from contextlib import ExitStack

import grpc

from blobtier.cache_l1_l2.l1 import SharedL1Cache
from blobtier.cache_l1_l2.owner import ArenaOwner
from blobtier.chunks import Buffer, ChunkKey
from blobtier.rpc import cache_wire as wire
from blobtier.rpc.auth import TokenTable
from blobtier.rpc.cache_service import CacheServicer
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
                 auth: TokenTable | None = None) -> None:
        with ExitStack() as owned:
            self.cache = ArenaPeerCache(owner)
            owned.callback(self.cache.close)
            self._start([(wire.add_cache_service, CacheServicer(self.cache)),
                         (pb_grpc.add_CacheAdminServicer_to_server, _Admin(self.cache))],
                        addr, tls, workers=workers, auth=auth, services=SERVICES, owned=owned.pop_all())


def cluster(own: str | None, peers: tuple[str, ...] | list[str]) -> list[str]:
    """The cluster's daemons, own address included, in a fixed order."""
    members = set(peers)
    if own:
        members.add(own)
    return sorted(members)
