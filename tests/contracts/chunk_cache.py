"""The contract every ``ChunkCache`` tier passes (``blobtier.chunks``).

A tier's test module subclasses ``ChunkCacheContract`` and provides a ``cache`` fixture, a
fresh and empty tier, and the hooks the suite cannot write for every tier:

- ``max_chunk(cache)``: the largest chunk the tier keeps;
- ``damage(cache, key)``: flip a byte of a stored chunk where the tier keeps it;
- ``fail(cache)``: make the tier's backend fail (its owner or node gone, its device failing);
- ``counts(cache)``: (hits, misses) as the tier counts them (default: it keeps none);

and two class attributes: ``checks_hits`` (the tier checks the bytes of its own hits, so a
damaged chunk is a miss; otherwise the chain checks them and the tier forgets what it is
told is corrupt) and ``failed_get_raises`` (a failed backend makes ``get_many`` raise
``TierUnavailable``; otherwise its chunks are misses).

A tier that reads its misses through (``ReadThroughCache``) also passes
``ReadThroughContract``; its ``source`` fixture is the ``MemorySource`` it reads from.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from blobtier.chunks import ChunkCache, ChunkKey, ReadThroughCache, ReportsCorrupt, SampledVerify
from blobtier.errors import InvalidRequest, TierUnavailable
from blobtier.metadata.schema import new_blob_id

# Sizes as offsets from 0 or from the tier's largest chunk: the edges of pages, slabs,
# alignment and pieces on the wire.
SIZES = [1, 63, 4095, 4096, 4097, 65537, -1, 0]
"""A positive size is taken as is; -1 is the largest chunk less one byte, 0 the largest."""


def new_key() -> ChunkKey:
    return ChunkKey(new_blob_id(), 1, 0)


class ChunkCacheContract:
    checks_hits = False
    failed_get_raises = True

    def max_chunk(self, cache: ChunkCache) -> int:
        return cache.max_chunk

    def damage(self, cache: ChunkCache, key: ChunkKey) -> None:
        raise NotImplementedError

    def fail(self, cache: ChunkCache) -> None:
        raise NotImplementedError

    def counts(self, cache: ChunkCache) -> tuple[int, int] | None:
        return None

    def _size(self, cache: ChunkCache, size: int) -> int:
        return size if size > 0 else self.max_chunk(cache) + size

    # -- the surface ---------------------------------------------------------------------
    def test_is_a_chunk_cache(self, cache):
        assert isinstance(cache, ChunkCache)
        assert isinstance(cache.name, str) and cache.name and isinstance(cache.trusted, bool)

    def test_a_miss_is_an_absent_key_never_an_error(self, cache):
        key = new_key()
        assert cache.get_many([key]) == {}
        assert cache.get_many([key], touch=False) == {}
        assert cache.get_many([]) == {}
        assert cache.contains(key) is False

    # -- hits --------------------------------------------------------------------------------
    @pytest.mark.parametrize("size", SIZES)
    def test_a_chunk_put_comes_back_whole_and_read_only(self, cache, size):
        key, data = new_key(), os.urandom(self._size(cache, size))
        assert cache.put(key, data) is True
        got = cache.get_many([key])
        assert list(got) == [key] and bytes(got[key]) == data
        assert isinstance(got[key], memoryview) and got[key].readonly
        assert cache.contains(key) is True
        assert bytes(cache.get_many([key], touch=False)[key]) == data  # a look ahead hits too

    def test_an_empty_chunk_is_kept_or_declined_never_garbled(self, cache):
        key = new_key()
        kept = cache.put(key, b"")
        assert isinstance(kept, bool)
        assert cache.get_many([key]) == ({key: b""} if kept else {})
        assert cache.contains(key) is kept

    def test_a_chunk_over_the_largest_is_declined(self, cache):
        key = new_key()
        assert cache.put(key, os.urandom(self.max_chunk(cache) + 1)) is False
        assert cache.get_many([key]) == {}
        assert cache.contains(key) is False

    def test_a_batch_answers_its_hits_and_leaves_out_its_misses(self, cache):
        chunks = {new_key(): os.urandom(1000 + i) for i in range(5)}
        for key, data in chunks.items():
            assert cache.put(key, data)
        absent = [new_key() for _ in range(3)]
        got = cache.get_many([absent[0], *chunks, *absent[1:]])
        assert set(got) == set(chunks)
        assert all(bytes(got[k]) == d for k, d in chunks.items())

    def test_a_chunk_put_again_is_the_same_chunk(self, cache):
        key, data = new_key(), os.urandom(3000)
        assert cache.put(key, data) and cache.put(key, data)
        assert bytes(cache.get_many([key])[key]) == data

    def test_threads_share_it(self, cache):
        def work(i: int) -> bool:
            mine = {new_key(): os.urandom(500 + i * 37 + j) for j in range(10)}
            for key, data in mine.items():
                cache.put(key, data)
            got = cache.get_many(list(mine))
            return all(bytes(got[k]) == d for k, d in mine.items() if k in got) and len(got) == 10

        with ThreadPoolExecutor(4) as pool:
            assert all(pool.map(work, range(8)))

    # -- corruption ----------------------------------------------------------------------------
    def test_a_damaged_chunk_is_never_served_as_good(self, cache):
        key, other, data = new_key(), new_key(), os.urandom(5000)
        cache.put(key, data)
        cache.put(other, data)
        self.damage(cache, key)
        got = cache.get_many([key, other])
        assert bytes(got[other]) == data  # only the damaged chunk is touched
        if self.checks_hits:
            assert key not in got  # checked by the tier: a miss
        else:
            # The tier serves what it holds, and the chain checks it (every hit of an
            # untrusted tier, a share of a trusted one's) and reports it, below.
            assert not cache.trusted or isinstance(cache, SampledVerify)
            assert isinstance(cache, ReportsCorrupt)
            cache.report_corrupt([key])
            assert key not in cache.get_many([key])
        assert cache.put(key, data)  # a good copy can come back
        assert bytes(cache.get_many([key])[key]) == data

    def test_a_chunk_reported_corrupt_is_forgotten(self, cache):
        if not isinstance(cache, ReportsCorrupt):
            pytest.skip("the tier takes no reports: it checks its own hits")
        key, other, data = new_key(), new_key(), os.urandom(2000)
        cache.put(key, data)
        cache.put(other, data)
        cache.report_corrupt([key])
        assert set(cache.get_many([key, other])) == {other}
        cache.report_corrupt([new_key()])  # one it never held: nothing to do

    # -- a failing backend -----------------------------------------------------------------------
    def test_a_failing_backend_is_a_miss_or_tier_unavailable(self, cache):
        key, data = new_key(), os.urandom(5000)
        cache.put(key, data)
        self.fail(cache)
        if self.failed_get_raises:
            with pytest.raises(TierUnavailable):
                cache.get_many([key])
        else:
            assert cache.get_many([key]) == {}
        try:
            assert cache.put(new_key(), data) is False
        except TierUnavailable:
            pass  # the documented error: the chain counts it and moves on

    # -- counters ----------------------------------------------------------------------------------
    def test_counters_count_each_hit_and_miss_once(self, cache):
        before = self.counts(cache)
        if before is None:
            pytest.skip("the tier keeps no counters")
        keys = [new_key() for _ in range(5)]
        for key in keys[:2]:
            cache.put(key, os.urandom(100))
        assert len(cache.get_many(keys)) == 2
        hits, misses = self.counts(cache)
        assert (hits - before[0], misses - before[1]) == (2, 3)


class ReadThroughContract:
    """For ``ReadThroughCache`` tiers: a ``source`` fixture (``tests/flash_l3/helpers.py``
    ``MemorySource``) is what the tier reads its misses from."""

    def test_is_a_read_through_cache(self, cache):
        assert isinstance(cache, ReadThroughCache)

    def test_misses_are_read_through_once_and_said_to_be(self, cache, source):
        rec, data = source.add(300_000)
        keys = [rec.chunk_key(i) for i in range(rec.n_chunks)]
        refs = [(rec, i) for i in range(rec.n_chunks)]
        first = cache.read_through(keys, refs)
        assert b"".join(bytes(first.found[k]) for k in keys) == data
        assert first.filled == set(keys) and first.corrupt == 0
        second = cache.read_through(keys, refs, touch=False)
        assert b"".join(bytes(second.found[k]) for k in keys) == data
        assert second.filled == set()
        assert source.total_reads() == rec.n_chunks
        assert set(cache.get_many(keys)) == set(keys)

    def test_a_chunk_that_cannot_be_read_through_is_a_miss_alone(self, cache, source):
        rec, data = source.add(300_000)
        keys = [rec.chunk_key(i) for i in range(rec.n_chunks)]
        source.broken.add(keys[1])
        got = cache.read_through(keys, [(rec, i) for i in range(rec.n_chunks)])
        assert set(got.found) == set(keys) - {keys[1]} and keys[1] not in got.filled

    def test_refs_must_name_the_keys(self, cache, source):
        rec, _ = source.add(100_000)
        keys = [rec.chunk_key(i) for i in range(rec.n_chunks)]
        with pytest.raises(InvalidRequest):
            cache.read_through(keys, [(rec, 0)])
