"""The seams between tiers: chunk keys, caches, sources and chunk stores.

Every tier speaks in chunks keyed by ``ChunkKey(blob_id, version, index)``. Because a
committed version never changes, a cached chunk is valid forever; tiers only evict.

- ``ChunkCache``: a cache tier (in-process L1, shared-memory L1, L2 peers, L3 flash).
  A miss is an absent key in the answer, never an exception; a tier that cannot answer
  raises ``TierUnavailable`` and the chain treats it as a miss. What a tier can do beyond
  that is a protocol of its own, which the chain finds by ``isinstance`` once:
  ``ReadThroughCache`` (reads its misses from below; answers a ``Lookup``),
  ``ClaimingCache`` (shared by processes: claim before reading below), ``RecordedFills``
  (fills name the namespace and checksum), ``ReportsCorrupt``, ``SampledVerify``.
- ``ChunkSource``: the bottom of the chain (the block layer, or an origin object store).
  It returns verified bytes or raises: ``BlobNotFound``, ``ChecksumError``,
  ``TierUnavailable``.
- ``ChunkStore``: one chunk server's storage (local volumes, or a gRPC chunk server).
  Replication and placement live above it, in the block store.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

from blobtier.records import ChunkKey

if TYPE_CHECKING:
    from blobtier.records import BlobRecord

Buffer = bytes | bytearray | memoryview


ChunkRef = tuple["BlobRecord", int]
"""A chunk to read: its blob's record and the chunk index."""


Claim = tuple[ChunkKey, int, str]
"""(key, size in bytes, namespace) of a chunk to claim. The namespace is its blob key's
first segment: that namespace's eviction policy rules the chunk ("" for the default)."""


class LocatedEntry(NamedTuple):
    """A chunk's entry in a cache node's region files, as the node located it (for a
    client on its host to read itself), and when ``checksum`` is set the (algorithm,
    value) its data must hash to."""

    key: ChunkKey
    slot: int
    offset: int
    length: int
    seq: int
    checksum: tuple[str, int] | None = None


CORRUPT = type("Corrupt", (), {"__repr__": lambda self: "CORRUPT"})()
"""A local read's answer for an entry whose data fails its checksum."""


@dataclass(slots=True)
class Lookup:
    """One tier's answer to a batch: what it found, and what the chain must know of it.

    Attributes:
        found: the chunks the tier answered with, as read-only views.
        filled: the keys of ``found`` the tier read through from below for this call:
            misses of the tier, though it served them.
        verified: the keys of ``found`` the tier checked against their records itself;
            the chain does not check them again.
        corrupt: chunks that failed that check in the tier (they are not in ``found``).
    """

    found: dict[ChunkKey, memoryview] = field(default_factory=dict)
    filled: set[ChunkKey] = field(default_factory=set)
    verified: set[ChunkKey] = field(default_factory=set)
    corrupt: int = 0

    def merge(self, other: Lookup) -> None:
        """Add ``other``'s answer (another part of the same batch) to this one."""
        self.found.update(other.found)
        self.filled |= other.filled
        self.verified |= other.verified
        self.corrupt += other.corrupt


@runtime_checkable
class ChunkCache(Protocol):
    """A cache tier. Implementations must be safe to call from several threads.

    The capabilities below are optional; a tier has one when it has its methods, and the
    chain looks once, when it is built (``TierChain``).
    """

    name: str
    trusted: bool
    """True when bytes cannot change between put and get (local memory): the chain then
    skips re-verifying hits (but see ``SampledVerify``). Remote and on-disk tiers are not."""

    def get_many(self, keys: Sequence[ChunkKey], touch: bool = True) -> dict[ChunkKey, memoryview]:
        """The chunks this tier holds, as read-only views; absent keys are misses.
        ``touch=False``: a read ahead of the reader, not a use for the eviction policy.
        Raises ``TierUnavailable`` (or another ``OSError``) when the tier cannot answer."""
        ...

    def put(self, key: ChunkKey, data: Buffer, touch: bool = True) -> bool:
        """Offer a verified chunk; True if the tier holds it now, or a fill of it by
        another reader is under way (it may decline it: admission, no room). Raises
        ``TierUnavailable`` when the tier cannot be reached."""
        ...

    def contains(self, key: ChunkKey) -> bool: ...

    def close(self) -> None: ...


@runtime_checkable
class ReadThroughCache(ChunkCache, Protocol):
    """A tier that reads its misses from the block layer itself (L3 flash nodes, whose
    single flight turns many readers' misses into one block read)."""

    def read_through(self, keys: Sequence[ChunkKey], refs: Sequence[ChunkRef],
                     touch: bool = True) -> Lookup:
        """``get_many``, where ``refs[i]`` is ``keys[i]``'s (record, index): the tier may
        answer with chunks it fetched below (``Lookup.filled``). A tier that fails raises
        ``TierUnavailable`` and the chain reads the source itself."""
        ...


@runtime_checkable
class ClaimingCache(ChunkCache, Protocol):
    """A tier several processes fill at once (the host L1): the chain claims the slots of
    its misses before it reads below, so each chunk is fetched once per host."""

    def claim(self, items: Sequence[Claim]) -> tuple[set[ChunkKey], set[ChunkKey]]:
        """Reserve slots: (claimed, busy). A busy key is being filled by another reader;
        ``get_many`` of it waits for that fill. A claim is ended by a fill or ``unclaim``."""
        ...

    def unclaim(self, keys: Sequence[ChunkKey]) -> None:
        """Give back claims that will not be filled. Never raises for a tier that is gone
        (its claims went with it)."""
        ...


@runtime_checkable
class RecordedFills(Protocol):
    """A tier whose fills take what it needs of the chunk's record (the host L1)."""

    def fill(self, key: ChunkKey, data: Buffer, *, touch: bool = True, namespace: str = "",
             checksum: tuple[str, int] | None = None) -> bool:
        """``put``, naming the chunk's namespace (whose eviction policy then rules it) and
        its ``(algorithm, value)`` checksum from the record, so that the tier can check
        the bytes it publishes."""
        ...


@runtime_checkable
class ReportsCorrupt(Protocol):
    """A tier that can forget chunks the chain found corrupt (untrusted tiers, and the
    host L1, whose memory other processes can write)."""

    def report_corrupt(self, keys: Sequence[ChunkKey]) -> None:
        """These chunks failed their checksum in the chain: drop them, never serve them
        again. Raises ``TierUnavailable`` if the tier cannot be told."""
        ...


@runtime_checkable
class SampledVerify(Protocol):
    """A trusted tier whose hits the chain still checks, a share of them (the host L1:
    ``cache.verify_l1``); a corrupt one is reported with ``report_corrupt``."""

    verify_rate: float
    """The share (0..1) of hits checked against their record."""


@runtime_checkable
class ChunkSource(Protocol):
    """Where chunks come from when every cache tier missed."""

    def read_many(self, refs: Sequence[ChunkRef]) -> list[memoryview]:
        """Verified bytes of each chunk, in order, or raise for the first that has no good copy."""
        ...

    def close(self) -> None:
        """Release connections and threads."""
        ...


@runtime_checkable
class BlockStore(ChunkSource, Protocol):
    """A replicated block layer: what the writer needs on top of reading."""

    def write_chunks(self, chunks: Sequence[tuple[ChunkKey, Buffer, int]]) -> list[tuple[int, ...]]:
        """Store (key, bytes, xxh3) durably on every replica; return each chunk's placement."""
        ...

    def delete_chunks(self, placed: Iterable[tuple[ChunkKey, Sequence[int]]]) -> None: ...


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
