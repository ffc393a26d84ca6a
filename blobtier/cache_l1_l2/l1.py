"""``SharedL1Cache``: the L1 tier as a reader of an arena (in this process or another).

A hit is a lookup at the owner (a method call in the owning process, one Unix-socket
round trip per batch elsewhere) and a view of the reader's own mapping of the segment:
no copy. Each view pins its slot; when the last reference to a view goes, the pin is
queued and handed back with the next request, so releases cost no round trip of their
own. A miss is filled by whoever read the chunk from below. The chain ``claim``s the slots of
its misses before it reads below: a chunk another process is already fetching comes back
``busy``, and a lookup of it waits for that fill instead of fetching it a second time (one
origin read per chunk per host). The claimed slots are filled by ``put`` and committed.
"""

from __future__ import annotations

import ctypes
import os
import tempfile
import threading
from collections.abc import Sequence

from blobtier.cache_l1_l2.arena import Segment
from blobtier.cache_l1_l2.owner import BUSY, GRANTED, ArenaOwner
from blobtier.cache_l1_l2.wire import OwnerClient, OwnerServer
from blobtier.chunks import Buffer, ChunkKey
from blobtier.errors import TierUnavailable

_FLUSH_RELEASES = 512  # queued releases that force a round trip of their own


class _Pin:
    """Lives exactly as long as the views of one slot handed to the caller."""

    __slots__ = ("cache", "offset")

    def __init__(self, cache: SharedL1Cache, offset: int) -> None:
        self.cache = cache
        self.offset = offset

    def __del__(self) -> None:
        self.cache._released(self.offset)


class SharedL1Cache:
    """A ``ChunkCache`` over an arena.

    Args:
        owner: the ``ArenaOwner`` when this process owns the arena, or
        socket_path: the owner's Unix socket when another process does.
    """

    name = "l1"
    trusted = True

    def __init__(self, owner: ArenaOwner | None = None, socket_path: str | None = None) -> None:
        if (owner is None) == (socket_path is None):
            raise ValueError("give exactly one of owner and socket_path")
        self._owner = owner
        self._client = OwnerClient(socket_path) if socket_path else None
        self._session = owner.open_session() if owner else 0
        self._segment: Segment | None = owner.segment if owner else None
        self._address = 0
        self._pending: list[int] = []
        self._claims: dict[ChunkKey, int] = {}  # claimed slots not yet filled
        self._lock = threading.Lock()

    # -- the owner, near or far ------------------------------------------------------------
    def _attach(self) -> Segment:
        """Map the owner's segment (again, if the owner restarted with a new one)."""
        if self._segment is None or (self._client is not None and not self._client.connected):
            info, fd = self._client.info()
            if self._segment is None or self._segment.name != info["name"]:
                self._segment = Segment.from_fd(fd, info["name"])
                self._address = 0
            else:
                os.close(fd)
        if not self._address:
            import numpy as np  # the segment's base address, for views that carry a pin

            self._address = np.frombuffer(self._segment.view, np.uint8).ctypes.data
        return self._segment

    def _lookup(self, digests: list[bytes], touch: bool) -> list:
        if self._owner is not None:
            return self._owner.lookup(digests, self._session, touch=touch)
        self._flush_releases()
        return self._client.lookup(digests, touch)

    def _flush_releases(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        if not pending:
            return
        if self._owner is not None:
            self._owner.release(pending, self._session)
        else:
            self._client.release(pending)

    def _released(self, offset: int) -> None:
        if self._owner is not None:
            self._owner.release([offset], self._session)
            return
        with self._lock:
            self._pending.append(offset)
            flush = len(self._pending) >= _FLUSH_RELEASES
        if flush:
            try:
                self._flush_releases()
            except TierUnavailable:
                pass  # the session is gone, and its pins with it

    # -- ChunkCache --------------------------------------------------------------------------
    def get_many(self, keys: Sequence[ChunkKey], touch: bool = True) -> dict[ChunkKey, memoryview]:
        """``touch=False``: a prefetcher's look, not a use the eviction policy should count."""
        segment = self._attach()
        places = self._lookup([k.digest() for k in keys], touch)
        found = {}
        for key, place in zip(keys, places):
            if place is not None:
                found[key] = self._view(place[0], place[1])
        del segment
        return found

    def _view(self, offset: int, length: int) -> memoryview:
        array = (ctypes.c_char * length).from_address(self._address + offset)
        array.pin = _Pin(self, offset)  # the view keeps the array alive, the array the pin
        return memoryview(array).cast("B").toreadonly()

    def claim(self, items: Sequence[tuple[ChunkKey, int]]) -> tuple[set[ChunkKey], set[ChunkKey]]:
        """Claim the slots of chunks about to be read from below: (claimed, busy)."""
        self._attach()
        wanted = [(key, size) for key, size in items if size > 0]
        if self._owner is not None:
            answers = [self._owner.claim(k.digest(), n, self._session) for k, n in wanted]
        else:
            answers = self._client.claim([(k.digest(), n) for k, n in wanted])
        claimed, busy = set(), set()
        with self._lock:
            for (key, _), (status, offset) in zip(wanted, answers):
                if status == GRANTED:
                    self._claims[key] = offset
                    claimed.add(key)
                elif status == BUSY:
                    busy.add(key)
        return claimed, busy

    def unclaim(self, keys: Sequence[ChunkKey]) -> None:
        """Give back claims that will not be filled (the read below failed)."""
        with self._lock:
            dropped = [k for k in keys if self._claims.pop(k, None) is not None]
        if dropped:
            self._abort([k.digest() for k in dropped])

    def put(self, key: ChunkKey, data: Buffer, touch: bool = True) -> None:
        size = len(data)
        with self._lock:
            offset = self._claims.pop(key, None)
        if offset is None:
            if not size or not self.claim([(key, size)])[0]:
                return
            with self._lock:
                offset = self._claims.pop(key)
        digest = key.digest()
        try:
            self._attach().view[offset:offset + size] = data
        except BaseException:
            self._abort([digest])
            raise
        if self._owner is not None:
            self._owner.commit(digest, self._session, accessed=touch)
        else:
            self._client.commit([digest], accessed=touch)

    def _abort(self, digests: list[bytes]) -> None:
        if self._owner is not None:
            for digest in digests:
                self._owner.abort(digest, self._session)
        else:
            self._client.abort(digests)

    def contains(self, key: ChunkKey) -> bool:
        if self._owner is not None:
            return self._owner.contains(key.digest())
        found = self.get_many([key])
        return bool(found)

    def announce(self, keys: Sequence[ChunkKey], job: int = 0) -> None:
        digests = [k.digest() for k in keys]
        if self._owner is not None:
            self._owner.announce(digests, job)
        else:
            self._client.announce(digests, job)

    def stats(self) -> dict:
        return self._owner.stats() if self._owner is not None else self._client.stats()

    def close(self) -> None:
        if self._client is not None:
            try:
                self._flush_releases()
            except TierUnavailable:
                pass
            self._client.close()
        elif self._owner is not None:
            self._owner.end_session(self._session, grace_s=0)


def socket_dir() -> str:
    """A private directory for this user's arena sockets (short: sun_path is 108 bytes)."""
    path = os.path.join(tempfile.gettempdir(), f"blobtier-{os.getuid()}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


class OwnedArena:
    """An arena owned by this process and served to its children (DataLoader workers).

    Without a host daemon the process that opens a client owns the L1: the workers it
    forks attach through the socket and share one copy of every chunk with it.
    """

    def __init__(self, capacity: int, policy: str) -> None:
        self.owner = ArenaOwner(capacity, policy)
        self.socket_path = os.path.join(socket_dir(), f"{self.owner.segment.name}.sock")
        self.server = OwnerServer(self.owner, self.socket_path)

    def close(self) -> None:
        self.server.close()
        self.owner.close()
