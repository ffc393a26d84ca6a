"""Private pages: a writable alias of cache memory whose writes never reach the cache.

Views of cached chunks are read-only and shared: an L1 hit is a view of the host arena that
every process on the host maps, and an in-place write through it would change the bytes
every other reader gets (or, where the mapping is read-only, kill the process with
SIGSEGV). Python honours the read-only flag; ``torch.frombuffer`` does not. So a consumer
that needs writable memory (``dataloader.as_tensor``) asks ``private_alias(view)``: a
copy-on-write mapping of the same file range (``MAP_PRIVATE``). Reading it copies nothing
(the pages are the cache's until written); the first write to a page gives this mapping a
page of its own, which the cache and every other mapping never see.

A mapping is made per call, never shared: two aliases of one chunk do not see each other's
writes. The producer of a view offers this by giving the view's base object (``view.obj``)
a ``private_pages(start, length)`` method (``start`` relative to the base's first byte)
returning such a mapping, or ``None`` when it no longer can (then the caller copies).
"""

from __future__ import annotations

import mmap

import numpy as np

PAGE = mmap.ALLOCATIONGRANULARITY


class _PrivateMap(mmap.mmap):
    """A copy-on-write mapping that keeps ``keep`` (e.g. the slot's pin) alive with it:
    its unwritten pages show the file, so the file range must not be reused meanwhile."""

    keep: object = None


def map_private(fd: int, offset: int, length: int, keep: object) -> memoryview:
    """A writable, copy-on-write view of ``length`` bytes of ``fd`` at ``offset``.

    Raises:
        OSError: the mapping failed (e.g. a bad descriptor).
    """
    base = offset - offset % PAGE
    m = _PrivateMap(fd, offset - base + length, mmap.MAP_PRIVATE,
                    mmap.PROT_READ | mmap.PROT_WRITE, offset=base)
    m.keep = keep
    return memoryview(m)[offset - base:offset - base + length]


def address(buffer: object) -> int:
    """The address of a (possibly read-only) buffer's first byte."""
    return np.frombuffer(buffer, np.uint8).ctypes.data


def private_alias(view: memoryview) -> memoryview | None:
    """``view``'s bytes on private copy-on-write pages (no copy), when its producer offers
    them (see the module docstring); else ``None``."""
    make = getattr(view.obj, "private_pages", None)
    if make is None or not view.nbytes or not view.c_contiguous:
        return None
    start = address(view) - address(view.obj)
    return make(start, view.nbytes)
