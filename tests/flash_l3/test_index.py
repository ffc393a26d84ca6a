"""The index: byte accounting, guarded removal, eviction of one region generation."""

from __future__ import annotations

from blobtier.flash_l3.index import MAX_HITS, Entry, Index


def test_insert_replace_remove_keep_the_byte_count():
    idx = Index()
    idx.insert(b"a", Entry(0, 1, 4096, 100, 0))
    idx.insert(b"b", Entry(0, 1, 8192, 50, 0))
    idx.insert(b"a", Entry(1, 2, 4096, 30, 0))  # a newer copy replaces the old one
    assert len(idx) == 2 and idx.bytes == 80
    assert idx.get(b"a").slot == 1
    assert idx.remove(b"b") and not idx.remove(b"b")
    assert idx.bytes == 30 and b"b" not in idx


def test_remove_with_expect_leaves_a_newer_entry_alone():
    idx = Index()
    old = Entry(0, 1, 4096, 10, 0)
    idx.insert(b"k", old)
    idx.insert(b"k", Entry(2, 3, 4096, 10, 0))
    assert not idx.remove(b"k", expect=old)
    assert b"k" in idx


def test_evict_takes_only_entries_of_that_region_generation():
    idx = Index()
    idx.insert(b"a", Entry(0, 1, 4096, 10, 0))
    idx.insert(b"b", Entry(0, 1, 8192, 10, 0))
    idx.insert(b"c", Entry(1, 2, 4096, 10, 0))  # moved to another region since
    idx.insert(b"d", Entry(0, 5, 4096, 10, 0))  # the same slot, a later generation
    gone = idx.evict([b"a", b"b", b"c", b"d", b"missing"], slot=0, seq=1)
    assert sorted(d for d, _ in gone) == [b"a", b"b"]
    assert sorted(d for d, _ in idx.items()) == [b"c", b"d"] and idx.bytes == 20


def test_touch_counts_hits_up_to_a_cap():
    idx = Index()
    idx.insert(b"k", Entry(0, 1, 4096, 10, 0, hits=MAX_HITS - 1))
    idx.touch(b"k")
    idx.touch(b"k")
    assert idx.get(b"k").hits == MAX_HITS
    assert idx.touch(b"nope") is None
    idx.clear()
    assert len(idx) == 0 and idx.bytes == 0
