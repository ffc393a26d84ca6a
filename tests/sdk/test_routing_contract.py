"""``RoutingSource`` passes the ``ChunkSource`` contract for blobs in the block layer and
for blobs registered by reference (read from an HTTP origin), and keeps the order of a
batch that mixes them."""

from __future__ import annotations

import os
import random

import pytest

from blobtier.blockstore_sim.origin import FsspecOrigin
from blobtier.blockstore_sim.replicated import ReplicatedBlockStore
from blobtier.blockstore_sim.volume import VolumeStore
from blobtier.metrics import TierStats
from blobtier.sdk.routing import RoutingSource
from tests.blockstore_sim.test_origin_contract import HttpOriginContract
from tests.blockstore_sim.test_replicated_contract import ReplicatedContract, write_blob
from tests.contracts.chunk_source import CHUNK, chunks_of


def routing(tmp_path, origin: FsspecOrigin | None = None) -> tuple[RoutingSource, dict, TierStats]:
    stores = {i: VolumeStore(str(tmp_path / f"v{i}"), writable=True) for i in range(3)}
    stats = TierStats()
    return RoutingSource(ReplicatedBlockStore(stores, 3, stats=stats), origin), stores, stats


class TestRoutingToTheBlockLayer(ReplicatedContract):
    @pytest.fixture
    def source(self, tmp_path):
        src, self.stores, self.stats = routing(tmp_path)
        yield src
        src.close()

    def store(self, source: RoutingSource, data: bytes, chunk: int):
        return write_blob(source.blocks, data, chunk)

    def fail(self, source: RoutingSource) -> None:
        for store in self.stores.values():
            store.close()


class TestRoutingToAnOrigin(HttpOriginContract):
    @pytest.fixture
    def source(self, tmp_path):
        self.serve(tmp_path)
        src, self.stores, _ = routing(tmp_path, FsspecOrigin())
        yield src
        src.close()
        self.http.close()

    def store(self, source: RoutingSource, data: bytes, chunk: int):
        return super().store(source.origin, data, chunk)

    def test_a_batch_of_origin_and_block_chunks_keeps_its_order(self, source):
        a, b = os.urandom(3 * CHUNK), os.urandom(2 * CHUNK + 5)
        ra, rb = self.store(source, a, CHUNK), write_blob(source.blocks, b, CHUNK)
        refs = [(ra, i) for i in range(ra.n_chunks)] + [(rb, i) for i in range(rb.n_chunks)]
        random.Random(3).shuffle(refs)
        want = {(id(ra), i): c for i, c in enumerate(chunks_of(ra, a))}
        want |= {(id(rb), i): c for i, c in enumerate(chunks_of(rb, b))}
        assert [bytes(v) for v in source.read_many(refs)] == [want[(id(r), i)] for r, i in refs]
