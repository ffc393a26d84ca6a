"""The embedded region: metadata, block layer and lock in one directory, no server.

Layout under the region root::

    metadata/       RocksDB (the flat metadata)
    blocks/NNN/     one directory per simulated chunk server (volume files)
    writer.lock     held by the one process that may write; names its holder
    tmp/            per-process scratch (RocksDB secondary logs), cleaned when stale

With ``block.endpoints`` set, the chunk servers are those gRPC servers instead of the
``blocks/`` directories (server id = position in the list); metadata stays embedded.
With ``flash.endpoints`` set, reads go through the region's flash nodes (L3) between the
host L1 and the block layer (``flash()``).

Any number of processes read at once with no lock. The first write in a process takes the
writer lock; a second process that tries to write gets ``RegionLocked`` naming the holder.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil

from blobtier.blockstore_sim.replicated import ReadPolicy, ReplicatedBlockStore
from blobtier.blockstore_sim.volume import VolumeStore
from blobtier.chunks import ChunkCache, ChunkStore
from blobtier.config import RegionConfig
from blobtier.fsutil import private_dir
from blobtier.lockfile import LockFile
from blobtier.metadata.rocksdb_store import RocksDBStore
from blobtier.metrics import TierStats
from blobtier.sdk.routing import RoutingSource

_SERVER = re.compile(r"\d{3}")
_SCRATCH = re.compile(r"secondary-(\d+)-")


class EmbeddedRegion:
    def __init__(self, config: RegionConfig) -> None:
        self.config = config
        self.root = config.root
        self.lock = LockFile(os.path.join(self.root, "writer.lock"), f"region {self.root}")
        self._flash: ChunkCache | None = None

    def open(self, writable: bool, stats: TierStats) -> tuple[RocksDBStore, RoutingSource]:
        """Open the metadata store and block layer, as the writer or as a reader.

        Raises what the stores raise (``StorageFull``, ``MetadataCorrupt``...); a writer
        whose open fails releases the writer lock before raising, so it never keeps
        another process from writing.
        """
        if not writable:
            _clean_stale_scratch(os.path.join(self.root, "tmp"))
            return self._open_stores(False, stats)
        private_dir(self.root)
        self.lock.acquire()
        try:
            return self._open_stores(True, stats)
        except BaseException:
            self.lock.release()
            raise

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

    def flash(self) -> ChunkCache | None:
        """The L3 tier over ``flash.endpoints`` (None without them): one per region handle,
        shared by every chain built on it; its channels and threads reopen after fork."""
        fc = self.config.flash
        if self._flash is None and fc.endpoints:
            from blobtier.rpc.sharded_cache import ShardedChunkCache  # grpc only when used

            self._flash = ShardedChunkCache.connect(fc.nodes(), name="l3", timeout_s=fc.request_timeout_s,
                                                    retry_after_s=fc.retry_after_s,
                                                    local_reads=fc.local_reads,
                                                    token=self.config.auth.token or None)
        return self._flash

    def close(self) -> None:
        if self._flash is not None:
            self._flash.close()
            self._flash = None

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

        bc = self.config.block
        return ({sid: RemoteChunkStore(addr, timeout_s=bc.request_timeout_s,
                                       token=self.config.auth.token or None)
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
