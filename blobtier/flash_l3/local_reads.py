"""Short-circuit reads: a client on the flash node's host reads L3 hits from the region files.

Streaming a chunk through Python gRPC costs far more CPU than reading it from the page
cache or the disk, so a client that shares a host with a flash node asks the node only
*where* its chunks are (``Locate``) and reads them itself, as HDFS clients read local
blocks. What keeps this safe is the entry header: it names the chunk and the region's
generation, so an entry whose region was reclaimed (and perhaps rewritten) between the
answer and the read is a miss. The chain checks every chunk's checksum against its record
as it does for any untrusted tier, so a torn read is a miss too, never wrong bytes.

A client can read the region files only where the filesystem lets it (the node creates
them 0600: the same user). A node on another host, or files it cannot open, turn local
reads off for that node; its chunks then come over gRPC as before.

A forked child closes its copies of the region files' descriptors before any of its code
runs (``blobtier.forks``), so a child that never reads does not keep regions the node has
since deleted on disk, and one that reads opens descriptors of its own.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import deque

import numpy as np

from blobtier import forks
from blobtier.chunks import ChunkKey
from blobtier.flash_l3.regions import ENTRY_HEADER, parse_entry_header


class BufferPool:
    """Read buffers used again once nobody holds a view of them.

    A fresh multi-megabyte buffer per read costs a page fault per 4 KiB page, more than
    the read itself (glibc hands big freed blocks back to the kernel). A buffer whose only
    references are the pool's own is free: views of it (the memoryviews handed to
    readers, tensors made from them) each hold a reference.
    """

    _SCAN = 8  # buffers of a size looked at per take before a new one is made
    _IDLE_REFS = 3  # the pool's deque, the loop variable, getrefcount's argument

    def __init__(self, limit_bytes: int = 256 << 20) -> None:
        self.limit_bytes = limit_bytes
        self._bytes = 0
        self._by_size: dict[int, deque[np.ndarray]] = {}
        self._lock = threading.Lock()
        forks.register(self)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # a parent thread may have held it

    def take(self, n: int) -> np.ndarray:
        # Whole buffers of the exact size, never slices of bigger ones: preadv into a
        # numpy slice measured 3.5x slower than into a whole array (same bytes, same
        # alignment). Chunks come in few sizes, so exact sizes still reuse well.
        with self._lock:
            ring = self._by_size.setdefault(n, deque())
            for _ in range(min(self._SCAN, len(ring))):
                buf = ring[0]
                ring.rotate(-1)
                if sys.getrefcount(buf) == self._IDLE_REFS:
                    return buf
            buf = np.empty(n, np.uint8)  # no zero-fill: the read overwrites it
            if self._bytes + n <= self.limit_bytes:
                ring.append(buf)
                self._bytes += n
        return buf


class RegionReader:
    """Reads entries from one node's region directory, keeping a descriptor per file."""

    def __init__(self, directory: str, pool: BufferPool | None = None) -> None:
        self.directory = directory
        self.pool = pool or BufferPool()
        self._fds: dict[int, int] = {}
        self._lock = forks.ForkLock()  # a descriptor opened but not yet filed is not copied
        forks.register(self)

    def _after_fork_in_child(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)  # the child's copies: the parent's stay open

    def read(self, key: ChunkKey, slot: int, offset: int, length: int, seq: int) -> memoryview | None:
        """The chunk's bytes if its entry is still there, else None. Raises ``OSError``
        when the region file cannot be opened at all (local reads are then off)."""
        buf = self.pool.take(ENTRY_HEADER + length)
        for fresh in (False, True):
            fd = self._fd(slot, fresh)
            if os.preadv(fd, [buf], offset) != len(buf):
                continue  # a shorter file than the entry: a region removed and recreated
            head = parse_entry_header(buf)
            if head is not None and head.key == key and head.seq == seq and head.length == length:
                return memoryview(buf)[ENTRY_HEADER:].toreadonly()
        return None

    def _fd(self, slot: int, fresh: bool) -> int:
        with self._lock:
            fd = self._fds.get(slot)
            if fd is not None and not fresh:
                return fd
            if fd is not None:
                os.close(fd)
                del self._fds[slot]
            # A region removed by a shrink and created again is a new file: reopen once.
            fd = os.open(os.path.join(self.directory, f"{slot:06d}.reg"), os.O_RDONLY | os.O_CLOEXEC)
            self._fds[slot] = fd
            return fd

    def close(self) -> None:
        with self._lock:
            fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)
