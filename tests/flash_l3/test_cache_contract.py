"""``FlashCache`` (in process) passes the ``ChunkCache`` contract; its backend fails as a
device does: every read and write raises EIO."""

from __future__ import annotations

import pytest

from blobtier.chunks import ChunkKey
from blobtier.flash_l3.cache import FlashCache
from blobtier.flash_l3.device import DeviceFaults
from blobtier.flash_l3.regions import ENTRY_HEADER
from tests.contracts.chunk_cache import ChunkCacheContract

REGION = 1 << 20


def damage_entry(cache: FlashCache, key: ChunkKey) -> None:
    """Flip the first data byte of ``key``'s entry in its region file."""
    entry = cache._index.get(key.digest())
    with open(cache.device.path(entry.slot), "r+b") as f:
        f.seek(entry.offset + ENTRY_HEADER)
        byte = f.read(1)
        f.seek(entry.offset + ENTRY_HEADER)
        f.write(bytes([byte[0] ^ 0xFF]))


class TestFlashCache(ChunkCacheContract):
    checks_hits = True  # every hit is checked against its entry's xxh3
    failed_get_raises = False  # a read that fails drops the entry: a miss

    @pytest.fixture
    def cache(self, tmp_path):
        self.faults = DeviceFaults()
        c = FlashCache(str(tmp_path / "flash"), 8 * REGION, region_size=REGION, faults=self.faults)
        yield c
        c.close()

    def damage(self, cache: FlashCache, key: ChunkKey) -> None:
        damage_entry(cache, key)

    def fail(self, cache: FlashCache) -> None:
        self.faults.arm("read")
        self.faults.arm("write")

    def counts(self, cache: FlashCache) -> tuple[int, int]:
        return cache.counters["hits"], cache.counters["misses"]
