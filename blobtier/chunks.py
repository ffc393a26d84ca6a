"""The seams between tiers: chunk keys, caches, sources and chunk stores.

Every tier speaks in chunks keyed by ``ChunkKey(blob_id, version, index)``. Because a
committed version never changes, a cached chunk is valid forever; tiers only evict.

- ``ChunkCache``: a cache tier (in-process L1, shared-memory L1, L2 peers, L3 flash).
  A miss is an absent key in the answer, never an exception; a tier that cannot answer
  raises ``TierUnavailable`` and the chain treats it as a miss.
- ``ChunkSource``: the bottom of the chain (the block layer, or an origin object store).
  It returns verified bytes or raises: ``BlobNotFound``, ``ChecksumError``,
  ``TierUnavailable``.
- ``ChunkStore``: one chunk server's storage (local volumes, or a gRPC chunk server).
  Replication and placement live above it, in the block store.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

import xxhash

if TYPE_CHECKING:
    from blobtier.metadata.schema import BlobRecord

Buffer = bytes | bytearray | memoryview


class ChunkKey(NamedTuple):
    blob_id: bytes
    version: int
    index: int

    def digest(self) -> bytes:
        """16-byte name of the chunk on disk and on the wire; never derived from a user key."""
        return xxhash.xxh3_128_digest(self.blob_id + self.version.to_bytes(8, "little")
                                      + self.index.to_bytes(4, "little"))

    def __str__(self) -> str:
        return f"{self.blob_id.hex()}@{self.version}#{self.index}"


ChunkRef = tuple["BlobRecord", int]
"""A chunk to read: its blob's record and the chunk index."""


@runtime_checkable
class ChunkCache(Protocol):
    """A cache tier. Implementations must be safe to call from several threads."""

    name: str
    trusted: bool
    """True when bytes cannot change between put and get (local memory): the chain then
    skips re-verifying hits. Remote and on-disk tiers are not trusted."""

    def get_many(self, keys: Sequence[ChunkKey], touch: bool = True) -> dict[ChunkKey, memoryview]:
        """The chunks this tier holds, as read-only views; absent keys are misses.
        ``touch=False``: a read ahead of the reader, not a use for the eviction policy."""
        ...

    def put(self, key: ChunkKey, data: Buffer, touch: bool = True) -> None:
        """Offer a verified chunk; the tier may decline it (admission)."""
        ...

    # Optional, for tiers shared by several processes (the host L1):
    #   claim([(key, size)]) -> (claimed, busy): reserve slots before reading below; a
    #       busy key is being filled elsewhere, and get_many waits for it.
    #   unclaim(keys): give back claims that will not be filled.
    #   namespaced = True: claim items are (key, size, namespace) and put takes
    #       namespace=, so the tier applies that namespace's eviction policy.
    # Optional, for tiers that read misses through from the block layer themselves (L3
    # flash nodes, whose single flight turns many readers' misses into one block read):
    #   read_through = True: the chain calls get_many(keys, touch=..., refs=[(record,
    #       index) for each key]) and the tier may answer with chunks it fetched below. A
    #       tier that fails raises TierUnavailable and the chain reads the source itself.
    # Optional, for untrusted tiers that cannot check every chunk they serve themselves:
    #   report_corrupt(keys): these chunks failed their checksum in the chain; forget them.
    # Optional, for trusted tiers whose memory other processes can write (the host L1):
    #   verify_rate = r: the chain checks this share (0..1) of hits against the record,
    #       and reports a corrupt one with report_corrupt.
    #   checks_fills = True: put takes checksum=(algorithm, value) from the record, so
    #       the tier can check the bytes it publishes.

    def contains(self, key: ChunkKey) -> bool: ...

    def close(self) -> None: ...


@runtime_checkable
class ChunkSource(Protocol):
    """Where chunks come from when every cache tier missed."""

    def read_many(self, refs: Sequence[ChunkRef]) -> list[memoryview]:
        """Verified bytes of each chunk, in order, or raise for the first that has no good copy."""
        ...


@runtime_checkable
class BlockStore(ChunkSource, Protocol):
    """A replicated block layer: what the writer needs on top of reading."""

    def write_chunks(self, chunks: Sequence[tuple[ChunkKey, Buffer, int]]) -> list[tuple[int, ...]]:
        """Store (key, bytes, xxh3) durably on every replica; return each chunk's placement."""
        ...

    def delete_chunks(self, placed: Iterable[tuple[ChunkKey, Sequence[int]]]) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class ChunkStore(Protocol):
    """One chunk server's storage, addressed by ``ChunkKey.digest()``."""

    def put_many(self, items: Sequence[tuple[bytes, Buffer, int]]) -> None:
        """Store (digest, bytes, xxh3) items; durable when this returns."""
        ...

    def get(self, digest: bytes, offset: int = 0, length: int = -1) -> memoryview:
        """Bytes of a stored chunk (a range of it); ``BlobNotFound`` if absent."""
        ...

    def delete_many(self, digests: Iterable[bytes]) -> None: ...

    def exists(self, digest: bytes) -> bool: ...

    def digests(self) -> list[tuple[bytes, int]]:
        """(digest, unix seconds written) of every stored chunk, for garbage collection."""
        ...

    def close(self) -> None: ...
