"""The L1 arena: one shared-memory segment of chunk bytes, and its slab allocator.

The segment is anonymous shared memory that every reader process on the host maps; its
size is the L1 memory cap, so the cap holds by construction. Only bytes live there: the
index, the eviction policy and the pins live in the one process that owns the arena
(``owner.py``), which hands readers (offset, length) places to read straight from their
own mapping.

Allocation is slab-style (as memcached): the segment is cut into pages, a page is given
to one size class and split into equal slots; classes are about 1% apart. A page whose
slots are all free returns to the common pool, so memory follows the workload's sizes.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass

from blobtier.errors import InvalidRequest

PAGE_BYTES = 16 << 20
MIN_SLOT = 4096
GROWTH = 1.01


class Segment:
    """A shared memory segment with no name on any filesystem (``memfd_create``).

    The owner creates it and passes its file descriptor to readers over the owner's Unix
    socket (SCM_RIGHTS). With no name to unlink, the memory goes back to the system when
    the last process holding it exits, even by SIGKILL: nothing is ever left in /dev/shm.
    """

    def __init__(self, fd: int, size: int, name: str, writable: bool = True) -> None:
        self.fd = fd
        self.size = size
        self.name = name
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        self._map = mmap.mmap(fd, size, mmap.MAP_SHARED, prot)
        self.view = memoryview(self._map)

    @classmethod
    def create(cls, name: str, size: int) -> Segment:
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(fd, size)  # sparse: pages cost memory only once written
        return cls(fd, size, name)

    @classmethod
    def from_fd(cls, fd: int, name: str) -> Segment:
        """Map a segment received from its owner; takes ownership of ``fd``."""
        return cls(fd, os.fstat(fd).st_size, name)

    def close(self) -> None:
        """Unmap once no view is left, and close the descriptor."""
        if self.fd < 0:
            return
        os.close(self.fd)
        self.fd = -1
        self.view.release()
        try:
            self._map.close()
        except BufferError:
            pass  # a reader still holds a view: the mapping goes with the last one


def size_classes(page: int = PAGE_BYTES, smallest: int = MIN_SLOT) -> list[int]:
    """Slot sizes at least ``GROWTH`` apart, each the largest size that splits a page into
    a whole number of slots, so no page loses a tail to rounding. A dataset of equal-sized
    samples (the common case) then wastes about a percent of the arena."""
    sizes: list[int] = []
    for count in range(max(1, page // smallest), 0, -1):
        slot = page // count // 64 * 64
        if slot >= smallest and (not sizes or slot >= sizes[-1] * GROWTH):
            sizes.append(slot)
    if sizes[-1] != page:
        sizes.append(page)
    return sizes


@dataclass
class _Page:
    klass: int = -1
    free: list[int] | None = None  # free slot offsets
    used: int = 0


class SlabAllocator:
    """Slots of ``size`` bytes or more inside ``capacity`` bytes; not thread-safe (the
    owner serialises calls)."""

    def __init__(self, capacity: int, page: int = PAGE_BYTES) -> None:
        while page > 64 << 10 and capacity < 16 * page:
            page //= 2  # keep enough pages to share between size classes
        self.page = page
        self.classes = size_classes(page)
        self._capacity = capacity
        self.pages = [_Page() for _ in range(-(-capacity // page))]  # the last may be short
        self._free_pages = list(range(len(self.pages) - 1, -1, -1))
        self._partial: list[set[int]] = [set() for _ in self.classes]  # pages with a free slot
        self.used_bytes = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    def _page_bytes(self, n: int) -> int:
        return min(self.page, self._capacity - n * self.page)

    def _take_page(self, slot: int) -> int | None:
        """A free page with room for at least one ``slot`` (the short last page may not)."""
        for i in range(len(self._free_pages) - 1, -1, -1):
            if self._page_bytes(self._free_pages[i]) >= slot:
                return self._free_pages.pop(i)
        return None

    def klass(self, size: int) -> int:
        if size > self.page or size <= 0:
            raise InvalidRequest(f"a {size}-byte chunk does not fit a {self.page}-byte arena page")
        lo, hi = 0, len(self.classes) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if self.classes[mid] >= size:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def alloc(self, size: int) -> int | None:
        """Offset of a free slot for ``size`` bytes, or None when the arena is full for it."""
        k = self.klass(size)
        partial = self._partial[k]
        if not partial:
            slot = self.classes[k]
            n = self._take_page(slot)
            if n is None:
                return None
            base, count = n * self.page, self._page_bytes(n) // slot
            self.pages[n] = _Page(k, [base + i * slot for i in range(count - 1, -1, -1)])
            partial.add(n)
        n = next(iter(partial))
        page = self.pages[n]
        offset = page.free.pop()
        if not page.free:
            partial.discard(n)
        page.used += 1
        self.used_bytes += self.classes[k]
        return offset

    def free(self, offset: int) -> None:
        n = offset // self.page
        page = self.pages[n]
        page.free.append(offset)
        page.used -= 1
        self.used_bytes -= self.classes[page.klass]
        if page.used == 0:  # the page goes back to the pool, for any class
            self._partial[page.klass].discard(n)
            self.pages[n] = _Page()
            self._free_pages.append(n)
        else:
            self._partial[page.klass].add(n)

    def slot_size(self, offset: int) -> int:
        return self.classes[self.pages[offset // self.page].klass]

    def room_for(self, size: int) -> bool:
        k = self.klass(size)
        return bool(self._partial[k]) or any(self._page_bytes(n) >= self.classes[k]
                                             for n in self._free_pages[-2:])
