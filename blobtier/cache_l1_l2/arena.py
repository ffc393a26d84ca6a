"""The L1 arena: one shared-memory segment of chunk bytes, and its slab allocator.

The segment is anonymous shared memory that every reader process on the host maps; its
size is the L1 memory cap, so the cap holds by construction. Only bytes live there: the
index, the eviction policy and the pins live in the one process that owns the arena
(``owner.py``), which hands readers (offset, length) places to read straight from their
own mapping.

Allocation is slab-style (as memcached): the segment is cut into small pages (about
1/512 of the arena, at least 64 KiB); a *slab* is a run of one or more adjacent pages
given to one size class and split into equal slots. Classes are about 1.25x apart
(memcached's growth factor), so a workload of mixed sizes touches a few dozen classes, not
hundreds; each class's slab spans as many pages as it takes to hold its slots with
almost no tail, so chunks larger than a page fit too (up to ``max_chunk``). A slab whose
slots are all free returns its pages to the common pool, for any class.

A class with no free slot and no free run of pages is *full*; the owner then makes room
by evicting within the class or by moving pages from another class (clearing a run of
pages, as memcached's slab automove does): see ``ArenaOwner``. The allocator only says
what lives where (``runs_over``) and frees what it is told.
"""

from __future__ import annotations

import mmap
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from blobtier import pages
from blobtier.errors import InvalidRequest

MIN_SLOT = 4096
GROWTH = 1.25  # between size classes (a little more where no slab splits evenly)
PAGES = 512  # the page count an arena aims at, so that pages can follow the workload
MIN_PAGE = 64 << 10
MAX_CHUNK = 16 << 20  # the largest chunk a large arena takes by default
_TAIL = 1 / 16  # a slab may span more pages when that cuts its slot rounding below this


_FD_LOCK = threading.Lock()  # Segment.close against map_private


def _after_fork() -> None:
    global _FD_LOCK
    _FD_LOCK = threading.Lock()  # another parent thread may have held it


os.register_at_fork(after_in_child=_after_fork)


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

    @property
    def buffer(self) -> mmap.mmap:
        """The mapping itself, for views that must keep it alive (``ctypes.from_buffer``)."""
        return self._map

    def map_private(self, offset: int, length: int, keep: object) -> memoryview | None:
        """A copy-on-write mapping of ``length`` bytes at ``offset`` (``pages.py``), kept
        with ``keep``; ``None`` once the segment is closed."""
        with _FD_LOCK:  # a closed descriptor's number may already name another file
            if self.fd < 0:
                return None
            return pages.map_private(self.fd, offset, length, keep)

    def close(self) -> None:
        """Unmap once no view is left, and close the descriptor."""
        with _FD_LOCK:
            if self.fd < 0:
                return
            os.close(self.fd)
            self.fd = -1
        self.view.release()
        try:
            self._map.close()
        except BufferError:
            pass  # a reader still holds a view: the mapping goes with the last one


def default_max_chunk(capacity: int) -> int:
    """The largest chunk an arena of ``capacity`` bytes takes unless told otherwise:
    ``MAX_CHUNK``, halved until sixteen of them fit (never below ``MIN_PAGE``)."""
    largest = MAX_CHUNK
    while largest > MIN_PAGE and capacity < 16 * largest:
        largest //= 2
    return largest


def page_size(capacity: int) -> int:
    """About ``capacity / PAGES``: a power of two, at least ``MIN_PAGE``."""
    page = MIN_PAGE
    while page * 2 * PAGES <= capacity:
        page *= 2
    return page


def _fit(target: int, page: int) -> tuple[int, int]:
    """(slot, span): the slab of the fewest pages whose equal slots of at least
    ``target`` bytes round up by under ``_TAIL``; the slot takes up the slab's tail."""
    first = -(-target // page)
    best = (0, 0)
    for span in range(first, first + 8):
        count = span * page // target
        slot = span * page // count // 64 * 64
        if not best[0] or slot < best[0]:
            best = (slot, span)
        if slot <= target * (1 + _TAIL):
            break
    return best


def size_classes(page: int, largest: int, smallest: int = MIN_SLOT) -> list[tuple[int, int]]:
    """(slot size, pages per slab) from ``smallest`` to ``largest``, about ``GROWTH``
    apart, plus every power of two between: chunk sizes are so often 128 KiB, 1 MiB or
    4 MiB that a class a quarter larger would waste a fifth of the arena (measured: 1 MiB
    samples filled 83% of it). Each slab splits into whole slots (no tail to rounding)."""
    targets: set[int] = set()
    target = -(-smallest // 64) * 64
    while target < largest:
        targets.add(target)
        slot, _ = _fit(target, page)
        target = -(-int(max(slot, target) * GROWTH) // 64) * 64
    targets.add(largest)
    power = 1 << (smallest - 1).bit_length()
    while power < largest:
        targets.add(power)
        power <<= 1
    classes: list[tuple[int, int]] = []
    for target in sorted(targets):
        slot, span = _fit(target, page)
        if not classes or slot > classes[-1][0]:
            classes.append((slot, span))
    return classes


@dataclass
class _Slab:
    klass: int
    start: int  # first page
    span: int  # pages
    free: list[int] = field(default_factory=list)  # free slot offsets
    used: int = 0


class SlabAllocator:
    """Slots of ``size`` bytes or more inside ``capacity`` bytes; not thread-safe (the
    owner serialises calls).

    Args:
        capacity: the arena's bytes; the last page may be short, so this is exact.
        max_chunk: the largest chunk it must take (default: ``default_max_chunk``).
    """

    def __init__(self, capacity: int, max_chunk: int | None = None) -> None:
        self._capacity = capacity
        self.page = page_size(capacity)
        self.max_chunk = max_chunk or default_max_chunk(capacity)
        if self.max_chunk % 64:
            raise InvalidRequest(f"max_chunk {self.max_chunk} is not a multiple of 64 bytes")
        self.classes, self.spans = map(list, zip(*size_classes(self.page, self.max_chunk)))
        self.n_pages = -(-capacity // self.page)  # the last may be short
        self._free_map = bytearray(b"\x01" * self.n_pages)  # 1: the page is in the pool
        self._slab_at: list[_Slab | None] = [None] * self.n_pages  # page -> its slab
        self._partial: list[dict[int, None]] = [{} for _ in self.classes]  # slabs with a free slot
        self.used_bytes = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    def _run_bytes(self, start: int, span: int) -> int:
        return min(span * self.page, self._capacity - start * self.page)

    def _free_run(self, k: int) -> int | None:
        """The first page of the tightest free run that holds a slab of class ``k``."""
        span, slot = self.spans[k], self.classes[k]
        best = None
        for m in re.finditer(rb"\x01+", self._free_map):
            start, length = m.start(), m.end() - m.start()
            # The earliest start of a free run holds the most: only the last page is short.
            if length >= span and self._run_bytes(start, span) >= slot and (
                    best is None or length < best[1]):
                best = (start, length)
        return None if best is None else best[0]

    def klass(self, size: int) -> int:
        if size > self.max_chunk or size <= 0:
            raise InvalidRequest(f"a {size}-byte chunk is larger than this arena's "
                                 f"{self.max_chunk}-byte limit" if size > 0 else
                                 f"a {size}-byte chunk is empty")
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
            start = self._free_run(k)
            if start is None:
                return None
            slot, span = self.classes[k], self.spans[k]
            base, count = start * self.page, self._run_bytes(start, span) // slot
            slab = _Slab(k, start, span, [base + i * slot for i in range(count - 1, -1, -1)])
            self._free_map[start:start + span] = bytes(span)
            for n in range(start, start + span):
                self._slab_at[n] = slab
            partial[start] = None
        slab = self._slab_at[next(iter(partial))]
        offset = slab.free.pop()
        if not slab.free:
            del partial[slab.start]
        slab.used += 1
        self.used_bytes += self.classes[k]
        return offset

    def free(self, offset: int) -> None:
        slab = self._slab_at[offset // self.page]
        slab.free.append(offset)
        slab.used -= 1
        self.used_bytes -= self.classes[slab.klass]
        if slab.used == 0:  # its pages go back to the pool, for any class
            self._partial[slab.klass].pop(slab.start, None)
            self._free_map[slab.start:slab.start + slab.span] = b"\x01" * slab.span
            self._slab_at[slab.start:slab.start + slab.span] = [None] * slab.span
        else:
            self._partial[slab.klass][slab.start] = None

    def slot_size(self, offset: int) -> int:
        return self.classes[self._slab_at[offset // self.page].klass]

    def class_of(self, offset: int) -> int:
        return self._slab_at[offset // self.page].klass

    def room_for(self, size: int) -> bool:
        k = self.klass(size)
        return bool(self._partial[k]) or self._free_run(k) is not None

    def slab_pages(self, offset: int) -> tuple[int, int]:
        """(first page, pages) of the slab holding ``offset``."""
        slab = self._slab_at[offset // self.page]
        return slab.start, slab.span

    def runs_over(self, start: int, span: int) -> Iterator[tuple[int, int, list[int]]]:
        """(first page, pages, used slot offsets) of every slab over pages
        ``[start, start + span)``: what must go to free those pages."""
        n = start
        while n < start + span:
            slab = self._slab_at[n]
            if slab is None:
                n += 1
                continue
            slot, free = self.classes[slab.klass], set(slab.free)
            base, count = slab.start * self.page, self._run_bytes(slab.start, slab.span) // slot
            used = [o for o in range(base, base + count * slot, slot) if o not in free]
            yield slab.start, slab.span, used
            n = slab.start + slab.span

    def run_holds(self, start: int, k: int) -> bool:
        """Whether a slab of class ``k`` at page ``start`` holds a slot (the last page
        may be short)."""
        return (start + self.spans[k] <= self.n_pages
                and self._run_bytes(start, self.spans[k]) >= self.classes[k])
