"""The network cache tiers pass the ``ChunkCache`` and read-through contracts against real
flash nodes on loopback: ``RemoteChunkCache`` (over gRPC, and reading the node's region
files itself when it runs on this host) and ``ShardedChunkCache`` over two nodes."""

from __future__ import annotations

import pytest

from blobtier.chunks import ChunkKey
from blobtier.config import FlashNodeConfig
from blobtier.flash_l3.local_reads import RegionReader
from blobtier.flash_l3.service import FlashNode
from blobtier.rpc.remote_cache import RemoteChunkCache
from blobtier.rpc.sharded_cache import ShardedChunkCache
from tests.contracts.chunk_cache import ChunkCacheContract, ReadThroughContract
from tests.flash_l3.helpers import MemorySource
from tests.flash_l3.test_cache_contract import damage_entry

REGION = 1 << 20


def start_node(root: str, source: MemorySource) -> FlashNode:
    return FlashNode(FlashNodeConfig(root, 8 * REGION, region_bytes=REGION), source)


class _OneNode(ChunkCacheContract, ReadThroughContract):
    """A ``RemoteChunkCache`` of one node; ``local_reads`` as the class says (None: off)."""

    local_reads = None
    failed_get_raises = True  # a node that cannot answer is TierUnavailable

    @pytest.fixture
    def source(self):
        return MemorySource()

    @pytest.fixture
    def cache(self, tmp_path, source):
        self.node = start_node(str(tmp_path / "node"), source)
        c = RemoteChunkCache(self.node.address, timeout_s=10,
                             local_reads=RegionReader if self.local_reads else None)
        yield c
        c.close()
        self.node.stop(0)

    def max_chunk(self, cache: RemoteChunkCache) -> int:
        return self.node.cache.max_chunk

    def damage(self, cache: RemoteChunkCache, key: ChunkKey) -> None:
        damage_entry(self.node.cache, key)

    def fail(self, cache: RemoteChunkCache) -> None:
        self.node.stop(0)

    def counts(self, cache: RemoteChunkCache) -> tuple[int, int]:
        return cache.counters["hits"], cache.counters["misses"]


class TestRemoteChunkCache(_OneNode):
    checks_hits = True  # the node checks every hit it reads


class TestRemoteChunkCacheReadingLocally(_OneNode):
    # Hits read from the node's files are checked here only against their records (a
    # read-through); a plain lookup's are the chain's to check, and to report.
    local_reads = RegionReader
    checks_hits = False


class TestShardedChunkCache(ChunkCacheContract, ReadThroughContract):
    checks_hits = True
    failed_get_raises = False  # a node that fails is skipped: its chunks are misses

    @pytest.fixture
    def source(self):
        return MemorySource()

    @pytest.fixture
    def cache(self, tmp_path, source):
        self.nodes = [start_node(str(tmp_path / f"node{i}"), source) for i in range(2)]
        c = ShardedChunkCache.connect([(n.address, 1.0) for n in self.nodes], timeout_s=10)
        yield c
        c.close()
        for node in self.nodes:
            node.stop(0)

    def _home(self, cache: ShardedChunkCache, key: ChunkKey) -> FlashNode:
        return next(n for n in self.nodes if n.address == cache.home(key))

    def max_chunk(self, cache: ShardedChunkCache) -> int:
        return min(n.cache.max_chunk for n in self.nodes)

    def damage(self, cache: ShardedChunkCache, key: ChunkKey) -> None:
        damage_entry(self._home(cache, key).cache, key)

    def fail(self, cache: ShardedChunkCache) -> None:
        for node in self.nodes:
            node.stop(0)

    def counts(self, cache: ShardedChunkCache) -> tuple[int, int]:
        members = cache.members.values()
        return sum(m.counters["hits"] for m in members), sum(m.counters["misses"] for m in members)
