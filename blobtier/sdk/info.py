"""``BlobInfo``: what ``stat`` and ``ls`` tell a user about one committed blob."""

from __future__ import annotations

import datetime as dt
import struct
from dataclasses import dataclass, field

import xxhash

from blobtier.metadata.schema import BlobRecord


@dataclass(frozen=True)
class BlobInfo:
    key: str
    size: int
    version: int
    created: dt.datetime
    chunk_size: int
    chunks: int
    checksum: str
    """A fingerprint of this version's content: the hash of its per-chunk checksums."""
    attrs: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_record(cls, key: str, rec: BlobRecord) -> BlobInfo:
        sums = struct.pack(f"<{rec.n_chunks}Q", *rec.checksums)
        return cls(key=key, size=rec.size, version=rec.version,
                   created=dt.datetime.fromtimestamp(rec.created_ns / 1e9, dt.UTC),
                   chunk_size=rec.chunk_size, chunks=rec.n_chunks,
                   checksum=f"{rec.checksum_algo}-{xxhash.xxh3_64_hexdigest(sums)}",
                   attrs=dict(rec.attrs))
