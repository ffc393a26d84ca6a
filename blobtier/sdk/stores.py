"""A region's stores as one client opens them: the metadata store and the block layer.

Metadata, one of:

- RocksDB under the region root (the default: no server to run);
- the metadata services at ``metadata.endpoints`` (``RemoteMetadataStore``);
- Redis at ``metadata.redis`` (``RedisStore``: one node, or any nodes of a Redis Cluster;
  the ``blobtier[redis]`` extra), for trusted hosts.

A remote store is wrapped in the client's read-plan cache (``sdk/plans.py``) unless
``metadata.record_ttl_s`` is 0. Chunks: the region's volume directories ``blocks/NNN/``,
or the chunk servers at ``block.endpoints`` (server id = position in the list).

Layout under the region root (what an embedded region keeps there)::

    metadata/       RocksDB (the flat metadata)
    blocks/NNN/     one directory per simulated chunk server (volume files)
    writer.lock     held by the one process that may write; names its holder
    tmp/            per-process scratch (RocksDB secondary logs), cleaned when stale

Who writes: over RocksDB any number of processes read at once with no lock, and the first
write in a process takes the writer lock; a second process that tries to write gets
``RegionLocked`` naming the holder. Over a metadata service or Redis every commit is a
compare-and-set at the store, so any number of processes on any number of hosts write at
once and no lock exists. Volume directories take one writing process, so remote metadata
needs chunk servers: ``RegionStores`` refuses it with embedded block storage.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil

from blobtier.blockstore_sim.replicated import ReadPolicy, ReplicatedBlockStore
from blobtier.blockstore_sim.volume import VolumeStore
from blobtier.chunks import ChunkStore
from blobtier.config import RegionConfig
from blobtier.errors import InvalidRequest
from blobtier.fsutil import private_dir
from blobtier.lockfile import LockFile
from blobtier.metadata.rocksdb_store import RocksDBStore
from blobtier.metadata.store import MetadataStore
from blobtier.metrics import TierStats
from blobtier.sdk.plans import ReadPlanCache
from blobtier.sdk.routing import RoutingSource

_SERVER = re.compile(r"\d{3}")
_SCRATCH = re.compile(r"secondary-(\d+)-")


class RegionStores:
    """Opens the metadata store and the block layer of ``config``'s region.

    Raises (at construction): ``InvalidRequest`` for remote metadata (``metadata.endpoints``
    or ``metadata.redis``) without chunk servers (``block.endpoints``).
    """

    def __init__(self, config: RegionConfig) -> None:
        self.config = config
        self.root = config.root
        self.remote = config.metadata.remote  # the config field naming remote metadata, or None
        if self.remote and not config.block.endpoints:
            raise InvalidRequest(
                f"config field {self.remote} needs block.endpoints: with a shared metadata store "
                "any number of processes write the region at once, but the region's volume "
                "directories (blocks/) take one writing process; run chunk servers (blobtier "
                "block serve, or blobtier up) and list them in block.endpoints")
        # Only an embedded RocksDB has one writer at a time.
        self.lock = None if self.remote else LockFile(os.path.join(self.root, "writer.lock"),
                                                      f"region {self.root}")
        self._shared: MetadataStore | None = None  # a remote store: readers and writers share it

    def take_writer_lock(self) -> None:
        """Before this process's first write: the embedded writer lock (``RegionLocked``
        naming the holder when another process writes); nothing over remote metadata."""
        if self.lock is not None:
            self.lock.acquire()

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def open(self, writable: bool, stats: TierStats) -> tuple[MetadataStore, RoutingSource]:
        """Open the metadata store and block layer, as a writer or as a reader.

        Raises what the stores raise (``StorageFull``, ``MetadataCorrupt``,
        ``TierUnavailable``...); a writer whose open fails releases the writer lock before
        raising, so it never keeps another process from writing.
        """
        if self.remote:
            metadata = self.shared_metadata()
            return metadata, self._block_layer(writable, stats)
        if not writable:
            _clean_stale_scratch(os.path.join(self.root, "tmp"))
            return self._open_stores(False, stats)
        private_dir(self.root)
        self.take_writer_lock()
        try:
            return self._open_stores(True, stats)
        except BaseException:
            self.release()
            raise

    def shared_metadata(self) -> MetadataStore:
        """The remote metadata store (one per client), behind the read-plan cache."""
        if self._shared is None:
            mc = self.config.metadata
            store = self._service() if mc.endpoints else self._redis()
            self._shared = ReadPlanCache(store, mc.record_ttl_s) if mc.record_ttl_s > 0 else store
        return self._shared

    def _service(self) -> MetadataStore:
        from blobtier.metadata.remote import RemoteMetadataStore  # grpc only when used
        from blobtier.rpc.tls import Tls

        return RemoteMetadataStore(self.config.metadata.endpoints, token=self.config.auth.token or None,
                                   tls=Tls.from_config(self.config.tls))

    def _redis(self) -> MetadataStore:
        from blobtier.metadata import redis_store

        if redis_store.redis is None:
            raise InvalidRequest("config field metadata.redis needs the Redis client, which is not "
                                 "installed: pip install 'blobtier[redis]' (or use metadata.endpoints, "
                                 "the metadata service)")
        return redis_store.RedisStore(self.config.metadata.redis)

    def _open_stores(self, writable: bool, stats: TierStats) -> tuple[RocksDBStore, RoutingSource]:
        metadata = RocksDBStore(os.path.join(self.root, "metadata"), writable=writable,
                                scratch_dir=os.path.join(self.root, "tmp"),
                                catch_up_s=self.config.client.metadata_staleness_s,
                                block_cache_bytes=self.config.metadata.block_cache_bytes,
                                row_cache_bytes=self.config.metadata.row_cache_bytes,
                                region_root=self.root)
        try:
            return metadata, self._block_layer(writable, stats)
        except BaseException:
            with contextlib.suppress(Exception):  # the error that stopped the open matters
                metadata.close()
            raise

    def _block_layer(self, writable: bool, stats: TierStats) -> RoutingSource:
        bc = self.config.block
        servers, writable_ids = self._remote_servers() if bc.endpoints else self._local_servers(writable)
        policy = ReadPolicy(concurrency=bc.read_concurrency, hedge_after_ms=bc.hedge_after_ms,
                            max_retries=bc.max_retries, timeout_s=bc.request_timeout_s)
        blocks = ReplicatedBlockStore(servers, bc.replicas, stats=stats,
                                      writable_ids=writable_ids if writable else (),
                                      write_quorum=bc.write_quorum, policy=policy)
        return RoutingSource(blocks)

    def _local_servers(self, writable: bool) -> tuple[dict[int, ChunkStore], range]:
        bc = self.config.block
        ids = set(self._server_ids())
        if writable:
            ids |= set(range(bc.servers))
        return ({sid: VolumeStore(self._server_dir(sid), writable=writable,
                                  volume_bytes=bc.volume_bytes) for sid in sorted(ids)},
                range(bc.servers))

    def _remote_servers(self) -> tuple[dict[int, ChunkStore], range]:
        from blobtier.blockstore_sim.remote import RemoteChunkStore  # grpc only when used
        from blobtier.rpc.tls import Tls

        bc, tls = self.config.block, Tls.from_config(self.config.tls)
        return ({sid: RemoteChunkStore(addr, timeout_s=bc.request_timeout_s,
                                       token=self.config.auth.token or None, tls=tls)
                 for sid, addr in enumerate(bc.endpoints)}, range(len(bc.endpoints)))

    def _server_dir(self, sid: int) -> str:
        return os.path.join(self.root, "blocks", f"{sid:03d}")

    def _server_ids(self) -> list[int]:
        try:
            return sorted(int(n) for n in os.listdir(os.path.join(self.root, "blocks"))
                          if _SERVER.fullmatch(n))
        except FileNotFoundError:
            return []


def _clean_stale_scratch(scratch: str) -> None:
    """Remove scratch dirs of processes that are gone (DataLoader workers exit hard)."""
    try:
        names = os.listdir(scratch)
    except FileNotFoundError:
        return
    for name in names:
        m = _SCRATCH.match(name)
        if m and not _alive(int(m.group(1))):
            shutil.rmtree(os.path.join(scratch, name), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
