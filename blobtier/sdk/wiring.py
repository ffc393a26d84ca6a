"""The one wiring point: everything a client reads and writes through, built from its
``RegionConfig`` in the order the README draws the read path::

    metadata  sdk/stores.py    RocksDB under root | metadata.endpoints | metadata.redis
                               (remote ones behind the read-plan cache, sdk/plans.py)
    L1        cache_l1_l2/l1.py     the host daemon's arena (cache.daemon), else one of the
                                    client's own (cache.l1_bytes; 0: none)
    L2        rpc/sharded_cache.py  the arenas of the host daemon's peers, when it has any
    L3        rpc/sharded_cache.py  the flash nodes at flash.endpoints, else
              sdk/local_l3.py       in an embedded region, the flash store on local disk
                                    under root (flash.local_l3)
    source    sdk/routing.py        the block layer (chunk servers at block.endpoints, else
                                    the root's volume directories) and origins by reference

A region that ``blobtier up`` runs fills the endpoints the config leaves empty before any
of this (``config.resolve`` -> ``runstate.attach``).

Lifetimes differ, and ``Wiring`` keeps each part for its own: the stores' lock, the L3
client, a remote metadata store and the client's own L1 arena live as long as the client;
the L1 and L2 views belong to one process (a forked child drops its parent's before any
of its code runs and builds its own, attached to the parent's arena through its socket);
the metadata handle, block layer and chain are built per mode (``build``): a reader's,
then the writer's after the first write.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from blobtier import forks
from blobtier.cache_l1_l2.daemon import daemon_info
from blobtier.cache_l1_l2.l1 import OwnedArena, SharedL1Cache
from blobtier.chunks import ChunkCache
from blobtier.config import RegionConfig
from blobtier.metadata.store import MetadataStore
from blobtier.metrics import TierStats
from blobtier.sdk.chain import TierChain
from blobtier.sdk.local_l3 import LocalL3
from blobtier.sdk.plans import ReadPlanCache
from blobtier.sdk.routing import RoutingSource
from blobtier.sdk.stores import RegionStores
from blobtier.sdk.writer import WritePath


class ReadPath(NamedTuple):
    """What one mode of a client goes through: the metadata store, the block layer (the
    chain's source), the chain L1 -> L2 -> L3 -> source, and the write path of a writer."""

    metadata: MetadataStore
    blocks: RoutingSource
    chain: TierChain
    writer: WritePath | None

    def handles(self) -> list[object]:
        """Its handles in closing order: the chain first (it finishes fills into the tiers)."""
        return [self.chain, self.metadata, self.blocks]


class Wiring:
    """Builds a client's read paths from ``config`` and keeps what outlives one of them."""

    def __init__(self, config: RegionConfig, stats: TierStats) -> None:
        self.config = config
        self.stats = stats
        self.stores = RegionStores(config)
        self.arena: OwnedArena | None = None  # the client's own L1, owned by the process that made it
        self._arena_pid = 0
        self.l1: SharedL1Cache | None = None  # this process's view of the host L1
        self.l2: ChunkCache | None = None
        self._host_pid = -1  # whose l1/l2 these are
        self.l3: ChunkCache | None = None  # one per client: its channels reopen after fork
        fc = config.flash
        # An embedded region without flash nodes keeps the embedded L3 (its store in one
        # process, joined by the host's others). Shared metadata means a region of many
        # hosts, whose flash nodes are its L3.
        self.local_l3 = (LocalL3(config) if fc.local_l3 and not fc.endpoints and not config.metadata.remote
                         else None)
        forks.register(self)

    def build(self, writable: bool) -> ReadPath:
        """The read path (and write path when ``writable``), tiers in order L1 -> L2 -> L3
        -> source.

        Raises: what opening the stores raises (``RegionLocked`` for a second embedded
        writer, ``StorageFull``, ``MetadataCorrupt``, ``TierUnavailable``...).
        """
        l1, l2 = self._host_tiers()
        l3 = self._flash()
        metadata, blocks = self.stores.open(writable, self.stats)
        chain = TierChain([t for t in (l1, l2, l3) if t is not None], blocks, self.stats)
        writer = None
        if writable:  # a write reads the versions it replaces from the store, never the cache
            current = metadata.refresh_many if isinstance(metadata, ReadPlanCache) else None
            writer = WritePath(metadata, blocks, self.config.client,
                               commit_within_s=self._commit_within(), current=current)
        return ReadPath(metadata, blocks, chain, writer)

    def _commit_within(self) -> float | None:
        """How long a write may take to commit: over shared metadata, gc elsewhere spares
        its chunks only while they are younger than its grace (``sdk/gc.py``)."""
        grace = self.config.client.gc_grace_s
        return grace / 2 if self.stores.remote and grace > 0 else None

    def _host_tiers(self) -> tuple[SharedL1Cache | None, ChunkCache | None]:
        """This process's L1 and L2, built on its first build.

        L1 is the host daemon's arena when one runs, the parent's in a forked worker, else
        an arena of the client's own (none when ``cache.l1_bytes`` is 0). L2 is the arenas
        of the daemon's peers, each chunk at its home daemon (``cache_l1_l2/peers.py``).
        """
        if self._host_pid == os.getpid():
            return self.l1, self.l2
        daemon = daemon_info(self.config.cache.daemon)
        verify = self.config.cache.verify_l1
        if daemon is not None:
            self.l1, self.l2 = SharedL1Cache(socket_path=daemon["socket"], verify=verify), self._peers(daemon)
            if daemon.get("fills") and self.l2 is not None:  # hosts of a region: keep this one's share
                from blobtier.cache_l1_l2.peers import HomeShare  # grpc only when used

                self.l1 = HomeShare(self.l1, self.l2, daemon["peer"])
        elif not self.config.cache.l1_bytes:
            self.l1 = self.l2 = None
        elif self.arena is not None:  # inherited: attach to the parent's
            self.l1, self.l2 = SharedL1Cache(socket_path=self.arena.socket_path, verify=verify), None
        else:
            self.arena = OwnedArena(self.config.cache.l1_bytes, self.config.cache.l1_policy)
            self._arena_pid = os.getpid()
            self.l1, self.l2 = SharedL1Cache(owner=self.arena.owner, verify=verify), None
        self._host_pid = os.getpid()
        return self.l1, self.l2

    def _peers(self, daemon: dict) -> ChunkCache | None:
        if not daemon.get("peers"):
            return None
        from blobtier.rpc.sharded_cache import ShardedChunkCache  # grpc only when used
        from blobtier.rpc.tls import Tls

        fc = self.config.flash
        return ShardedChunkCache.connect([(p, 1.0) for p in daemon["peers"]], name="l2",
                                         timeout_s=fc.request_timeout_s, retry_after_s=fc.retry_after_s,
                                         read_through=bool(daemon.get("fills")),
                                         local=None if daemon.get("fills") else daemon["peer"],
                                         token=self.config.auth.token or None,
                                         tls=Tls.from_config(self.config.tls))

    def _flash(self) -> ChunkCache | None:
        """The L3 tier over ``flash.endpoints``, shared by every chain; without them the
        embedded one on local disk (``flash.local_l3``), else None."""
        fc = self.config.flash
        if self.local_l3 is not None:
            return self.local_l3.tier()
        if self.l3 is None and fc.endpoints:
            from blobtier.flash_l3.local_reads import RegionReader
            from blobtier.rpc.sharded_cache import ShardedChunkCache  # grpc only when used
            from blobtier.rpc.tls import Tls

            self.l3 = ShardedChunkCache.connect(fc.nodes(), name="l3", timeout_s=fc.request_timeout_s,
                                                retry_after_s=fc.retry_after_s,
                                                local_reads=RegionReader if fc.local_reads else None,
                                                token=self.config.auth.token or None,
                                                tls=Tls.from_config(self.config.tls))
        return self.l3

    def _after_fork_in_child(self) -> None:
        """Drop the parent's L1 and L2 views (the L1 holds the parent's arena owner); the
        child's first build attaches its own. Kept, not closed: they are the parent's."""
        forks.keep_inherited(self.l1, self.l2)
        self.l1 = self.l2 = None
        self._host_pid = -1

    def handles(self) -> list[object]:
        """What the client closes after its read paths, in order: the host tiers, its own
        arena (in the process that made it) and the L3 client."""
        arena = self.arena if self.arena is not None and self._arena_pid == os.getpid() else None
        return [self.l1, self.l2, arena, self.l3, self.local_l3]
