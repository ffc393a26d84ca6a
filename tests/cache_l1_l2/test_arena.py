"""The arena's memory: slab size classes, the slab allocator, and the memfd segment."""

from __future__ import annotations

import os
import random

import pytest

from blobtier.cache_l1_l2.arena import MIN_SLOT, PAGE_BYTES, Segment, SlabAllocator, size_classes
from blobtier.errors import InvalidRequest

PAGES = [PAGE_BYTES, 1 << 20, 256 << 10, 64 << 10]


# -- size classes ------------------------------------------------------------------------
@pytest.mark.parametrize("page", PAGES)
def test_size_classes_span_min_slot_to_the_page_in_order(page):
    classes = size_classes(page)
    assert classes[0] == MIN_SLOT
    assert classes[-1] == page
    assert all(a < b for a, b in zip(classes, classes[1:]))
    assert all(c % 64 == 0 for c in classes)


@pytest.mark.parametrize("page", PAGES)
def test_size_classes_grow_slowly_below_a_quarter_page(page):
    classes = size_classes(page)
    small = [c for c in classes if c <= page // 4]
    assert all(b <= a * 1.25 + 64 for a, b in zip(small, small[1:]))


@pytest.mark.parametrize("page", PAGES)
def test_size_classes_leave_no_page_tail(page):
    """Every class splits a page into whole slots, wasting under 64 bytes per slot; so the
    last classes are page/3, page/2 and the page, whatever the growth between them."""
    for slot in size_classes(page):
        assert page % slot < page // slot * 64
    assert size_classes(page)[-3:] == [page // 3 // 64 * 64, page // 2, page]


# -- the allocator -------------------------------------------------------------------------
def test_klass_rejects_empty_and_oversized_requests():
    alloc = SlabAllocator(4 << 20)
    for size in (0, -1, alloc.page + 1):
        with pytest.raises(InvalidRequest):
            alloc.klass(size)
    assert alloc.classes[alloc.klass(1)] == MIN_SLOT
    assert alloc.classes[alloc.klass(alloc.page)] == alloc.page


def test_klass_picks_the_smallest_class_that_fits():
    alloc = SlabAllocator(4 << 20)
    for size in range(1, alloc.page + 1, 997):
        k = alloc.klass(size)
        assert alloc.classes[k] >= size
        assert k == 0 or alloc.classes[k - 1] < size


def test_alloc_returns_distinct_slots_inside_capacity():
    rng = random.Random(1)
    alloc = SlabAllocator(4 << 20)  # 16 pages of 256 KiB
    sizes = [rng.choice([5000, 30_000, 77_777]) + rng.randrange(64) for _ in range(300)]
    slots = []
    for size in sizes:
        offset = alloc.alloc(size)
        if offset is None:
            continue  # this class has no page left
        assert alloc.slot_size(offset) >= size
        slots.append((offset, alloc.slot_size(offset)))
    assert len(slots) > 80
    slots.sort()
    for (a, size_a), (b, _) in zip(slots, slots[1:]):
        assert a + size_a <= b, "two slots overlap"
    assert slots[-1][0] + slots[-1][1] <= alloc.capacity
    assert alloc.used_bytes == sum(s for _, s in slots)


def test_used_bytes_never_exceed_capacity_under_a_random_workload():
    rng = random.Random(7)
    capacity = 3 * (1 << 20) + 12345  # a short last page
    alloc = SlabAllocator(capacity)
    live: dict[int, int] = {}
    refused = 0
    for _ in range(5000):
        if live and rng.random() < 0.45:
            offset = rng.choice(list(live))
            alloc.free(offset)
            del live[offset]
        else:
            size = rng.choice([rng.randrange(1, 8192), rng.randrange(1, alloc.page)])
            offset = alloc.alloc(size)
            if offset is None:
                refused += 1
                continue
            assert offset not in live
            assert offset + alloc.slot_size(offset) <= capacity
            live[offset] = alloc.slot_size(offset)
        assert alloc.used_bytes == sum(live.values()) <= capacity
    assert refused > 0  # the workload did fill the arena


def test_alloc_returns_none_when_full():
    alloc = SlabAllocator(1 << 20)  # 16 pages of 64 KiB
    assert alloc.page == 64 << 10
    slots = [alloc.alloc(alloc.page) for _ in range(16)]
    assert None not in slots
    assert alloc.alloc(alloc.page) is None
    assert alloc.alloc(1) is None
    assert not alloc.room_for(1)
    alloc.free(slots[3])
    assert alloc.room_for(1)
    assert alloc.alloc(alloc.page) == slots[3]


def test_a_freed_page_goes_back_to_the_pool_for_any_class():
    alloc = SlabAllocator(1 << 20)
    small = []
    while (offset := alloc.alloc(MIN_SLOT)) is not None:
        small.append(offset)
    assert len(small) == (1 << 20) // MIN_SLOT
    assert alloc.alloc(alloc.page) is None
    page0 = [o for o in small if o < alloc.page]
    for offset in page0:
        alloc.free(offset)
    assert alloc.room_for(alloc.page)
    assert alloc.alloc(alloc.page) == 0
    assert alloc.used_bytes == alloc.capacity


def test_a_partly_used_page_stays_with_its_class():
    alloc = SlabAllocator(1 << 20)
    a, b = alloc.alloc(MIN_SLOT), alloc.alloc(MIN_SLOT)
    alloc.free(a)
    assert alloc.alloc(MIN_SLOT) == a  # the partial page is reused before a new one
    assert b // alloc.page == a // alloc.page


def test_capacity_smaller_than_a_page():
    alloc = SlabAllocator(10_000)
    assert alloc.capacity == 10_000
    assert alloc.page == 64 << 10
    first, second = alloc.alloc(MIN_SLOT), alloc.alloc(100)
    assert {first, second} == {0, MIN_SLOT}
    assert alloc.alloc(MIN_SLOT) is None  # a third 4 KiB slot would pass 10,000 bytes
    assert alloc.alloc(20_000) is None
    assert alloc.used_bytes == 2 * MIN_SLOT <= alloc.capacity
    alloc.free(first)
    alloc.free(second)
    assert alloc.used_bytes == 0
    assert alloc.alloc(9000) == 0


def test_tiny_capacity_admits_nothing():
    alloc = SlabAllocator(MIN_SLOT - 1)
    assert alloc.alloc(1) is None
    assert not alloc.room_for(1)


# -- the segment ---------------------------------------------------------------------------
@pytest.fixture
def segment():
    seg = Segment.create("blobtier-test", 1 << 20)
    yield seg
    seg.close()


def test_create_and_from_fd_map_the_same_memory(segment):
    other = Segment.from_fd(os.dup(segment.fd), "blobtier-test")
    try:
        assert other.size == segment.size == 1 << 20
        segment.view[100:105] = b"hello"
        assert bytes(other.view[100:105]) == b"hello"
        other.view[(1 << 20) - 3:] = b"end"
        assert bytes(segment.view[(1 << 20) - 3:]) == b"end"
    finally:
        other.close()
    assert bytes(segment.view[100:105]) == b"hello"  # closing one mapping leaves the other


def test_segment_is_a_memfd(segment):
    assert os.readlink(f"/proc/self/fd/{segment.fd}").startswith("/memfd:blobtier-test")


def test_close_with_a_live_view_keeps_the_view_readable():
    seg = Segment.create("blobtier-test", 1 << 20)
    seg.view[0:4] = b"abcd"
    view = seg.view[0:4]
    seg.close()
    seg.close()  # twice is harmless
    assert seg.fd == -1
    assert bytes(view) == b"abcd"


def test_segment_starts_zeroed(segment):
    assert bytes(segment.view[:4096]) == bytes(4096)
