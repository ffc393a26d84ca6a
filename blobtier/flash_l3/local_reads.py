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
from collections.abc import Sequence

import numpy as np

from blobtier import checksum, forks
from blobtier.chunks import CORRUPT, ChunkKey, LocatedEntry
from blobtier.flash_l3.device import ALIGN
from blobtier.flash_l3.regions import ENTRY_HEADER, entry_span, parse_entry_header


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
    """Reads entries from one node's region directory, keeping a descriptor per file.

    Each entry is hashed as soon as it lands, while its bytes are still in the CPU's cache
    (hashing a 4 MiB entry after reading it whole reads it from memory a second time): a
    run of small entries that lie back to back in one region file, up to ``RUN`` bytes, is
    one ``preadv``; an entry bigger than ``WINDOW`` is read a window at a time into its
    buffer, feeding a streaming hasher.
    """

    WINDOW = 256 << 10  # bytes per preadv of a big entry: well inside a core's L2 (1 MiB here)
    RUN = 1 << 20  # bytes per preadv of a run of small entries (one syscall, still in L2/L3)
    _MAX_RUN = 256  # entries per preadv (2 iovecs each, IOV_MAX is 1024)

    def __init__(self, directory: str, pool: BufferPool | None = None) -> None:
        self.directory = directory
        self.pool = pool or BufferPool()
        self._fds: dict[int, int] = {}
        self._lock = forks.ForkLock()  # a descriptor opened but not yet filed is not copied
        self._pad = memoryview(bytearray(ALIGN))  # the gaps between entries land here
        forks.register(self)

    def _after_fork_in_child(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)  # the child's copies: the parent's stay open

    def read(self, key: ChunkKey, slot: int, offset: int, length: int, seq: int) -> memoryview | None:
        """The chunk's bytes if its entry is still there, else None. Raises ``OSError``
        when the region file cannot be opened at all (local reads are then off)."""
        got = self.read_many([LocatedEntry(key, slot, offset, length, seq)])[0]
        return got if isinstance(got, memoryview) else None

    def read_many(self, wanted: Sequence[LocatedEntry]) -> list[memoryview | None | object]:
        """Per entry, in order: its data (read-only, and verified when its ``checksum`` is
        set), None when the entry is no longer there (its region was reclaimed or
        rewritten since it was located), or ``CORRUPT`` when its data fails the checksum.

        Raises ``OSError`` when a region file cannot be opened at all."""
        out: list[memoryview | None | object] = [None] * len(wanted)
        for run in self._runs(wanted):
            if len(run) == 1 and ENTRY_HEADER + wanted[run[0]].length > self.WINDOW:
                out[run[0]] = self._read_big(wanted[run[0]])
            else:
                self._read_run([wanted[i] for i in run], run, out)
        return out

    def _runs(self, wanted: Sequence[LocatedEntry]) -> list[list[int]]:
        """Indexes of ``wanted`` grouped into runs that one preadv reads: back to back in
        one region file, at most ``RUN`` bytes; a big entry is a run of its own."""
        runs: list[list[int]] = []
        end, slot, size = -1, -1, 0
        for i in sorted(range(len(wanted)), key=lambda i: (wanted[i].slot, wanted[i].offset)):
            w = wanted[i]
            span = entry_span(w.length)
            if (w.slot == slot and w.offset == end and size + span <= self.RUN
                    and len(runs[-1]) < self._MAX_RUN):
                runs[-1].append(i)
                size += span
            else:
                runs.append([i])
                size = span
            slot, end = w.slot, w.offset + span
        return runs

    def _read_run(self, run: list[LocatedEntry], at: list[int], out: list) -> None:
        bufs = [self.pool.take(ENTRY_HEADER + w.length) for w in run]
        iov: list = []
        for w, buf in zip(run, bufs):
            iov.append(buf)
            iov.append(self._pad[:entry_span(w.length) - ENTRY_HEADER - w.length])
        iov.pop()  # nothing to read after the last entry
        want = sum(len(b) for b in iov)
        for fresh in (False, True):
            if os.preadv(self._fd(run[0].slot, fresh), iov, run[0].offset) == want:
                break  # else a shorter file: a region removed and recreated; reopen once
        else:
            return
        for w, buf, i in zip(run, bufs, at):
            if not _holds(buf, w):
                continue
            data = memoryview(buf)[ENTRY_HEADER:]
            if w.checksum is not None and checksum.compute(w.checksum[0], data) != w.checksum[1]:
                out[i] = CORRUPT
            else:
                out[i] = data.toreadonly()

    def _read_big(self, w: LocatedEntry) -> memoryview | None | object:
        buf = self.pool.take(ENTRY_HEADER + w.length)
        mv = memoryview(buf)
        for fresh in (False, True):
            fd = self._fd(w.slot, fresh)
            first = mv[:self.WINDOW]
            if os.preadv(fd, [first], w.offset) != len(first):
                continue  # a shorter file than the entry: a region removed and recreated
            if not _holds(buf, w):
                return None  # gone: the rest of the entry is not worth reading
            hasher = None if w.checksum is None else checksum.streaming(w.checksum[0])
            if hasher is not None:
                hasher.update(first[ENTRY_HEADER:])
            for pos in range(self.WINDOW, len(mv), self.WINDOW):
                piece = mv[pos:pos + self.WINDOW]
                if os.preadv(fd, [piece], w.offset + pos) != len(piece):
                    return None  # cut short under us: the region is being rewritten
                if hasher is not None:
                    hasher.update(piece)
            if hasher is not None and hasher.intdigest() != w.checksum[1]:
                return CORRUPT
            return mv[ENTRY_HEADER:].toreadonly()
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


def _holds(buf: np.ndarray, w: LocatedEntry) -> bool:
    """Whether ``buf`` starts with the header of the entry the node located (same chunk,
    same region generation, same length): else the region was reclaimed since."""
    head = parse_entry_header(buf)
    return head is not None and head.key == w.key and head.seq == w.seq and head.length == w.length
