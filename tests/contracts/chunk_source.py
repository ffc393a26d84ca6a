"""The contract every ``ChunkSource`` passes (``blobtier.chunks``): the bottom of the chain
returns verified bytes or raises, never wrong bytes.

A source's test module subclasses ``ChunkSourceContract`` and provides a ``source``
fixture and the hooks:

- ``store(source, data, chunk)``: put a blob of ``data`` in chunks of ``chunk`` bytes where
  the source reads it; returns its record;
- ``damage(source, rec, index, copies)``: flip a byte of chunk ``index`` in the first
  ``copies`` of its copies, in the order the source reads them;
- ``forget(source, rec)``: remove every copy of the blob;
- ``fail(source)``: make the backend fail (its servers gone);
- ``counts(source)``: ``{"errors": n, "corrupt": n}`` as the source counts them (default:
  it keeps no counts);

and the class attributes ``copies`` (of each chunk) and ``max_chunk`` (the largest chunk
tested).
"""

from __future__ import annotations

import os
import random

import pytest

from blobtier.chunks import ChunkSource
from blobtier.errors import BlobNotFound, ChecksumError, TierUnavailable
from blobtier.metadata.schema import BlobRecord

CHUNK = 64 << 10


def chunks_of(rec: BlobRecord, data: bytes) -> list[bytes]:
    return [data[s:s + n] for s, n in (rec.chunk_range(i) for i in range(rec.n_chunks))]


class ChunkSourceContract:
    copies = 1
    max_chunk = 4 << 20

    def store(self, source: ChunkSource, data: bytes, chunk: int) -> BlobRecord:
        raise NotImplementedError

    def damage(self, source: ChunkSource, rec: BlobRecord, index: int, copies: int) -> None:
        raise NotImplementedError

    def forget(self, source: ChunkSource, rec: BlobRecord) -> None:
        raise NotImplementedError

    def fail(self, source: ChunkSource) -> None:
        raise NotImplementedError

    def counts(self, source: ChunkSource) -> dict[str, int] | None:
        return None

    def read(self, source: ChunkSource, rec: BlobRecord) -> list[bytes]:
        return [bytes(v) for v in source.read_many([(rec, i) for i in range(rec.n_chunks)])]

    # -- reading -----------------------------------------------------------------------------
    def test_is_a_chunk_source(self, source):
        assert isinstance(source, ChunkSource)

    def test_an_empty_batch_reads_nothing(self, source):
        assert source.read_many([]) == []

    def test_each_chunk_comes_back_in_the_order_asked(self, source):
        a, b = os.urandom(3 * CHUNK + 100), os.urandom(2 * CHUNK)
        ra, rb = self.store(source, a, CHUNK), self.store(source, b, CHUNK)
        refs = [(ra, i) for i in range(ra.n_chunks)] + [(rb, i) for i in range(rb.n_chunks)]
        refs += refs[:2]  # a chunk asked twice in one batch
        random.Random(7).shuffle(refs)
        want = {(id(ra), i): c for i, c in enumerate(chunks_of(ra, a))}
        want |= {(id(rb), i): c for i, c in enumerate(chunks_of(rb, b))}
        views = source.read_many(refs)
        assert [bytes(v) for v in views] == [want[(id(r), i)] for r, i in refs]
        assert all(isinstance(v, memoryview) and v.readonly for v in views)

    @pytest.mark.parametrize("size", [1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 4095])
    def test_sizes_around_the_chunk_boundary(self, source, size):
        data = os.urandom(size)
        rec = self.store(source, data, CHUNK)
        assert self.read(source, rec) == chunks_of(rec, data)

    def test_the_largest_chunk(self, source):
        data = os.urandom(self.max_chunk + 1)  # one chunk of the largest size, and one byte
        rec = self.store(source, data, self.max_chunk)
        assert self.read(source, rec) == [data[:-1], data[-1:]]

    # -- what is not there, damaged or unreachable ------------------------------------------------
    def test_a_chunk_nobody_holds_is_blob_not_found(self, source):
        rec = self.store(source, os.urandom(2 * CHUNK), CHUNK)
        self.forget(source, rec)
        with pytest.raises(BlobNotFound):
            source.read_many([(rec, 1)])

    def test_a_chunk_damaged_everywhere_is_never_returned(self, source):
        data = os.urandom(2 * CHUNK)
        rec = self.store(source, data, CHUNK)
        before = self.counts(source)
        self.damage(source, rec, 1, self.copies)
        with pytest.raises(ChecksumError):
            source.read_many([(rec, 1)])
        if before is not None:
            assert self.counts(source)["corrupt"] - before["corrupt"] == self.copies

    def test_one_damaged_copy_is_read_around_and_counted(self, source):
        if self.copies < 2:
            pytest.skip("one copy of each chunk")
        data = os.urandom(2 * CHUNK)
        rec = self.store(source, data, CHUNK)
        before = self.counts(source)
        self.damage(source, rec, 0, 1)
        assert bytes(source.read_many([(rec, 0)])[0]) == data[:CHUNK]
        if before is not None:
            after = self.counts(source)
            assert (after["corrupt"] - before["corrupt"], after["errors"] - before["errors"]) == (1, 0)

    def test_a_failing_backend_raises_tier_unavailable(self, source):
        rec = self.store(source, os.urandom(CHUNK), CHUNK)
        self.fail(source)
        with pytest.raises(TierUnavailable):
            source.read_many([(rec, 0)])

    def test_good_reads_count_no_error(self, source):
        before = self.counts(source)
        if before is None:
            pytest.skip("the source keeps no counters")
        data = os.urandom(3 * CHUNK)
        rec = self.store(source, data, CHUNK)
        assert self.read(source, rec) == chunks_of(rec, data)
        assert self.counts(source) == before
