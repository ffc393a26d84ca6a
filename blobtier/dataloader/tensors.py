"""Tensors straight from cache memory.

``as_tensor(view)`` wraps a blob's bytes in a tensor. Reads copy nothing where the view is
an L1 hit (memory of the host arena), and writes never reach the cache: the tensor lies
on a copy-on-write mapping of the arena's pages made for this call (``blobtier/pages.py``),
so an in-place op gives the tensor private copies of the pages it writes, and every other
reader (this process's next ``get``, the other workers, the other ranks) still sees the
committed bytes. Mapping costs system calls and a page fault per page first touched;
views under ``MAP_FROM`` (64 KiB) are copied instead, which costs less at that size.
``benchmarks/as_tensor.py`` measures both against the unsafe zero-copy view of old.

A view of other memory (a miss: a chunk read from the block layer, the flash tier or an
origin; or a blob of several chunks joined) is copied once into memory of the tensor's
own: that memory may be shared with other readers or a cache fill still in progress (and
the embedded block layer's files are mapped read-only: a write there was a SIGSEGV). A
writable view (the caller's own memory) is wrapped as it is.

A mapped tensor keeps the cache slot's pin: the cache does not reuse that memory while
the tensor exists.
"""

from __future__ import annotations

import torch

from blobtier.pages import private_alias

# Smaller views are copied: a mapping costs a system call, a page fault and an unmap,
# which cost more than copying a few pages (4 KiB: 66 us mapped, 14 us copied on the
# machine ``benchmarks/as_tensor.py`` first ran on), and sharing pages saves little memory.
MAP_FROM = 64 << 10


def as_tensor(view: memoryview | bytes | bytearray, dtype: torch.dtype = torch.uint8,
              offset: int = 0, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """A tensor over ``view``'s bytes from byte ``offset`` that is safe to write (see the
    module docstring): of ``shape`` (in elements of ``dtype``), else 1-D with every whole
    element that fits after ``offset``.

    Raises:
        ValueError: the bytes do not hold ``shape`` elements of ``dtype`` from ``offset``,
            or ``offset`` is negative or past the end.
    """
    tensor = torch.frombuffer(_writable(memoryview(view)), dtype=dtype, offset=offset,
                              count=-1 if shape is None else _numel(shape))
    return tensor if shape is None else tensor.view(shape)


def _writable(view: memoryview) -> memoryview | bytearray:
    """Memory with ``view``'s bytes that a write may change: never the cache's own. (A
    writable buffer also keeps torch from warning about a read-only one.)"""
    if not view.readonly:
        return view  # the caller's own memory
    alias = private_alias(view) if view.nbytes >= MAP_FROM else None
    return alias if alias is not None else bytearray(view)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
