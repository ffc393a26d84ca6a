"""A flash cache node: a ``FlashCache`` behind gRPC, reading misses through from the block layer.

``FlashNode(FlashNodeConfig(root, capacity_bytes), source)`` starts serving at once
(loopback, a free port unless told) and runs until ``stop()``, which writes the index
snapshot. It serves ``CacheService`` (streamed, ranged, batched Get; Put; Prefetch),
``CacheAdmin`` (Stats, Drop, Resize) and the standard ``grpc.health.v1`` service;
optionally its Prometheus series on ``127.0.0.1:metrics_port``. The node is handed its
``ChunkSource`` (the block layer) by whoever starts it, so this package never imports the
block layer. A bad request gets its status code and the node keeps serving. A request
whose records name a place the node does not read from (another origin, chunk servers it
was not given) is refused with PERMISSION_DENIED (``readthrough.py``). With a grant key
ring, each chunk a call names needs a grant from the metadata service (``rpc/cache_service.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import grpc
from prometheus_client import CollectorRegistry

from blobtier.chunks import ChunkSource
from blobtier.config import RANGES, FlashNodeConfig
from blobtier.errors import InvalidRequest
from blobtier.flash_l3.admission import make_policy
from blobtier.flash_l3.cache import FlashCache
from blobtier.flash_l3.device import DeviceFaults
from blobtier.flash_l3.metrics import FlashMetrics
from blobtier.flash_l3.readthrough import ReadThrough
from blobtier.grants import KeyRing
from blobtier.origins import OriginAllowList
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


class AdminServicer(pb_grpc.CacheAdminServicer):
    def __init__(self, node_id: int, cache: FlashCache, readthrough: ReadThrough) -> None:
        self.node_id = node_id
        self.cache = cache
        self.readthrough = readthrough

    def Stats(self, request: pb.StatsRequest, context: grpc.ServicerContext) -> pb.StatsReply:
        with answering(context):
            counters = self.cache.stats()
            counters.update(self.readthrough.counters)
            return pb.StatsReply(node_id=self.node_id, counters=counters)

    def Drop(self, request: pb.DropRequest, context: grpc.ServicerContext) -> pb.DropReply:
        with answering(context):
            if request.all:
                return pb.DropReply(dropped=self.cache.drop_all())
            return pb.DropReply(dropped=self.cache.drop([wire.key_from_pb(k) for k in request.keys]))

    def Resize(self, request: pb.ResizeRequest, context: grpc.ServicerContext) -> pb.StatsReply:
        with answering(context):
            least, most = 2 * self.cache.region_size, RANGES["services.flash_capacity_bytes"][1]
            if not least <= request.capacity_bytes <= most:  # uint64: a client's -1 is 2**64-1
                raise InvalidRequest(f"capacity_bytes must be between {least} (two regions) and "
                                     f"{most:.0f}, got {request.capacity_bytes}")
            log.info("flash node %d: capacity %d -> %d", self.node_id, self.cache.capacity,
                     request.capacity_bytes)
            self.cache.resize(request.capacity_bytes)
            return self.Stats(pb.StatsRequest(), context)


class TimedCacheServicer(CacheServicer):
    """``CacheServicer`` whose Gets are timed (to the last reply) for the node's histogram."""

    def __init__(self, cache: FlashCache, readthrough: ReadThrough,
                 observe: Callable[[float], None], grants: KeyRing | None = None,
                 auth: TokenTable | None = None) -> None:
        super().__init__(cache, readthrough, grants, auth)
        self._observe = observe

    def Get(self, request: pb.GetRequest, context: grpc.ServicerContext) -> Iterator[bytes]:
        start = time.perf_counter()
        try:
            yield from super().Get(request, context)
        finally:
            self._observe(time.perf_counter() - start)


class FlashNode(Service):
    """A running flash cache node over the directory ``config.root``.

    Args:
        config: what to serve and how (``FlashNodeConfig``: directory, capacity, regions,
            admission, address, workers, metrics port).
        source: where misses are read from (the block layer); the caller closes it.
        tls: serve TLS with these certificates.
        registry: where the series go (default: a registry of this node's own).
        faults: failures to inject into the device (fault tests).
        auth: the tokens calls must present (None: none needed).
        origins: the origin locations it may read blobs registered by reference from
            (None: none; their records are refused).
        grants: the region key ring: chunks are served only under its grants (None: no
            grants needed).

    Raises:
        InvalidRequest: an unknown admission policy.
        TierUnavailable: ``config.addr`` cannot be listened on (nothing is left open or bound).
    """

    def __init__(self, config: FlashNodeConfig, source: ChunkSource, *, tls: Tls | None = None,
                 registry: CollectorRegistry | None = None, faults: DeviceFaults | None = None,
                 auth: TokenTable | None = None, origins: OriginAllowList | None = None,
                 grants: KeyRing | None = None) -> None:
        self.config = config
        self.root = config.root
        self.node_id = config.node_id
        with ExitStack() as owned:
            self.cache = FlashCache(config.root, config.capacity_bytes, region_size=config.region_bytes,
                                    admission=make_policy(config.admission),
                                    reinsert_hits=config.reinsert_hits, faults=faults)
            owned.callback(self.cache.close)  # writes the index snapshot: the next start is warm
            self.metrics = FlashMetrics(self.cache, registry if registry is not None else CollectorRegistry())
            self.readthrough = ReadThrough(self.cache, source, on_fill=self.metrics.observe_fill,
                                           origins=origins)
            self.metrics.track(self.readthrough)
            self._start([(wire.add_cache_service, TimedCacheServicer(self.cache, self.readthrough,
                                                                     self.metrics.observe_get, grants,
                                                                     auth)),
                         (pb_grpc.add_CacheAdminServicer_to_server,
                          AdminServicer(config.node_id, self.cache, self.readthrough))],
                        config.addr, tls, workers=config.workers, auth=auth,
                        metrics_port=config.metrics_port, registry=self.metrics.registry,
                        services=SERVICES, owned=owned.pop_all())

    def __repr__(self) -> str:
        return f"<FlashNode {self.node_id} {self.address} root={self.root!r}>"
