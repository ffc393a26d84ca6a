"""``ReplicatedBlockStore`` passes the ``ChunkSource`` contract over three local volume
stores (the embedded region's block layer) and over three real chunk servers."""

from __future__ import annotations

import os

import pytest

from blobtier.blockstore_sim.replicated import ReadPolicy, ReplicatedBlockStore
from blobtier.blockstore_sim.volume import VolumeStore
from blobtier.checksum import xxh3
from blobtier.chunks import ChunkKey
from blobtier.metadata.schema import BlobRecord, new_blob_id
from blobtier.metrics import TierStats
from tests.chunk_servers import Cluster
from tests.contracts.chunk_source import ChunkSourceContract


def write_blob(block: ReplicatedBlockStore, data: bytes, chunk: int) -> BlobRecord:
    blob_id = new_blob_id()
    parts = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    keys = [ChunkKey(blob_id, 1, i) for i in range(len(parts))]
    placement = block.write_chunks([(k, p, xxh3(p)) for k, p in zip(keys, parts)])
    return BlobRecord(blob_id, 1, len(data), chunk, [xxh3(p) for p in parts], placement)


def damage_stored(store: VolumeStore, digest: bytes) -> None:
    """Flip the first byte of a chunk in its volume file."""
    vol, start = store._index[digest][:2]
    with open(os.path.join(store.root, f"{vol:08d}.dat"), "r+b") as f:
        f.seek(start)
        byte = f.read(1)
        f.seek(start)
        f.write(bytes([byte[0] ^ 0xFF]))


class ReplicatedContract(ChunkSourceContract):
    copies = 3
    stores: dict[int, VolumeStore]
    stats: TierStats

    def store(self, source: ReplicatedBlockStore, data: bytes, chunk: int) -> BlobRecord:
        return write_blob(source, data, chunk)

    def damage(self, source: ReplicatedBlockStore, rec: BlobRecord, index: int, copies: int) -> None:
        for sid in rec.placement[index][:copies]:  # the order replicas are read in
            damage_stored(self.stores[sid], rec.chunk_key(index).digest())

    def forget(self, source: ReplicatedBlockStore, rec: BlobRecord) -> None:
        for store in self.stores.values():
            store.delete_many([rec.chunk_key(i).digest() for i in range(rec.n_chunks)])

    def counts(self, source: ReplicatedBlockStore) -> dict[str, int]:
        return self.stats.snapshot()["origin"]


class TestReplicatedOverLocalVolumes(ReplicatedContract):
    @pytest.fixture
    def source(self, tmp_path):
        self.stores = {i: VolumeStore(str(tmp_path / f"v{i}"), writable=True) for i in range(3)}
        self.stats = TierStats()
        block = ReplicatedBlockStore(self.stores, 3, stats=self.stats)
        yield block
        block.close()

    def fail(self, source: ReplicatedBlockStore) -> None:
        for store in self.stores.values():
            store.close()  # what a failing disk leaves: a store that cannot be read


class TestReplicatedOverChunkServers(ReplicatedContract):
    @pytest.fixture
    def source(self, tmp_path):
        self.cluster = Cluster(str(tmp_path / "cluster"), 3,
                               policy=ReadPolicy(max_retries=0, hedge_after_ms=-1))
        self.stores = {i: s.store for i, s in enumerate(self.cluster.servers)}
        self.stats = self.cluster.stats
        yield self.cluster.block
        self.cluster.close()

    def fail(self, source: ReplicatedBlockStore) -> None:
        for server in self.cluster.servers:
            server.stop(0)
