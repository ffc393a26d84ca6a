"""The host L1 passes the ``ChunkCache`` contract: in the owner's process, and over the
owner's socket (``OwnerServer``), as a DataLoader worker reaches it."""

from __future__ import annotations

import pytest

from blobtier.cache_l1_l2.l1 import OwnedArena, SharedL1Cache
from blobtier.cache_l1_l2.owner import ArenaOwner
from blobtier.chunks import ChunkKey
from tests.contracts.chunk_cache import ChunkCacheContract

CAPACITY = 8 << 20


class L1Contract(ChunkCacheContract):
    checks_hits = False  # trusted memory: the chain samples its hits (verify_l1)
    failed_get_raises = True
    owner: ArenaOwner

    def max_chunk(self, cache: SharedL1Cache) -> int:
        return self.owner.allocator.max_chunk

    def damage(self, cache: SharedL1Cache, key: ChunkKey) -> None:
        offset, _ = self.owner._index[key.digest()]
        self.owner.segment.view[offset] ^= 0xFF

    def counts(self, cache: SharedL1Cache) -> tuple[int, int]:
        stats = self.owner.stats()
        return stats.get("hits", 0), stats.get("misses", 0)


class TestL1InTheOwnersProcess(L1Contract):
    @pytest.fixture
    def cache(self):
        self.owner = ArenaOwner(CAPACITY, "sieve")
        c = SharedL1Cache(owner=self.owner)
        yield c
        c.close()
        self.owner.close()

    def fail(self, cache: SharedL1Cache) -> None:
        self.owner.close()


class TestL1OverTheSocket(L1Contract):
    @pytest.fixture
    def cache(self):
        self.arena = OwnedArena(CAPACITY, "sieve")
        self.owner = self.arena.owner
        c = SharedL1Cache(socket_path=self.arena.socket_path)
        yield c
        c.close()
        self.arena.close()

    def fail(self, cache: SharedL1Cache) -> None:
        self.arena.close()
