"""A host daemon reading the chunks homed at it (``cache_l1_l2/peers.py`` ``HomeFill``):
however many peers ask for a chunk at once, its source is read once; the bytes go into the
arena and to every asker; a failure reaches every waiter; an origin's record is never read."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from blobtier.cache_l1_l2.owner import ArenaOwner
from blobtier.cache_l1_l2.peers import ArenaPeerCache, HomeFill
from blobtier.checksum import xxh3
from blobtier.errors import TierUnavailable
from blobtier.records import BlobRecord
from blobtier.rpc.cache_service import FAILED, FILLED, HIT, MISS

CHUNK = 64 << 10


class SlowSource:
    """A ChunkSource that counts its reads per chunk and takes a while (so that the askers
    overlap), or fails."""

    def __init__(self, data: bytes, fail: bool = False) -> None:
        self.data, self.fail = data, fail
        self.reads: dict[int, int] = {}
        self.lock = threading.Lock()

    def read_many(self, refs):
        time.sleep(0.2)
        with self.lock:
            for _, index in refs:
                self.reads[index] = self.reads.get(index, 0) + 1
        if self.fail:
            raise TierUnavailable("the block layer is down")
        return [memoryview(self.data[i * CHUNK:(i + 1) * CHUNK]) for _, i in refs]

    def close(self) -> None:
        pass


@pytest.fixture
def parts():
    data = os.urandom(4 * CHUNK)
    rec = BlobRecord(os.urandom(16), 1, len(data), CHUNK,
                     [xxh3(data[i:i + CHUNK]) for i in range(0, len(data), CHUNK)], [(0,)] * 4)
    owner = ArenaOwner(16 << 20)
    cache = ArenaPeerCache(owner)
    yield data, rec, owner, cache
    cache.close()
    owner.close()


def test_peers_asking_at_once_read_each_chunk_from_below_once(parts):
    data, rec, owner, cache = parts
    source = SlowSource(data)
    fill = HomeFill(cache, source)
    refs = [(rec, i) for i in range(4)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: fill.fill(refs), range(8)))
    assert source.reads == {0: 1, 1: 1, 2: 1, 3: 1}
    for batch in answers:
        assert [bytes(a.data) for a in batch] == [data[i * CHUNK:(i + 1) * CHUNK] for i in range(4)]
        assert {a.outcome for a in batch} <= {FILLED, HIT}
    assert sum(a.outcome == FILLED for batch in answers for a in batch) == 4  # one filler per chunk
    assert owner.stats()["chunks"] == 4  # kept in the arena: the next ask is a hit
    assert bytes(cache.get(rec.chunk_key(2))) == data[2 * CHUNK:3 * CHUNK]


def test_a_failed_read_fails_every_waiter_and_holds_no_claim(parts):
    data, rec, owner, cache = parts
    fill = HomeFill(cache, SlowSource(data, fail=True))
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: fill.fill([(rec, 0), (rec, 1)]), range(4)))
    assert all(a.outcome == FAILED for batch in answers for a in batch)
    assert owner.stats()["chunks"] == 0 and not owner.check()
    good = HomeFill(cache, SlowSource(data))  # nothing left claimed: a later fill succeeds
    assert [a.outcome for a in good.fill([(rec, 0)])] == [FILLED]


def test_a_record_naming_an_origin_is_never_read(parts):
    data, rec, _, cache = parts
    source = SlowSource(data)
    origin = BlobRecord(rec.blob_id, 2, CHUNK, CHUNK, [xxh3(data[:CHUNK])], origin="file:///etc/shadow\ntag")
    assert [a.outcome for a in HomeFill(cache, source).fill([(origin, 0)])] == [MISS]
    assert source.reads == {}
