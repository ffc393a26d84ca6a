"""Real chunk servers on loopback for tests: started on free ports, always stopped."""

from __future__ import annotations

import os
from collections.abc import Sequence

from blobtier.blockstore_sim.chunk_server import ChunkServer
from blobtier.blockstore_sim.remote import RemoteChunkStore
from blobtier.blockstore_sim.replicated import ReadPolicy, ReplicatedBlockStore
from blobtier.checksum import xxh3
from blobtier.chunks import ChunkKey
from blobtier.metadata.schema import BlobRecord, new_blob_id
from blobtier.metrics import TierStats


class Cluster:
    """``n`` chunk servers under ``root``, a ``RemoteChunkStore`` to each, and a block store."""

    def __init__(self, root: str, n: int = 3, *, replicas: int = 3, write_quorum: int = 0,
                 policy: ReadPolicy | None = None) -> None:
        self.servers: list[ChunkServer] = []
        try:
            for i in range(n):
                self.servers.append(ChunkServer(os.path.join(root, f"server{i}"), server_id=i, seed=i))
        except BaseException:
            self.close()
            raise
        self.remotes = {i: RemoteChunkStore(s.address, timeout_s=10) for i, s in enumerate(self.servers)}
        self.stats = TierStats()
        self.block = ReplicatedBlockStore(self.remotes, replicas, stats=self.stats,
                                          write_quorum=write_quorum,
                                          # No hedging unless a test asks: on a loaded CI
                                          # machine automatic hedges make counts vary.
                                          policy=policy or ReadPolicy(max_retries=1, hedge_after_ms=-1))

    @property
    def addresses(self) -> list[str]:
        return [s.address for s in self.servers]

    def write(self, data: bytes, chunk: int = 64 * 1024) -> BlobRecord:
        """Store ``data`` as one blob in chunks of ``chunk`` bytes; return its record."""
        blob_id = new_blob_id()
        parts = [data[i:i + chunk] for i in range(0, len(data), chunk)]
        keys = [ChunkKey(blob_id, 1, i) for i in range(len(parts))]
        placement = self.block.write_chunks([(k, p, xxh3(p)) for k, p in zip(keys, parts)])
        return BlobRecord(blob_id, 1, len(data), chunk, [xxh3(p) for p in parts], placement)

    def read(self, rec: BlobRecord, indices: Sequence[int] | None = None) -> bytes:
        indices = range(rec.n_chunks) if indices is None else indices
        return b"".join(bytes(v) for v in self.block.read_many([(rec, i) for i in indices]))

    def close(self) -> None:
        if hasattr(self, "block"):
            self.block.close()
        for s in self.servers:
            s.stop(0)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
