"""The embedded L3: the flash store on the local disk under the region root, for a region
without flash nodes (``flash.endpoints`` empty).

Data read from a slow origin (blobs registered by reference) or the block layer is kept
here after its first read, and survives the process: the next epoch that L1 cannot hold,
a second training run, a restart or a new dataset object read it from local disk. It is
the flash node's store (``flash_l3/cache.py``: append-only regions, per-entry checksums,
warm restart from an index snapshot, or a scan after a crash), used in-process and bounded
by ``flash.local_bytes`` (0: a quarter of the disk's free space when it is first opened).

One process of the host owns it at a time (a lock file under ``<root>/l3``; the kernel
frees it when the owner dies, even by SIGKILL): the first that opens the region's read
path. It reads and writes the store directly and serves it to the host's other processes
(its DataLoader workers, a second job) over gRPC on a Unix socket in a directory of its
own (0700); they ask it only *where* hits are and read the region files themselves
(``flash_l3/local_reads.py``), as a client on a flash node's host does. The chain checks
every L3 hit against its record, so a torn or stale read is a miss, never wrong bytes.
A process that finds neither the lock free nor a live owner, or whose store cannot open
(a full disk, a directory it cannot write), has no L3 (a miss, as for any tier that is down).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile

from blobtier import forks
from blobtier.chunks import ChunkCache
from blobtier.config import MiB, RegionConfig
from blobtier.errors import BlobtierError, RegionLocked, TierUnavailable
from blobtier.fsutil import private_dir
from blobtier.lockfile import LockFile

log = logging.getLogger(__name__)
AUTO_SHARE = 0.25  # flash.local_bytes = 0: this share of the disk's free space
_MAX_REGION = 64 * MiB
_MIN_REGION = 1 * MiB


def local_capacity(config: RegionConfig) -> int:
    """Bytes the embedded L3 of ``config``'s region may take: ``flash.local_bytes``, or
    ``AUTO_SHARE`` of the free space on the region root's disk when that is 0."""
    if config.flash.local_bytes:
        return config.flash.local_bytes
    probe = config.root
    while not os.path.isdir(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    st = os.statvfs(probe)
    return int(st.f_bavail * st.f_frsize * AUTO_SHARE)


def region_size(capacity: int) -> int:
    """Region files of 1/16 of the capacity, 1..64 MiB, in whole 4 KiB pages: large
    regions write well, and FIFO reclaim then drops at most a sixteenth at once."""
    return max(_MIN_REGION, min(_MAX_REGION, capacity // 16)) // 4096 * 4096


class LocalL3:
    """The region's embedded L3 as this process sees it (``tier``)."""

    def __init__(self, config: RegionConfig) -> None:
        self.config = config
        self.dir = os.path.join(config.root, "l3")
        self._lock = LockFile(os.path.join(self.dir, "owner.lock"), f"the local L3 of {config.root}")
        self._cache = None  # the FlashCache, in the owning process
        self._server = None
        self._socket_dir: str | None = None
        self._remote: ChunkCache | None = None  # a client of another process's, in this one
        self._pid = 0
        forks.register(self)

    def tier(self) -> ChunkCache | None:
        """The store itself where this process owns it, else a client of its owner's
        socket; None when the region cannot have one (too little disk)."""
        if self._pid == os.getpid():
            return self._cache if self._cache is not None else self._remote
        self._pid = os.getpid()
        capacity = local_capacity(self.config)
        size = region_size(capacity)
        if capacity < 2 * size:
            log.info("no local L3 for %s: %d bytes is less than two regions", self.config.root, capacity)
            return None
        try:
            self._lock.acquire()
        except RegionLocked:
            self._remote = self._join()
            return self._remote
        except (OSError, BlobtierError) as exc:
            log.warning("no local L3 for %s: %s", self.config.root, exc)
            return None
        try:
            self._own(capacity, size)
        except (OSError, BlobtierError) as exc:  # a cache that cannot open is a tier that is down
            log.warning("no local L3 for %s: %s", self.config.root, exc)
            self._close_owned()
            return None
        except BaseException:
            self._close_owned()
            raise
        return self._cache

    def _own(self, capacity: int, size: int) -> None:
        from blobtier.flash_l3.cache import FlashCache  # the flash store and gRPC only when used
        from blobtier.rpc import cache_wire
        from blobtier.rpc.cache_service import CacheServicer
        from blobtier.rpc.server import serve

        private_dir(self.dir)
        self._cache = FlashCache(os.path.join(self.dir, "cache"), capacity, region_size=size)
        # A new 0700 directory of this process's for the socket (sun_path is short, and a
        # well-known name could be squatted); its name carries the pid for the sweep.
        self._socket_dir = tempfile.mkdtemp(prefix=f"blobtier-l3-{os.getpid()}-")
        path = os.path.join(self._socket_dir, "l3.sock")
        self._server, _ = serve([(cache_wire.add_cache_service, CacheServicer(self._cache, None))],
                                f"unix:{path}", max_workers=8)
        info = os.path.join(self.dir, "owner.json")
        with open(info + ".tmp", "w") as f:
            json.dump({"pid": os.getpid(), "socket": path}, f)
        os.replace(info + ".tmp", info)

    def _join(self) -> ChunkCache | None:
        """A client of the owner's socket, or None when no live owner is named."""
        try:
            with open(os.path.join(self.dir, "owner.json")) as f:
                owner = json.load(f)
            os.kill(int(owner["pid"]), 0)
            path = str(owner["socket"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.info("no local L3 for %s: its owner is not reachable (%s)", self.config.root, exc)
            return None
        from blobtier.flash_l3.local_reads import RegionReader
        from blobtier.rpc.remote_cache import RemoteChunkCache

        # The one node, as it is: its put_many sends a batch's fills in one Put stream.
        return RemoteChunkCache(f"unix:{path}", name="l3", timeout_s=self.config.flash.request_timeout_s,
                                local_reads=RegionReader)

    def _after_fork_in_child(self) -> None:
        """The parent's store, server and client are its own: kept, not closed (the lock
        file closes its copy itself); the child's first ``tier`` joins over the socket."""
        forks.keep_inherited(self._cache, self._server, self._remote)
        self._cache = self._server = self._remote = None
        self._socket_dir = None
        self._pid = 0

    def _close_owned(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None)
            self._server = None
        if self._cache is not None:
            with contextlib.suppress(TierUnavailable, OSError):
                self._cache.close()  # writes the index snapshot: the next open is warm
            self._cache = None
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(self.dir, "owner.json"))
        self._lock.release()

    def close(self) -> None:
        if self._pid != os.getpid():
            return
        if self._remote is not None:
            self._remote.close()
            self._remote = None
        if self._cache is not None:
            self._close_owned()
        self._pid = 0
