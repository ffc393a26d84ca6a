"""The in-process L1: what the SDK uses when no host daemon runs (a laptop, CI).

Holds read-only views of verified chunks up to a byte budget. Handing out a view never
copies; evicting only drops the cache's reference, so a view a reader still holds stays
valid (Python's reference counting is the pin).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from blobtier.chunks import Buffer, ChunkKey
from blobtier.eviction import make_policy


class LocalL1Cache:
    """A ``ChunkCache`` in this process's memory, bounded in bytes.

    Args:
        capacity: byte budget; a chunk larger than it is never cached.
        policy: eviction policy name (``blobtier.eviction.POLICIES``).
    """

    name = "l1"
    trusted = True

    def __init__(self, capacity: int, policy: str = "sieve") -> None:
        self.capacity = capacity
        self.used = 0
        self.evictions = 0
        self.rejections = 0
        self._policy = make_policy(policy)
        self._chunks: dict[ChunkKey, memoryview] = {}
        self._lock = threading.Lock()

    def get_many(self, keys: Sequence[ChunkKey]) -> dict[ChunkKey, memoryview]:
        found = {}
        with self._lock:
            for key in keys:
                view = self._chunks.get(key)
                if view is not None:
                    self._policy.hit(key)
                    found[key] = view
        return found

    def put(self, key: ChunkKey, data: Buffer) -> None:
        size = len(data)
        if size > self.capacity:
            return
        with self._lock:
            if key in self._chunks:
                return
            full = self.used + size > self.capacity
            if not self._policy.admit(key, full):
                self.rejections += 1
                return
            while self.used + size > self.capacity:
                victim = self._policy.victim()
                if victim is None:
                    return
                self.used -= len(self._chunks.pop(victim))
                self.evictions += 1
            self._chunks[key] = memoryview(data).toreadonly()
            self._policy.insert(key)
            self.used += size

    def contains(self, key: ChunkKey) -> bool:
        return key in self._chunks

    def __len__(self) -> int:
        return len(self._chunks)

    def close(self) -> None:
        with self._lock:
            self._chunks.clear()
            self.used = 0
