"""The arena's memory: slab size classes, the slab allocator, and the memfd segment."""

from __future__ import annotations

import os
import random

import pytest

from blobtier.cache_l1_l2.arena import (
    GROWTH,
    MIN_PAGE,
    MIN_SLOT,
    PAGES,
    Segment,
    SlabAllocator,
    default_max_chunk,
    page_size,
    size_classes,
)
from blobtier.errors import InvalidRequest

SHAPES = [(64 << 10, 64 << 10), (64 << 10, 256 << 10), (128 << 10, 4 << 20), (1 << 20, 16 << 20)]


# -- pages and size classes ------------------------------------------------------------------
@pytest.mark.parametrize(("capacity", "page"), [
    (10_000, MIN_PAGE), (1 << 20, MIN_PAGE), (64 << 20, 128 << 10), (512 << 20, 1 << 20),
    (8 << 30, 16 << 20), ((8 << 30) - 1, 8 << 20)])
def test_pages_are_about_a_512th_of_the_arena(capacity, page):
    assert page_size(capacity) == page
    assert page == MIN_PAGE or PAGES <= capacity // page < 2 * PAGES


def test_the_largest_chunk_is_at_most_a_sixteenth_of_the_arena():
    assert default_max_chunk(1 << 20) == MIN_PAGE
    assert default_max_chunk(64 << 20) == 4 << 20
    assert default_max_chunk(8 << 30) == 16 << 20


@pytest.mark.parametrize(("page", "largest"), SHAPES)
def test_size_classes_span_min_slot_to_the_largest_chunk_in_order(page, largest):
    slots = [slot for slot, _ in size_classes(page, largest)]
    assert slots[0] == MIN_SLOT
    assert slots[-1] == largest
    assert all(a < b for a, b in zip(slots, slots[1:]))
    assert all(c % 64 == 0 for c in slots)


@pytest.mark.parametrize(("page", "largest"), SHAPES)
def test_size_classes_are_coarse_but_lose_little_to_rounding(page, largest):
    """About 1.25x apart, a little more where no slab of a few pages splits evenly (a few
    dozen classes, not hundreds): a chunk wastes at most about a quarter of its slot."""
    slots = [slot for slot, _ in size_classes(page, largest)]
    assert len(slots) <= 40
    assert all(b <= a * GROWTH * 1.09 for a, b in zip(slots, slots[1:]))


@pytest.mark.parametrize(("page", "largest"), SHAPES)
def test_slabs_split_into_whole_slots_and_span_few_pages(page, largest):
    for slot, span in size_classes(page, largest):
        run = span * page
        assert slot <= run and run % slot < run // slot * 64  # no tail beyond rounding
        assert span < -(-slot // page) + 8


# -- the allocator -------------------------------------------------------------------------
def test_klass_rejects_empty_and_oversized_requests():
    alloc = SlabAllocator(4 << 20)
    for size in (0, -1, alloc.max_chunk + 1):
        with pytest.raises(InvalidRequest):
            alloc.klass(size)
    assert alloc.classes[alloc.klass(1)] == MIN_SLOT
    assert alloc.classes[alloc.klass(alloc.max_chunk)] == alloc.max_chunk


def test_klass_picks_the_smallest_class_that_fits():
    alloc = SlabAllocator(4 << 20)
    for size in range(1, alloc.max_chunk + 1, 997):
        k = alloc.klass(size)
        assert alloc.classes[k] >= size
        assert k == 0 or alloc.classes[k - 1] < size


def test_alloc_returns_distinct_slots_inside_capacity():
    rng = random.Random(1)
    alloc = SlabAllocator(4 << 20)  # 64 pages of 64 KiB; chunks up to 256 KiB
    assert (alloc.page, alloc.n_pages, alloc.max_chunk) == (64 << 10, 64, 256 << 10)
    sizes = [rng.choice([5000, 30_000, 77_777, 200_000]) + rng.randrange(64) for _ in range(300)]
    slots = []
    for size in sizes:
        offset = alloc.alloc(size)
        if offset is None:
            continue  # no slot of this class and no free run of pages left
        assert alloc.slot_size(offset) >= size
        slots.append((offset, alloc.slot_size(offset)))
    assert len(slots) > 40
    slots.sort()
    for (a, size_a), (b, _) in zip(slots, slots[1:]):
        assert a + size_a <= b, "two slots overlap"
    assert slots[-1][0] + slots[-1][1] <= alloc.capacity
    assert alloc.used_bytes == sum(s for _, s in slots)
    assert alloc.used_bytes > alloc.capacity * 0.8


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
            size = rng.choice([rng.randrange(1, 8192), rng.randrange(1, alloc.max_chunk)])
            offset = alloc.alloc(size)
            if offset is None:
                refused += 1
                continue
            assert offset not in live
            assert offset + alloc.slot_size(offset) <= capacity
            live[offset] = alloc.slot_size(offset)
        assert alloc.used_bytes == sum(live.values()) <= capacity
    assert refused > 0  # the workload did fill the arena
    for offset in live:
        alloc.free(offset)
    assert alloc.used_bytes == 0
    assert alloc.room_for(alloc.max_chunk)  # every page went back to the pool


def test_alloc_returns_none_when_full():
    alloc = SlabAllocator(1 << 20)  # 16 pages of 64 KiB
    assert alloc.page == alloc.max_chunk == 64 << 10
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
    assert alloc.class_of(a) == alloc.klass(MIN_SLOT)


def test_a_chunk_larger_than_a_page_gets_a_run_of_adjacent_pages():
    alloc = SlabAllocator(64 << 20)  # 512 pages of 128 KiB; chunks up to 4 MiB
    offset = alloc.alloc(4 << 20)
    assert alloc.slot_size(offset) == 4 << 20
    start, span = alloc.slab_pages(offset)
    assert (start * alloc.page, span) == (offset, 32)
    assert list(alloc.runs_over(0, alloc.n_pages)) == [(start, 32, [offset])]
    alloc.free(offset)
    assert alloc.used_bytes == 0 and list(alloc.runs_over(0, alloc.n_pages)) == []


def test_a_run_needs_adjacent_free_pages_and_runs_over_says_what_holds_them():
    alloc = SlabAllocator(1 << 20, max_chunk=256 << 10)  # 16 pages of 64 KiB
    pages = [alloc.alloc(alloc.page) for _ in range(16)]
    for offset in pages[::2]:
        alloc.free(offset)  # 8 free pages, none adjacent
    assert alloc.alloc(200_000) is None and not alloc.room_for(200_000)
    assert alloc.alloc(alloc.page) is not None  # a one-page slab still fits
    k = alloc.klass(200_000)
    span = alloc.spans[k]
    held = list(alloc.runs_over(4, span))
    assert held == [(n, 1, [n * alloc.page]) for n in range(4, 4 + span) if n % 2]
    for _, _, used in held:
        for offset in used:
            alloc.free(offset)
    assert alloc.run_holds(4, k) and alloc.room_for(200_000)
    offset = alloc.alloc(200_000)
    assert offset == 4 * alloc.page and alloc.slab_pages(offset) == (4, span)


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


@pytest.mark.parametrize("size", [128 << 10, 1 << 20, 4 << 20])
def test_power_of_two_chunks_fill_their_slots_exactly(size):
    allocator = SlabAllocator(1500 << 20)
    slot = next(s for s in allocator.classes if s >= size)
    assert slot == size  # a 1 MiB chunk in a 1.25 MiB slot would waste a fifth of the arena
