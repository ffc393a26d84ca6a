"""The contract every ``ChunkStore`` passes (``blobtier.chunks``): one chunk server's
storage, addressed by digest.

A store's test module subclasses ``ChunkStoreContract`` and provides a ``store`` fixture, a
fresh, empty and writable store, and the hooks:

- ``fail(store)``: make the backend fail (the server gone, the store closed);
- ``stored(store)``: (chunks, bytes) the backend holds, as it counts them;

and the class attribute ``max_chunk``: the largest chunk the store takes (one byte more
is refused with ``InvalidRequest`` when ``refuses_over_max``).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from blobtier.checksum import xxh3
from blobtier.chunks import ChunkStore
from blobtier.errors import BlobNotFound, ChecksumError, InvalidRequest, OutOfRange, TierUnavailable


def new_digest() -> bytes:
    return os.urandom(16)


def item(data: bytes, digest: bytes | None = None) -> tuple[bytes, bytes, int]:
    return digest or new_digest(), data, xxh3(data)


class ChunkStoreContract:
    max_chunk = 64 << 20
    refuses_over_max = True

    def fail(self, store: ChunkStore) -> None:
        raise NotImplementedError

    def stored(self, store: ChunkStore) -> tuple[int, int]:
        raise NotImplementedError

    def test_is_a_chunk_store(self, store):
        assert isinstance(store, ChunkStore)

    @pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, (1 << 20) + 1])
    def test_a_chunk_put_comes_back_whole_and_read_only(self, store, size):
        digest, data, h = item(os.urandom(size))
        store.put_many([(digest, data, h)])
        got = store.get(digest)
        assert bytes(got) == data and isinstance(got, memoryview) and got.readonly
        assert store.exists(digest)

    def test_the_largest_chunk_and_one_byte_more(self, store):
        digest, data, h = item(os.urandom(self.max_chunk))
        store.put_many([(digest, data, h)])
        assert bytes(store.get(digest, self.max_chunk - 10)) == data[-10:]
        del data
        if self.refuses_over_max:
            over = item(os.urandom(self.max_chunk + 1))
            with pytest.raises(InvalidRequest):
                store.put_many([over])
            assert not store.exists(over[0])

    def test_ranges(self, store):
        digest, data, h = item(os.urandom(100_000))
        store.put_many([(digest, data, h)])
        n = len(data)
        for offset, length in [(0, 0), (0, 1), (n - 1, 1), (n // 3, n // 3), (n, 0), (0, n)]:
            assert bytes(store.get(digest, offset, length)) == data[offset:offset + length]
        assert bytes(store.get(digest, n // 2)) == data[n // 2:]  # to the end
        for offset, length in [(n + 1, -1), (0, n + 1), (n - 5, 6), (-1, 1)]:
            with pytest.raises(OutOfRange):
                store.get(digest, offset, length)

    def test_a_chunk_never_put_is_blob_not_found(self, store):
        digest = new_digest()
        with pytest.raises(BlobNotFound):
            store.get(digest)
        assert store.exists(digest) is False

    def test_many_chunks_in_one_put(self, store):
        items = [item(os.urandom(1000 * i)) for i in range(1, 20)]
        store.put_many(items)
        assert all(bytes(store.get(d)) == data for d, data, _ in items)

    def test_delete_forgets_and_absent_chunks_are_skipped(self, store):
        keep, gone = item(os.urandom(5000)), item(os.urandom(6000))
        store.put_many([keep, gone])
        store.delete_many([gone[0], new_digest()])
        with pytest.raises(BlobNotFound):
            store.get(gone[0])
        assert not store.exists(gone[0]) and bytes(store.get(keep[0])) == keep[1]
        assert [d for d, _ in store.digests()] == [keep[0]]

    def test_digests_name_every_chunk_with_when_it_was_written(self, store):
        before = int(time.time())
        items = [item(os.urandom(100 + i)) for i in range(5)]
        store.put_many(items)
        listed = dict(store.digests())
        assert set(listed) == {d for d, _, _ in items}
        assert all(before - 1 <= w <= time.time() + 1 for w in listed.values())

    def test_a_chunk_whose_bytes_do_not_match_its_xxh3_is_refused(self, store):
        good = item(os.urandom(4000))
        digest, data, h = item(os.urandom(4000))
        with pytest.raises(ChecksumError):
            store.put_many([good, (digest, data, h ^ 1)])
        assert not store.exists(digest)
        assert not store.exists(good[0])  # nothing of a refused batch is stored

    def test_threads_share_it(self, store):
        def work(i: int) -> bool:
            mine = [item(os.urandom(300 + i * 17 + j)) for j in range(5)]
            store.put_many(mine)
            return all(bytes(store.get(d)) == data for d, data, _ in mine)

        with ThreadPoolExecutor(4) as pool:
            assert all(pool.map(work, range(8)))

    def test_a_failing_backend_raises_tier_unavailable(self, store):
        digest, data, h = item(os.urandom(2000))
        store.put_many([(digest, data, h)])
        self.fail(store)
        for call in (lambda: store.get(digest), lambda: store.put_many([item(b"x")]),
                     lambda: store.exists(digest), store.digests):
            with pytest.raises(TierUnavailable):
                call()

    def test_what_it_holds_is_counted_honestly(self, store):
        a, b, c = item(os.urandom(1000)), item(os.urandom(2000)), item(os.urandom(3000))
        store.put_many([a, b, c])
        store.put_many([a])  # the same chunk again: still one chunk
        store.delete_many([c[0]])
        assert self.stored(store) == (2, 3000)
