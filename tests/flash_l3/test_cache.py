"""FlashCache: append and lookup, region eviction, the capacity bound, checksums, warm restart."""

from __future__ import annotations

import os
import threading

import pytest

from blobtier.chunks import ChunkCache, ChunkKey
from blobtier.errors import InvalidRequest, TierUnavailable
from blobtier.flash_l3.admission import SecondHit
from blobtier.flash_l3.cache import FlashCache
from blobtier.flash_l3.device import ALIGN
from blobtier.flash_l3.regions import ENTRY_HEADER
from blobtier.metadata.schema import new_blob_id
from tests.flash_l3.helpers import keys_and_data

REGION = 66 * 4096  # a header block and 5 entries of CHUNK
CHUNK = 50_000  # 13 ALIGN blocks with its header


def new_cache(root, regions: int = 4, **kw) -> FlashCache:
    return FlashCache(str(root), regions * REGION, region_size=REGION, **kw)


def region_bytes(root) -> int:
    d = os.path.join(str(root), "regions")
    return sum(os.path.getsize(os.path.join(d, n)) for n in os.listdir(d))


def fill(cache: FlashCache, n: int, size: int = CHUNK) -> list[tuple[ChunkKey, bytes]]:
    """Put ``n`` fresh chunks; returns them in the order written."""
    chunks = list(keys_and_data(n, size).items())
    for key, data in chunks:
        cache.put(key, data)
    return chunks


def test_is_a_chunk_cache_that_is_not_trusted(tmp_path):
    cache = new_cache(tmp_path)
    assert isinstance(cache, ChunkCache)
    assert cache.name == "l3" and cache.trusted is False
    cache.close()


def test_append_and_lookup(tmp_path):
    cache = new_cache(tmp_path)
    chunks = keys_and_data(8, CHUNK)
    for key, data in chunks.items():
        assert cache.put(key, data)
    missing = ChunkKey(new_blob_id(), 1, 0)
    got = cache.get_many([*chunks, missing])
    assert {k: bytes(v) for k, v in got.items()} == chunks
    assert all(v.readonly for v in got.values())
    assert cache.contains(next(iter(chunks))) and not cache.contains(missing)
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["entries"]) == (8, 1, 8)
    assert stats["bytes_written"] == stats["bytes_read"] == 8 * CHUNK
    assert cache.check(deep=True) == []
    cache.close()


def test_a_chunk_put_twice_is_written_once(tmp_path):
    cache = new_cache(tmp_path)
    key, data = next(iter(keys_and_data(1).items()))
    assert cache.put(key, data) and cache.put(key, data)
    assert cache.stats()["inserts"] == 1
    cache.close()


def test_whole_regions_are_evicted_oldest_first(tmp_path):
    cache = new_cache(tmp_path, regions=3)
    chunks = list(keys_and_data(20, CHUNK).items())  # 4 regions' worth into 3
    for key, data in chunks:
        assert cache.put(key, data)
    present = [cache.contains(k) for k, _ in chunks]
    assert present == [False] * 5 + [True] * 15  # exactly the first region went
    stats = cache.stats()
    assert stats["evicted_regions"] == 1 and stats["evicted_entries"] == 5
    assert cache.get(chunks[0][0]) is None
    assert bytes(cache.get(chunks[-1][0])) == chunks[-1][1]
    assert cache.check(deep=True) == []
    cache.close()


def test_the_capacity_bound_is_never_exceeded(tmp_path):
    cache = new_cache(tmp_path, regions=3)
    for i in range(60):
        key = ChunkKey(new_blob_id(), 1, 0)
        cache.put(key, os.urandom(1000 + (i * 7919) % 90_000))
        assert region_bytes(tmp_path) <= cache.capacity
        assert cache.stats()["used_bytes"] <= cache.capacity
    assert cache.check() == []
    cache.close()


def test_reinsertion_keeps_entries_read_often(tmp_path):
    cache = new_cache(tmp_path, regions=3, reinsert_hits=2)
    chunks = fill(cache, 15)
    hot = chunks[1][0]
    cache.get(hot)
    cache.get(hot)
    for key, data in keys_and_data(5, CHUNK).items():  # forces the first region out
        cache.put(key, data)
    assert not cache.contains(chunks[0][0])
    assert bytes(cache.get(hot)) == chunks[1][1]
    assert cache.stats()["reinserted"] == 1
    assert cache.check(deep=True) == []
    cache.close()


def test_a_checksum_failure_becomes_a_miss_and_drops_the_entry(tmp_path):
    cache = new_cache(tmp_path)
    (key, data), (other, other_data) = keys_and_data(2, CHUNK).items()
    cache.put(key, data)
    cache.put(other, other_data)
    entry = cache._index.get(key.digest())
    with open(cache.device.path(entry.slot), "r+b") as f:
        f.seek(entry.offset + ENTRY_HEADER + 1234)
        byte = f.read(1)
        f.seek(entry.offset + ENTRY_HEADER + 1234)
        f.write(bytes([byte[0] ^ 0x01]))
    assert cache.get(key) is None
    assert not cache.contains(key)
    assert cache.stats()["corrupt"] == 1
    assert bytes(cache.get(other)) == other_data
    assert cache.put(key, data)  # refetched bytes can be cached again
    assert bytes(cache.get(key)) == data
    assert cache.check(deep=True) == []
    cache.close()


def test_a_damaged_entry_header_is_a_miss_too(tmp_path):
    cache = new_cache(tmp_path)
    key, data = next(iter(keys_and_data(1, CHUNK).items()))
    cache.put(key, data)
    entry = cache._index.get(key.digest())
    cache.device.write(entry.slot, entry.offset + 8, [b"\x00\x01"])
    assert cache.get(key) is None and cache.stats()["corrupt"] == 1
    cache.close()


def test_oversized_chunks_and_admission_refusals_are_counted(tmp_path):
    cache = new_cache(tmp_path, admission=SecondHit(window=100))
    key, data = next(iter(keys_and_data(1, CHUNK).items()))
    assert not cache.put(ChunkKey(new_blob_id(), 1, 0), bytes(REGION))  # larger than a region
    assert cache.get(key) is None  # first access
    assert not cache.put(key, data)
    assert cache.get(key) is None  # second access
    assert cache.put(key, data)
    assert cache.stats()["admissions_rejected"] == 2
    assert cache.insert(ChunkKey(new_blob_id(), 1, 0), data)  # insert skips admission
    cache.close()


@pytest.mark.parametrize("stop, recovered_from", [("close", "snapshot"), ("crash", "scan")])
def test_warm_restart(tmp_path, stop, recovered_from):
    cache = new_cache(tmp_path)
    chunks = keys_and_data(12, CHUNK)
    for key, data in chunks.items():
        cache.put(key, data)
    cache.get(next(iter(chunks)))
    if stop == "close":
        cache.close()  # writes the index snapshot
    else:
        cache.device.close()  # no close(), no snapshot: what kill -9 leaves
    again = new_cache(tmp_path)
    assert again.recovered_from == recovered_from
    assert {k: bytes(v) for k, v in again.get_many(list(chunks)).items()} == chunks
    assert not os.path.exists(os.path.join(str(tmp_path), "index.snap"))  # taken, never reused
    assert again.check(deep=True) == []
    more = keys_and_data(3, CHUNK)  # appends go on where they stopped
    for key, data in more.items():
        assert again.put(key, data)
    assert len(again.get_many([*chunks, *more])) == 15
    assert again.check(deep=True) == []
    again.close()


def test_a_byte_flipped_in_a_region_file_is_detected_by_the_scan(tmp_path):
    cache = new_cache(tmp_path)
    chunks = fill(cache, 6)
    entry = cache._index.get(chunks[2][0].digest())
    cache.device.close()
    with open(os.path.join(str(tmp_path), "regions", f"{entry.slot:06d}.reg"), "r+b") as f:
        f.seek(entry.offset + ENTRY_HEADER + 10)
        f.write(b"\xee")
    again = new_cache(tmp_path)
    assert again.stats()["discarded_entries"] == 1
    assert not again.contains(chunks[2][0])
    assert len(again.get_many([k for k, _ in chunks])) == 5
    assert again.check(deep=True) == []
    again.close()


def test_a_stale_snapshot_is_refused(tmp_path):
    cache = new_cache(tmp_path, regions=2)
    for key, data in keys_and_data(4, CHUNK).items():
        cache.put(key, data)
    cache.persist()  # a snapshot, then the cache runs on and reclaims a region
    later = keys_and_data(8, CHUNK)
    for key, data in later.items():
        cache.put(key, data)
    cache.device.close()
    again = new_cache(tmp_path, regions=2)
    assert again.recovered_from == "scan"
    assert again.check(deep=True) == []
    assert all(again.contains(k) for k in list(later)[-4:])
    again.close()


def test_drop_drop_all_and_resize(tmp_path):
    cache = new_cache(tmp_path, regions=4)
    chunks = fill(cache, 18)
    assert cache.drop([chunks[0][0], ChunkKey(new_blob_id(), 1, 0)]) == 1
    assert not cache.contains(chunks[0][0])
    cache.resize(2 * REGION)
    assert len(cache.device.slots()) == 2 and region_bytes(tmp_path) <= 2 * REGION
    assert cache.contains(chunks[-1][0]) and not cache.contains(chunks[5][0])
    assert cache.check(deep=True) == []
    with pytest.raises(InvalidRequest):
        cache.resize(REGION)
    cache.resize(6 * REGION)
    for key, data in keys_and_data(25, CHUNK).items():
        cache.put(key, data)
    assert len(cache.device.slots()) == 6
    assert cache.drop_all() == cache.stats()["dropped"] - 1
    assert cache.device.slots() == [] and cache.get(chunks[-1][0]) is None
    assert cache.put(*chunks[0])
    assert cache.check(deep=True) == []
    cache.close()


def test_a_restart_with_a_smaller_capacity_evicts_the_oldest_regions(tmp_path):
    cache = new_cache(tmp_path, regions=4)
    chunks = fill(cache, 20)
    cache.close()
    smaller = new_cache(tmp_path, regions=2)
    assert region_bytes(tmp_path) <= 2 * REGION
    assert smaller.contains(chunks[-1][0]) and not smaller.contains(chunks[0][0])
    assert smaller.check(deep=True) == []
    smaller.close()


def test_concurrent_puts_and_gets_stay_consistent(tmp_path):
    cache = new_cache(tmp_path, regions=3)
    chunks = list(keys_and_data(60, 20_000).items())
    wrong = []

    def worker(part: list) -> None:
        for key, data in part:
            cache.put(key, data)
            for k, d in part:
                got = cache.get(k)
                if got is not None and bytes(got) != d:
                    wrong.append(k)

    threads = [threading.Thread(target=worker, args=(chunks[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []
    assert cache.check(deep=True) == []
    cache.close()


def test_a_closed_cache_refuses_requests(tmp_path):
    cache = new_cache(tmp_path)
    cache.close()
    cache.close()
    with pytest.raises(TierUnavailable):
        cache.get(ChunkKey(new_blob_id(), 1, 0))


def test_too_small_a_capacity_is_refused(tmp_path):
    with pytest.raises(InvalidRequest, match="two regions"):
        FlashCache(str(tmp_path), REGION, region_size=REGION)
    assert ALIGN == 4096
