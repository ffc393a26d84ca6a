"""``RoutingSource``: the bottom of the tier chain when some blobs live in an origin store.

A record registered by reference (``origin`` set, no placement) is read from its origin
object through ``FsspecOrigin``; every other record from the block store. Writes, deletes
and the list of chunk servers (for ``gc``) go to the block store: origin objects are never
written or deleted by blobtier.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from blobtier.blockstore_sim.replicated import ReplicatedBlockStore
from blobtier.chunks import Buffer, ChunkKey, ChunkRef, ChunkSource, ChunkStore


class RoutingSource:
    """A ``BlockStore`` that also reads origin-backed blobs.

    Args:
        blocks: the block layer.
        origin: the source of origin-backed records; an ``FsspecOrigin`` is made on the
            first such read when none is given (so fsspec filesystems are only built
            by processes that need them).
    """

    def __init__(self, blocks: ReplicatedBlockStore, origin: ChunkSource | None = None) -> None:
        self.blocks = blocks
        self._origin = origin

    @property
    def servers(self) -> Mapping[int, ChunkStore]:
        return self.blocks.servers

    @property
    def origin(self) -> ChunkSource:
        if self._origin is None:
            from blobtier.blockstore_sim.origin import FsspecOrigin

            self._origin = FsspecOrigin()
        return self._origin

    def read_many(self, refs: Sequence[ChunkRef]) -> list[memoryview]:
        from_origin = [i for i, (rec, _) in enumerate(refs) if rec.origin]
        if not from_origin:
            return self.blocks.read_many(refs)
        if len(from_origin) == len(refs):
            return self.origin.read_many(refs)
        out: list[memoryview | None] = [None] * len(refs)
        marked = set(from_origin)
        rest = [i for i in range(len(refs)) if i not in marked]
        for positions, source in ((from_origin, self.origin), (rest, self.blocks)):
            for i, view in zip(positions, source.read_many([refs[i] for i in positions])):
                out[i] = view
        return out  # type: ignore[return-value]

    def write_chunks(self, chunks: Sequence[tuple[ChunkKey, Buffer, int]]) -> list[tuple[int, ...]]:
        return self.blocks.write_chunks(chunks)

    def delete_chunks(self, placed: Iterable[tuple[ChunkKey, Sequence[int]]]) -> None:
        self.blocks.delete_chunks(placed)

    def close(self) -> None:
        if self._origin is not None:
            self._origin.close()
        self.blocks.close()
