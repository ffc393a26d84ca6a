"""The in-memory index: chunk digest -> where its entry lives in which region generation.

Keys are ``ChunkKey.digest()`` (16 bytes), which keeps an index entry small; the full key is
in the entry's header on disk and every read compares it, so a digest collision could only
ever cost a miss. An entry names the region's generation (``seq``) it was written in: when
a region is reclaimed its entries are removed here first, and a read that raced with the
reclaim sees another generation in the header and reports a miss.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

MAX_HITS = 255  # hits are counted for reinsertion, which only asks "at least N"


class Entry:
    __slots__ = ("slot", "seq", "offset", "length", "xxh3", "hits")

    def __init__(self, slot: int, seq: int, offset: int, length: int, xxh3: int, hits: int = 0) -> None:
        self.slot = slot
        self.seq = seq
        self.offset = offset
        self.length = length
        self.xxh3 = xxh3
        self.hits = hits

    def __repr__(self) -> str:
        return (f"Entry(slot={self.slot}, seq={self.seq}, offset={self.offset}, "
                f"length={self.length}, hits={self.hits})")


class Index:
    """Not thread-safe: the cache calls it under its lock."""

    def __init__(self) -> None:
        self._map: dict[bytes, Entry] = {}
        self.bytes = 0  # data bytes of every indexed entry
        # The namespace of entries filed under one (per-namespace shares, ``cache.py``);
        # not persisted: entries recovered after a restart are of no namespace.
        self._ns: dict[bytes, str] = {}
        self.ns_bytes: Counter[str] = Counter()

    def namespace(self, digest: bytes) -> str:
        return self._ns.get(digest, "")

    def _forget_ns(self, digest: bytes, entry: Entry) -> None:
        ns = self._ns.pop(digest, None)
        if ns is not None:
            self.ns_bytes[ns] -= entry.length
            if not self.ns_bytes[ns]:
                del self.ns_bytes[ns]

    def get(self, digest: bytes) -> Entry | None:
        return self._map.get(digest)

    def touch(self, digest: bytes) -> Entry | None:
        entry = self._map.get(digest)
        if entry is not None and entry.hits < MAX_HITS:
            entry.hits += 1
        return entry

    def insert(self, digest: bytes, entry: Entry, namespace: str = "") -> None:
        old = self._map.get(digest)
        if old is not None:
            self.bytes -= old.length
            self._forget_ns(digest, old)
        self._map[digest] = entry
        self.bytes += entry.length
        if namespace:
            self._ns[digest] = namespace
            self.ns_bytes[namespace] += entry.length

    def remove(self, digest: bytes, expect: Entry | None = None) -> bool:
        """Remove ``digest`` (only if it still maps to ``expect``, when given)."""
        entry = self._map.get(digest)
        if entry is None or (expect is not None and entry is not expect):
            return False
        del self._map[digest]
        self.bytes -= entry.length
        self._forget_ns(digest, entry)
        return True

    def evict(self, digests: list[bytes], slot: int, seq: int) -> list[tuple[bytes, Entry]]:
        """Remove the entries of ``digests`` that live in region ``slot`` generation ``seq``."""
        gone = []
        for digest in digests:
            entry = self._map.get(digest)
            if entry is not None and entry.slot == slot and entry.seq == seq:
                del self._map[digest]
                self.bytes -= entry.length
                self._forget_ns(digest, entry)
                gone.append((digest, entry))
        return gone

    def clear(self) -> None:
        self._map.clear()
        self.bytes = 0
        self._ns.clear()
        self.ns_bytes.clear()

    def items(self) -> Iterator[tuple[bytes, Entry]]:
        return iter(list(self._map.items()))

    def __len__(self) -> int:
        return len(self._map)

    def __contains__(self, digest: bytes) -> bool:
        return digest in self._map
