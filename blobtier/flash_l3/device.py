"""The flash device: fixed-size region files in one directory, read and written at aligned offsets.

Each region is one file ``<dir>/regions/NNNNNN.reg`` of exactly ``region_size`` bytes,
published atomically (created under a temporary name, preallocated, renamed into place), so
a crash never leaves a short region file behind. Preallocating means the disk is claimed
when a region is created: a full disk shows up there, as ``ENOSPC``, and not in the middle
of an append. Every offset and length the cache uses is a multiple of ``ALIGN``, so the
same layout works with ``O_DIRECT``; this implementation goes through the page cache, which
a process crash (``kill -9``) does not lose.

``DeviceFaults`` is the seam fault tests use to make reads or writes fail with an errno
(``EIO``, ``ENOSPC``), as navy's ``MockDevice`` does.
"""

from __future__ import annotations

import errno
import os
import re
import threading
from collections.abc import Sequence

import numpy as np

from blobtier.chunks import Buffer
from blobtier.errors import InvalidRequest
from blobtier.fsutil import private_dir

ALIGN = 4096
_NAME = re.compile(r"(\d{6})\.reg")
OPS = ("read", "write", "create")


def align_up(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


class DeviceFaults:
    """Armed failures: the next ``count`` operations of a kind raise ``OSError(errno)``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: dict[str, list[int]] = {}  # op -> [errno, remaining (-1: forever)]

    def arm(self, op: str, err: int = errno.EIO, count: int = -1) -> None:
        if op not in OPS:
            raise InvalidRequest(f"op must be one of {OPS}, not {op!r}")
        with self._lock:
            self._armed[op] = [err, count]

    def clear(self) -> None:
        with self._lock:
            self._armed.clear()

    def check(self, op: str) -> None:
        if not self._armed:
            return
        with self._lock:
            armed = self._armed.get(op)
            if armed is None:
                return
            if armed[1] > 0:
                armed[1] -= 1
                if armed[1] == 0:
                    del self._armed[op]
        raise OSError(armed[0], f"injected {os.strerror(armed[0])} on {op}")


class Device:
    """Region files under ``root``; thread-safe (positional I/O, one descriptor per file).

    Args:
        root: the cache directory (``regions/`` is made inside it).
        region_size: bytes per region file, a multiple of ``ALIGN``.
        faults: failures to inject (tests).
    """

    def __init__(self, root: str, region_size: int, faults: DeviceFaults | None = None) -> None:
        if region_size % ALIGN or region_size < 4 * ALIGN:
            raise InvalidRequest(f"region size must be a multiple of {ALIGN} and at least {4 * ALIGN}")
        self.root = os.path.join(root, "regions")
        self.region_size = region_size
        self.faults = faults or DeviceFaults()
        private_dir(self.root)
        self._lock = threading.Lock()
        self._fds: dict[int, int] = {}
        self.counters = {"reads": 0, "writes": 0, "bytes_read": 0, "bytes_written": 0, "errors": 0}
        for slot in self.slots():
            self._open(slot)

    def slots(self) -> list[int]:
        """The region files present, by slot number."""
        return sorted(int(m.group(1)) for n in os.listdir(self.root) if (m := _NAME.fullmatch(n)))

    def path(self, slot: int) -> str:
        return os.path.join(self.root, f"{slot:06d}.reg")

    def _open(self, slot: int) -> None:
        fd = os.open(self.path(slot), os.O_RDWR)
        if os.fstat(fd).st_size != self.region_size:
            # A region file of another size belongs to another configuration: start it over.
            os.ftruncate(fd, 0)
            os.ftruncate(fd, self.region_size)
        self._fds[slot] = fd

    def create(self, slot: int) -> None:
        """A new, zeroed region file; ``OSError(ENOSPC)`` when the disk cannot hold it."""
        self.faults.check("create")
        tmp = self.path(slot) + ".tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.posix_fallocate(fd, 0, self.region_size)
            os.rename(tmp, self.path(slot))
        except OSError:
            os.close(fd)
            os.unlink(tmp)
            raise
        with self._lock:
            self._fds[slot] = fd

    def remove(self, slot: int) -> None:
        with self._lock:
            fd = self._fds.pop(slot, None)
        if fd is not None:
            os.close(fd)
        try:
            os.unlink(self.path(slot))
        except FileNotFoundError:
            pass

    def read(self, slot: int, offset: int, length: int) -> memoryview:
        """``length`` bytes at ``offset`` (both aligned); fewer only past the end of the file."""
        self._count("read", length)
        # Not bytearray: it zero-fills first, and for 4 MiB chunks that pass costs more than
        # the read itself; the read overwrites every byte it returns anyway.
        buf = np.empty(length, np.uint8)
        try:
            self.faults.check("read")
            n = os.preadv(self._fd(slot), [buf], offset)
        except OSError:
            self.counters["errors"] += 1
            raise
        return memoryview(buf)[:n]

    def write(self, slot: int, offset: int, parts: Sequence[Buffer]) -> None:
        """Write ``parts`` back to back at ``offset``; raises ``OSError`` on a short write."""
        want = sum(len(p) for p in parts)
        self._count("write", want)
        try:
            self.faults.check("write")
            done = os.pwritev(self._fd(slot), parts, offset)
            if done != want:
                raise OSError(errno.ENOSPC, f"short write: {done} of {want} bytes")
        except OSError:
            self.counters["errors"] += 1
            raise

    def _fd(self, slot: int) -> int:
        # A descriptor can be closed and its number reused while a read is in flight (a
        # region removed by a shrink); the cache checks every entry's header and checksum,
        # so such a read is a miss, never wrong bytes.
        fd = self._fds.get(slot)
        if fd is None:
            raise OSError(errno.EBADF, f"no region file {slot}")
        return fd

    def advise_cold(self) -> None:
        """Drop the region files from the page cache (benchmarks measure the disk)."""
        for fd in list(self._fds.values()):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def _count(self, op: str, n: int) -> None:
        # Plain int updates: a lost increment under a race costs a counter, never data.
        c = self.counters
        c[op + "s"] += 1
        c["bytes_" + ("read" if op == "read" else "written")] += n

    def close(self) -> None:
        with self._lock:
            fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)
