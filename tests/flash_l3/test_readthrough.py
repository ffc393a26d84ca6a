"""Read-through: misses come from the source once, however many ask at the same time."""

from __future__ import annotations

import threading

import pytest

from blobtier.flash_l3.admission import SecondHit
from blobtier.flash_l3.cache import FlashCache
from blobtier.flash_l3.readthrough import FAILED, FILLED, HIT, ReadThrough
from tests.flash_l3.helpers import MemorySource, chunk_of, eventually


@pytest.fixture
def cache(tmp_path):
    c = FlashCache(str(tmp_path), 8 << 20, region_size=1 << 20)
    yield c
    c.close()


def test_a_miss_is_read_through_once_then_hits(cache):
    source = MemorySource()
    rec, data = source.add(300_000)
    rt = ReadThrough(cache, source)
    refs = [(rec, i) for i in range(rec.n_chunks)]
    first = rt.read(refs)
    assert [a.outcome for a in first] == [FILLED] * rec.n_chunks
    assert b"".join(bytes(a.data) for a in first) == data
    second = rt.read(refs)
    assert [a.outcome for a in second] == [HIT] * rec.n_chunks
    assert source.calls == 1 and source.total_reads() == rec.n_chunks
    assert rt.counters["fills"] == rec.n_chunks


def test_concurrent_requests_for_a_chunk_reach_the_source_once(cache):
    source = MemorySource()
    rec, data = source.add(100_000)
    source.gate = threading.Event()
    fills = []
    rt = ReadThrough(cache, source, on_fill=fills.append)
    results = []

    def reader() -> None:
        results.append(rt.read([(rec, 0), (rec, 1)]))

    first = threading.Thread(target=reader)
    first.start()
    assert source.entered.wait(10)  # the first reader is inside the source, holding the fill
    others = [threading.Thread(target=reader) for _ in range(7)]
    for t in others:
        t.start()
    eventually(lambda: rt.counters["coalesced"] == 14)  # the others wait on the fill in flight
    source.gate.set()
    for t in [first, *others]:
        t.join(30)
    assert source.total_reads() == 2 and source.calls == 1
    assert len(results) == 8
    for answers in results:
        assert [a.outcome for a in answers] == [FILLED, FILLED]
        assert bytes(answers[0].data) + bytes(answers[1].data) == data
    assert len(fills) == 1 and fills[0] >= 0


def test_a_failed_read_fails_its_waiters_and_spares_the_other_chunks(cache):
    source = MemorySource()
    rec, data = source.add(200_000)
    source.broken.add(rec.chunk_key(1))
    rt = ReadThrough(cache, source)
    answers = rt.read([(rec, i) for i in range(rec.n_chunks)])
    assert [a.outcome for a in answers] == [FILLED, FAILED, FILLED, FILLED]
    assert "no replica" in str(answers[1].error)
    assert not cache.contains(rec.chunk_key(1))
    assert bytes(answers[2].data) == chunk_of(rec, data, 2)
    assert rt.counters["fill_failures"] == 1
    assert rt._inflight == {}  # nothing left waiting


def test_bytes_that_fail_the_record_checksum_are_never_cached(cache):
    source = MemorySource()
    rec, _ = source.add(100_000)
    source.corrupt.add(rec.chunk_key(0))
    answers = ReadThrough(cache, source).read([(rec, 0), (rec, 1)])
    assert [a.outcome for a in answers] == [FAILED, FILLED]
    assert "checksum mismatch" in str(answers[0].error)
    assert not cache.contains(rec.chunk_key(0))


def test_a_forced_fill_skips_admission(tmp_path):
    cache = FlashCache(str(tmp_path), 8 << 20, region_size=1 << 20, admission=SecondHit())
    source = MemorySource()
    rec, _ = source.add(100_000)
    rt = ReadThrough(cache, source)
    rt.read([(rec, 0)])
    assert not cache.contains(rec.chunk_key(0))  # a first access is not admitted
    rt.fill([(rec, 1)], force=True)
    assert cache.contains(rec.chunk_key(1))
    cache.close()
