"""Per-namespace shares of the flash cache: a namespace within its share keeps its entries
(copied forward whole and readable) while another namespace fills the cache many times
over; above its share it gives back only the excess; bad shares are refused by name."""

from __future__ import annotations

import os

import pytest

from blobtier.errors import InvalidRequest
from blobtier.flash_l3.cache import FlashCache
from blobtier.records import ChunkKey

REGION = 64 << 10
CHUNK = 6 << 10  # with its header an entry spans 8 KiB: 8 per region


def key(i: int) -> ChunkKey:
    return ChunkKey(i.to_bytes(16, "little"), 1, 0)


def data(i: int) -> bytes:
    return bytes([i % 251]) * CHUNK


def fill(cache: FlashCache, ns: str, first: int, n: int) -> None:
    for i in range(first, first + n):
        cache.put(key(i), data(i), namespace=ns)


@pytest.fixture
def cache(tmp_path):
    c = FlashCache(str(tmp_path / "flash"), 10 * REGION, region_size=REGION,
                   namespace_shares={"train": 0.4})
    yield c
    c.close()


def test_a_namespace_within_its_share_survives_a_filling_neighbour(cache):
    fill(cache, "train", 0, 24)  # 3 regions of 10: within its 40%
    fill(cache, "logs", 1000, 800)  # ten times the cache
    for i in range(24):
        view = cache.get(key(i))
        assert view is not None and bytes(view) == data(i)
    assert cache.namespace_bytes()["train"] == 24 * CHUNK
    assert cache.check(deep=True) == []


def test_above_its_share_only_the_excess_goes(cache):
    fill(cache, "train", 0, 60)  # 7.5 regions: above its 4
    fill(cache, "logs", 1000, 800)
    held, share = cache.namespace_bytes()["train"], int(0.4 * cache.capacity)
    assert share - REGION < held < share + CHUNK  # at its share, to the entry
    assert cache.check(deep=True) == []


def test_its_own_fills_evict_its_own_entries(cache):
    fill(cache, "train", 0, 400)
    assert cache.namespace_bytes()["train"] <= cache.capacity


def test_without_a_share_fifo_evicts_it(tmp_path):
    c = FlashCache(str(tmp_path / "flash"), 10 * REGION, region_size=REGION)
    try:
        fill(c, "train", 0, 24)
        fill(c, "logs", 1000, 800)
        assert all(c.get(key(i)) is None for i in range(24))
    finally:
        c.close()


def test_shares_change_while_serving(cache):
    fill(cache, "train", 0, 24)
    cache.set_namespace_shares({"logs": 0.5})  # train loses its share
    fill(cache, "eval", 2000, 800)
    assert all(cache.get(key(i)) is None for i in range(24))


@pytest.mark.parametrize("shares,named", [({"a": 1.5}, "a=1.5"), ({"a": 0}, "a=0"),
                                          ({"a/b": 0.1}, "a/b"), ({"a": 0.6, "b": 0.5}, "sum")])
def test_bad_shares_are_refused_by_name(cache, shares, named):
    with pytest.raises(InvalidRequest, match=named):
        cache.set_namespace_shares(shares)
    assert cache.namespace_shares == {"train": 0.4}


def test_shares_survive_in_the_region_files_after_a_reopen(tmp_path):
    """Entries are copied whole: after a reopen every kept one reads back (namespaces
    themselves are not persisted: recovered entries belong to none)."""
    root = str(tmp_path / "flash")
    c = FlashCache(root, 10 * REGION, region_size=REGION, namespace_shares={"train": 0.4})
    fill(c, "train", 0, 24)
    fill(c, "logs", 1000, 200)
    c.close()
    c = FlashCache(root, 10 * REGION, region_size=REGION)
    try:
        assert all(bytes(c.get(key(i))) == data(i) for i in range(24))
        assert os.listdir(root)
    finally:
        c.close()
