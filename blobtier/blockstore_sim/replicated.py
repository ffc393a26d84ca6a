"""Replication over chunk servers: placement on write, verified failover on read.

Works over any ``ChunkStore`` (local volume directories now, gRPC chunk servers later):
a chunk's replicas go to the servers rendezvous hashing ranks best for its digest, and a
read tries them in the order the record lists, verifying each copy against the record's
checksum. A replica that is missing, down or corrupt is counted and skipped; the caller
gets wrong bytes never, an error only when no good copy is left.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from blobtier import checksum, placement
from blobtier.chunks import Buffer, ChunkKey, ChunkRef, ChunkStore
from blobtier.errors import BlobNotFound, ChecksumError, InvalidRequest, TierUnavailable
from blobtier.metrics import TierStats

log = logging.getLogger(__name__)


class ReplicatedBlockStore:
    """A ``BlockStore`` over ``servers`` (id -> ChunkStore).

    Args:
        servers: every chunk server that may hold replicas, by id.
        replicas: copies written per chunk.
        writable_ids: the servers new chunks may go to (default: all).
        stats: counters; read failures are counted under tier ``origin``.
    """

    def __init__(self, servers: Mapping[int, ChunkStore], replicas: int = 3, *,
                 writable_ids: Sequence[int] | None = None, stats: TierStats | None = None) -> None:
        self.servers = dict(servers)
        self.replicas = replicas
        self.writable_ids = sorted(writable_ids if writable_ids is not None else self.servers)
        self.stats = stats
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self.servers)),
                                        thread_name_prefix="blobtier-replica")

    def place(self, key: ChunkKey) -> tuple[int, ...]:
        return tuple(placement.choose(key.digest(), self.writable_ids, self.replicas))

    def write_chunks(self, chunks: Sequence[tuple[ChunkKey, Buffer, int]]) -> list[tuple[int, ...]]:
        if len(self.writable_ids) < self.replicas:
            raise InvalidRequest(f"{self.replicas} replicas need at least {self.replicas} "
                                 f"writable chunk servers, have {len(self.writable_ids)}")
        placements = []
        per_server: dict[int, list[tuple[bytes, Buffer, int]]] = {}
        for key, data, h in chunks:
            where = self.place(key)
            placements.append(where)
            digest = key.digest()
            for sid in where:
                per_server.setdefault(sid, []).append((digest, data, h))
        futures = [self._pool.submit(self.servers[sid].put_many, items)
                   for sid, items in per_server.items()]
        for f in futures:
            f.result()  # every replica durable, or the first failure propagates
        return placements

    def read_many(self, refs: Sequence[ChunkRef]) -> list[memoryview]:
        return [self._read_one(rec, index) for rec, index in refs]

    def _read_one(self, rec, index: int) -> memoryview:
        key = rec.chunk_key(index)
        digest, expected = key.digest(), rec.checksums[index]
        corrupt = missing = unavailable = 0
        try:
            for sid in rec.placement[index]:
                server = self.servers.get(sid)
                if server is None:
                    missing += 1
                    continue
                try:
                    data = server.get(digest)
                    checksum.verify(rec.checksum_algo, data, expected, f"chunk {key} on server {sid}")
                    return data
                except ChecksumError as exc:
                    corrupt += 1
                    log.warning("%s; trying the next replica", exc)
                except BlobNotFound:
                    missing += 1
                except (TierUnavailable, OSError) as exc:
                    unavailable += 1
                    log.debug("replica %s of chunk %s unavailable: %s", sid, key, exc)
        finally:
            if self.stats is not None and (corrupt or missing or unavailable):
                self.stats.add("origin", errors=missing + unavailable, corrupt=corrupt)
        counts = f"{corrupt} corrupt, {unavailable} unavailable, {missing} missing"
        if corrupt:
            raise ChecksumError(f"chunk {key}: no good replica ({counts})")
        if unavailable:
            raise TierUnavailable(f"chunk {key}: no replica could be read ({counts})")
        raise BlobNotFound(f"chunk {key}: no replica holds it ({counts})")

    def delete_chunks(self, placed: Iterable[tuple[ChunkKey, Sequence[int]]]) -> None:
        per_server: dict[int, list[bytes]] = {}
        for key, where in placed:
            for sid in where:
                if sid in self.servers:
                    per_server.setdefault(sid, []).append(key.digest())
        for f in [self._pool.submit(self.servers[sid].delete_many, d) for sid, d in per_server.items()]:
            f.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for server in self.servers.values():
            server.close()
