"""Test helpers for the flash tier: chunks with records, and an in-memory block layer."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence

from blobtier.checksum import xxh3
from blobtier.chunks import ChunkKey, ChunkRef
from blobtier.errors import BlobNotFound
from blobtier.metadata.schema import BlobRecord, new_blob_id


def blob(size: int, chunk: int = 64 * 1024, seed: bytes | None = None) -> tuple[BlobRecord, bytes]:
    """A record of a ``size``-byte blob in chunks of ``chunk`` bytes, and its bytes."""
    data = seed * (size // len(seed) + 1) if seed else os.urandom(size)
    data = data[:size]
    parts = [data[i:i + chunk] for i in range(0, size, chunk)]
    return BlobRecord(new_blob_id(), 1, size, chunk, [xxh3(p) for p in parts], [(0,)] * len(parts)), data


def chunk_of(rec: BlobRecord, data: bytes, index: int) -> bytes:
    start, length = rec.chunk_range(index)
    return data[start:start + length]


def keys_and_data(n: int, size: int = 50_000) -> dict[ChunkKey, bytes]:
    return {ChunkKey(new_blob_id(), 1, 0): os.urandom(size) for _ in range(n)}


class MemorySource:
    """A ``ChunkSource`` over blobs held in memory; counts every chunk it serves.

    ``gate``: when set, reads wait for it (so a test can hold a fill in flight).
    ``broken``: chunk keys whose reads fail; ``corrupt``: keys served with a flipped byte.
    """

    def __init__(self) -> None:
        self.blobs: dict[bytes, bytes] = {}
        self.reads: dict[ChunkKey, int] = {}
        self.calls = 0
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.broken: set[ChunkKey] = set()
        self.corrupt: set[ChunkKey] = set()
        self._lock = threading.Lock()

    def add(self, size: int, chunk: int = 64 * 1024) -> tuple[BlobRecord, bytes]:
        rec, data = blob(size, chunk)
        self.blobs[rec.blob_id] = data
        return rec, data

    def read_many(self, refs: Sequence[ChunkRef]) -> list[memoryview]:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(30)
        out = []
        with self._lock:
            self.calls += 1
            for rec, index in refs:
                key = rec.chunk_key(index)
                if key in self.broken or rec.blob_id not in self.blobs:
                    raise BlobNotFound(f"chunk {key}: no replica holds it")
                self.reads[key] = self.reads.get(key, 0) + 1
                part = bytearray(chunk_of(rec, self.blobs[rec.blob_id], index))
                if key in self.corrupt:
                    part[0] ^= 1
                out.append(memoryview(bytes(part)))
        return out

    def total_reads(self) -> int:
        return sum(self.reads.values())

    def close(self) -> None:
        pass


def eventually(check: Callable[[], bool], timeout_s: float = 20.0) -> None:
    """Wait until ``check()`` holds (a guard against hanging, not a timing assertion)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition never held"
        threading.Event().wait(0.005)
