from __future__ import annotations

import random

import pytest

from blobtier.cache_l1_l2.local_l1 import LocalL1Cache
from blobtier.chunks import ChunkCache, ChunkKey

POLICIES = ["lru", "sieve"]


def key(i: int) -> ChunkKey:
    return ChunkKey(b"\x05" * 16, 1, i)


@pytest.fixture(params=POLICIES)
def policy(request) -> str:
    return request.param


def test_is_a_chunk_cache():
    assert isinstance(LocalL1Cache(100), ChunkCache)


def test_never_exceeds_capacity(policy):
    rng = random.Random(7)
    cache = LocalL1Cache(10_000, policy)
    sizes = {}
    for _ in range(2000):
        i = rng.randrange(300)
        size = sizes.setdefault(i, rng.randrange(0, 3000))
        if rng.random() < 0.3:
            cache.get_many([key(i)])
        else:
            cache.put(key(i), bytes([i % 256]) * size)
        assert cache.used <= cache.capacity
        held = cache.get_many([key(j) for j in sizes])
        assert cache.used == sum(len(v) for v in held.values())
        assert all(bytes(v) == bytes([k.index % 256]) * sizes[k.index] for k, v in held.items())
    assert cache.evictions > 0


def test_chunk_larger_than_capacity_not_cached(policy):
    cache = LocalL1Cache(100, policy)
    cache.put(key(1), b"x" * 60)
    cache.put(key(2), b"y" * 101)
    assert not cache.contains(key(2))
    assert cache.contains(key(1))
    assert cache.used == 60 and cache.evictions == 0
    cache.put(key(3), b"z" * 100)  # exactly the capacity: evicts to fit
    assert cache.contains(key(3)) and not cache.contains(key(1))


def test_get_many_only_present(policy):
    cache = LocalL1Cache(1000, policy)
    cache.put(key(1), b"a" * 10)
    cache.put(key(3), b"c" * 10)
    got = cache.get_many([key(0), key(1), key(2), key(3)])
    assert set(got) == {key(1), key(3)}
    assert bytes(got[key(3)]) == b"c" * 10
    assert all(v.readonly for v in got.values())
    assert cache.get_many([]) == {}


def test_evictions_counted(policy):
    cache = LocalL1Cache(100, policy)
    for i in range(10):
        cache.put(key(i), b"x" * 25)
    assert len(cache) == 4
    assert cache.evictions == 6
    assert cache.used == 100


def test_put_existing_key_is_ignored(policy):
    cache = LocalL1Cache(100, policy)
    cache.put(key(1), b"a" * 10)
    cache.put(key(1), b"b" * 50)
    assert bytes(cache.get_many([key(1)])[key(1)]) == b"a" * 10
    assert cache.used == 10


def test_view_survives_eviction(policy):
    cache = LocalL1Cache(100, policy)
    cache.put(key(0), bytes(range(80)))
    view = cache.get_many([key(0)])[key(0)]
    for i in range(1, 5):
        cache.put(key(i), b"\xff" * 80)
    assert not cache.contains(key(0))
    assert bytes(view) == bytes(range(80))
    assert view.readonly


def test_lru_keeps_recently_hit():
    cache = LocalL1Cache(30, "lru")
    for i in range(3):
        cache.put(key(i), b"x" * 10)
    cache.get_many([key(0)])
    cache.put(key(3), b"x" * 10)
    assert [cache.contains(key(i)) for i in range(4)] == [True, False, True, True]


def test_sieve_keeps_hit_key():
    cache = LocalL1Cache(30, "sieve")
    for i in range(3):
        cache.put(key(i), b"x" * 10)
    cache.get_many([key(0)])
    cache.put(key(3), b"x" * 10)
    assert [cache.contains(key(i)) for i in range(4)] == [True, False, True, True]


def test_close_empties(policy):
    cache = LocalL1Cache(100, policy)
    cache.put(key(1), b"x")
    cache.close()
    assert len(cache) == 0 and cache.used == 0
