"""TierChain over fake tiers: the order of the tiers, fills on the way back, single flight,
verification, faults as misses, claims given back on every path, and honest counters.

The fakes are dicts that log every call. Each has only the capabilities of
``blobtier.chunks`` it declares by having their methods, as real tiers do: ``FakeL1`` is a
``ClaimingCache``/``RecordedFills``/``ReportsCorrupt``/``SampledVerify`` (the host L1), an
L2 fake a plain untrusted cache that takes corrupt reports, ``FakeReadThrough`` a
``ReadThroughCache`` (an L3 flash node).
"""

from __future__ import annotations

import os
import threading

import pytest

from blobtier import checksum
from blobtier.checksum import xxh3
from blobtier.chunks import (
    ChunkCache,
    ChunkKey,
    ClaimingCache,
    Lookup,
    ReadThroughCache,
    RecordedFills,
    ReportsCorrupt,
    SampledVerify,
)
from blobtier.errors import BlobNotFound, TierUnavailable
from blobtier.metadata.schema import BlobRecord, new_blob_id
from blobtier.metrics import TierStats
from blobtier.sdk.chain import TierChain

CHUNK = 1000


def record(n: int = 4) -> tuple[BlobRecord, list[bytes]]:
    """A blob of ``n`` chunks (the last one short) under namespace ``ns``, and its chunks."""
    data = os.urandom(CHUNK * n - 7)
    parts = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]
    rec = BlobRecord(new_blob_id(), 1, len(data), CHUNK, [xxh3(p) for p in parts])
    rec.key = "ns/blob"
    return rec, parts


def bad(data: bytes) -> bytes:
    return bytes([data[0] ^ 0xFF]) + data[1:]


class FakeCache:
    """A ``ChunkCache`` in a dict; ``down``: every call raises ``error``."""

    def __init__(self, name: str, trusted: bool = False) -> None:
        self.name = name
        self.trusted = trusted
        self.data: dict[ChunkKey, bytes] = {}
        self.calls: list[tuple[str, list[ChunkKey]]] = []
        self.down = False
        self.error: Exception = TierUnavailable(f"{name} is down")

    def _log(self, op: str, keys) -> None:
        self.calls.append((op, list(keys)))
        if self.down:
            raise self.error

    def asked(self, op: str) -> list[list[ChunkKey]]:
        return [keys for name, keys in self.calls if name == op]

    def get_many(self, keys, touch=True):
        self._log("get", keys)
        return {k: memoryview(self.data[k]).toreadonly() for k in keys if k in self.data}

    def put(self, key, data, touch=True):
        self._log("put", [key])
        self.data[key] = bytes(data)
        return True

    def contains(self, key):
        return key in self.data

    def close(self):
        pass


class FakeReporting(FakeCache):
    """An untrusted tier that drops what the chain found corrupt (an L2 of peers)."""

    def report_corrupt(self, keys):
        self._log("report_corrupt", keys)
        for key in keys:
            self.data.pop(key, None)


class FakeReadThrough(FakeReporting):
    """A read-through tier (a flash node): what it misses it reads from ``below``."""

    def __init__(self, name: str, below: dict[ChunkKey, bytes]) -> None:
        super().__init__(name)
        self.below = below
        self.verified: set[ChunkKey] = set()  # keys it says it checked itself

    def read_through(self, keys, refs, touch=True):
        self._log("read_through", keys)
        assert [rec.chunk_key(i) for rec, i in refs] == list(keys)
        out = Lookup()
        for key in keys:
            if key not in self.data and key in self.below:
                self.data[key] = self.below[key]
                out.filled.add(key)
            if key in self.data:
                out.found[key] = memoryview(self.data[key]).toreadonly()
        out.verified = self.verified & out.found.keys()
        return out


class FakeL1(FakeReporting):
    """The host L1: claims, fills that carry namespace and checksum, sampled verification.

    ``elsewhere``: chunks another process is filling: a claim of one is busy, and by the
    time the chain looks again that process has filled it (None: its fill failed).
    """

    def __init__(self, verify_rate: float = 0.0) -> None:
        super().__init__("l1", trusted=True)
        self.verify_rate = verify_rate
        self.claimed: set[ChunkKey] = set()
        self.claims: list[tuple[ChunkKey, int, str]] = []
        self.fills: list[tuple[ChunkKey, str, tuple[str, int] | None]] = []
        self.elsewhere: dict[ChunkKey, bytes | None] = {}

    def claim(self, items):
        self._log("claim", [k for k, _, _ in items])
        self.claims += items
        busy = {k for k, _, _ in items if k in self.elsewhere}
        for key in busy:
            if self.elsewhere[key] is not None:
                self.data[key] = self.elsewhere[key]
        claimed = {k for k, _, _ in items} - busy
        self.claimed |= claimed
        return claimed, busy

    def unclaim(self, keys):
        self._log("unclaim", keys)
        self.claimed -= set(keys)

    def fill(self, key, data, *, touch=True, namespace="", checksum=None):
        self._log("fill", [key])
        self.fills.append((key, namespace, checksum))
        self.claimed.discard(key)
        self.data[key] = bytes(data)
        return True


class FakeSource:
    """The bottom of the chain; ``gate``: a read waits for it; ``error``: reads raise it."""

    def __init__(self, chunks: dict[ChunkKey, bytes]) -> None:
        self.chunks = chunks
        self.reads: list[list[ChunkKey]] = []
        self.error: BaseException | None = None
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.on_read = None

    def read_many(self, refs):
        keys = [rec.chunk_key(i) for rec, i in refs]
        self.reads.append(keys)
        self.entered.set()
        if self.on_read is not None:
            self.on_read()
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.error is not None:
            raise self.error
        return [memoryview(self.chunks[k]).toreadonly() for k in keys]

    def close(self):
        pass


class World:
    """A blob of four chunks over L1, L2, L3 and a source that holds all of them."""

    def __init__(self, verify_rate: float = 0.0) -> None:
        self.rec, self.parts = record(4)
        self.refs = [(self.rec, i) for i in range(4)]
        self.keys = [self.rec.chunk_key(i) for i in range(4)]
        self.l1 = FakeL1(verify_rate)
        self.l2 = FakeReporting("l2")
        self.l3 = FakeReadThrough("l3", below={})
        self.source = FakeSource(dict(zip(self.keys, self.parts)))
        self.stats = TierStats()
        self.chain = TierChain([self.l1, self.l2, self.l3], self.source, self.stats)

    def read(self, indices=range(4)) -> list[bytes]:
        return [bytes(v) for v in self.chain.read([self.refs[i] for i in indices])]

    def settle(self) -> None:
        """Wait for the background fills of untrusted tiers."""
        self.chain.close()


@pytest.fixture
def w():
    world = World()
    yield world
    world.chain.close()


def counts(stats: TierStats, tier: str) -> tuple[int, int, int, int, int]:
    s = stats.snapshot()[tier]
    return s["hits"], s["misses"], s["bytes"], s["errors"], s["corrupt"]


def test_the_fakes_have_exactly_the_capabilities_they_claim(w):
    assert all(isinstance(t, ChunkCache) for t in (w.l1, w.l2, w.l3))
    assert isinstance(w.l1, ClaimingCache) and isinstance(w.l1, RecordedFills)
    assert isinstance(w.l1, SampledVerify) and isinstance(w.l1, ReportsCorrupt)
    assert not isinstance(w.l1, ReadThroughCache)
    assert isinstance(w.l3, ReadThroughCache) and not isinstance(w.l3, ClaimingCache)
    assert not isinstance(w.l2, ReadThroughCache) and not isinstance(w.l2, RecordedFills)


# -- order and fills ---------------------------------------------------------------------------
def test_each_tier_is_asked_only_for_what_the_tiers_above_missed(w):
    k = w.keys
    w.l1.data[k[0]], w.l2.data[k[1]], w.l3.data[k[2]] = w.parts[0], w.parts[1], w.parts[2]
    assert w.read() == w.parts
    assert w.l1.asked("get") == [k]
    assert w.l2.asked("get") == [k[1:]]
    assert w.l3.asked("read_through") == [k[2:]] and w.l3.asked("get") == []
    assert w.source.reads == [[k[3]]]


def test_chunks_fill_every_tier_above_where_they_were_found(w):
    k = w.keys
    w.l1.data[k[0]], w.l2.data[k[1]], w.l3.data[k[2]] = w.parts[0], w.parts[1], w.parts[2]
    w.read()
    # The trusted L1 is filled before the read returns, with the namespace and checksum
    # of each chunk's record; an L1 hit is not filled again.
    assert [f[0] for f in w.l1.fills] == k[1:]
    assert all(ns == "ns" and cs == ("xxh3", w.rec.checksums[key.index]) for key, ns, cs in w.l1.fills)
    assert all(w.l1.data[key] == w.parts[key.index] for key in k)
    w.settle()  # untrusted tiers are filled in the background
    assert sorted(key.index for (key,) in w.l2.asked("put")) == [2, 3]
    assert w.l3.asked("put") == [[k[3]]]
    assert w.l3.data[k[3]] == w.parts[3]


class FakeBatchPuts(FakeCache):
    """An untrusted tier that takes a batch of chunks in one call (a remote node)."""

    def put_many(self, items, touch=True):
        self._log("put_many", [k for k, _ in items])
        self.data.update((k, bytes(v)) for k, v in items)
        return len(items), 0


def test_a_tier_that_takes_batches_is_filled_with_one_call_per_read():
    world = World()
    l3 = FakeBatchPuts("l3")
    chain = TierChain([world.l1, l3], world.source, world.stats)
    assert [bytes(v) for v in chain.read(world.refs)] == world.parts
    chain.close()
    assert l3.asked("put_many") == [world.keys] and l3.asked("put") == []
    assert all(l3.data[k] == p for k, p in zip(world.keys, world.parts))


def test_a_second_read_is_an_l1_hit_and_reaches_nothing_below(w):
    w.read()
    w.settle()
    before = (len(w.l2.calls), len(w.l3.calls), len(w.source.reads))
    assert w.read() == w.parts
    assert (len(w.l2.calls), len(w.l3.calls), len(w.source.reads)) == before


def test_a_read_through_tier_serves_what_it_reads_below_and_counts_it_as_its_miss(w):
    k = w.keys
    w.l3.data[k[2]] = w.parts[2]
    w.l3.below = {k[3]: w.parts[3]}
    assert w.read([2, 3]) == w.parts[2:]
    assert w.source.reads == []
    assert counts(w.stats, "l3") == (1, 1, len(w.parts[2]) + len(w.parts[3]), 0, 0)
    assert counts(w.stats, "origin")[0] == 0


def test_warm_fetches_only_what_the_shared_tier_takes(w):
    k = w.keys
    w.l1.elsewhere[k[1]] = w.parts[1]  # another process is bringing it in

    def refuse_two(items):  # the L1 admits none of chunk 2 (its policy keeps what it has)
        got, busy = FakeL1.claim(w.l1, items)
        w.l1.claimed.discard(k[2])
        return got - {k[2]}, busy

    w.l1.claim = refuse_two
    assert w.chain.warm(w.refs) == 3
    assert sorted(key.index for keys in w.source.reads for key in keys) == [0, 3]
    assert k[2] not in w.l1.data and w.l1.claimed == set()


# -- single flight -----------------------------------------------------------------------------
class _Watched(dict):
    """The chain's in-flight table, telling when a reader found a read to wait for."""

    def __init__(self) -> None:
        super().__init__()
        self.joined = threading.Event()

    def get(self, key, default=None):
        got = super().get(key, default)
        if got is not None:
            self.joined.set()
        return got


def _two_readers(w: World) -> tuple[list, list]:
    """Reader A reaches the source and is held there; reader B then asks for the same
    chunk and finds A's read in flight; only then is A let go."""
    w.source.gate = threading.Event()
    w.chain._inflight = watched = _Watched()
    results: list = [None, None]

    def read(i: int) -> None:
        try:
            results[i] = w.read([0])
        except BaseException as exc:  # noqa: BLE001 - compared by the test
            results[i] = exc

    a = threading.Thread(target=read, args=(0,), daemon=True)  # a hung reader fails, not hangs, the test
    a.start()
    assert w.source.entered.wait(10)
    b = threading.Thread(target=read, args=(1,), daemon=True)
    b.start()
    assert watched.joined.wait(10)
    w.source.gate.set()
    a.join(10)
    b.join(10)
    return results, w.source.reads


def test_concurrent_reads_of_one_chunk_reach_the_source_once():
    w = World()
    w.chain = TierChain([], w.source, w.stats)  # no claims: single flight is the chain's own
    results, reads = _two_readers(w)
    assert results == [[w.parts[0]], [w.parts[0]]]
    assert reads == [[w.keys[0]]]
    assert not w.chain._inflight


def test_a_failed_flight_fails_its_waiters_and_the_next_read_tries_again():
    w = World()
    w.chain = TierChain([], w.source, w.stats)
    w.source.error = BlobNotFound("gone")
    results, reads = _two_readers(w)
    assert all(isinstance(r, BlobNotFound) for r in results) and len(reads) == 1
    assert not w.chain._inflight
    w.source.error, w.source.gate = None, None
    assert w.read([0]) == [w.parts[0]] and len(w.source.reads) == 2


class _Broken(FakeCache):
    """A trusted tier whose fills fail with what no tier should raise (a bug in it)."""

    def put(self, key, data, touch=True):
        raise RuntimeError("a bug in the tier")


def test_a_fill_that_raises_anything_still_hands_the_chunk_to_its_waiters():
    w = World()
    w.chain = TierChain([_Broken("l1", trusted=True)], w.source, w.stats)
    results, reads = _two_readers(w)
    assert isinstance(results[0], RuntimeError)  # the reader whose fill failed hears of it
    assert results[1] == [w.parts[0]] and len(reads) == 1  # the waiter is not left hanging
    assert not w.chain._inflight


def test_a_source_that_answers_short_fails_the_read_and_its_waiters():
    w = World()
    w.chain = TierChain([], w.source, w.stats)
    real = w.source.read_many
    w.source.read_many = lambda refs: real(refs)[:-1]
    results, _ = _two_readers(w)
    assert all(isinstance(r, TierUnavailable) for r in results)
    assert not w.chain._inflight


# -- verification --------------------------------------------------------------------------------
def test_a_corrupt_chunk_from_an_untrusted_tier_is_reported_and_read_from_below(w):
    k = w.keys
    w.l2.data[k[1]] = bad(w.parts[1])
    assert w.read([1]) == [w.parts[1]]
    assert w.l2.asked("report_corrupt") == [[k[1]]]
    assert w.source.reads == [[k[1]]]
    w.settle()
    assert w.l2.data[k[1]] == w.parts[1]  # dropped, then filled again with the good copy
    assert counts(w.stats, "l2") == (0, 1, 0, 0, 1)
    assert w.l1.data[k[1]] == w.parts[1]  # the good copy is what fills the L1


@pytest.mark.parametrize("rate, checked", [(0.0, 0), (1.0, 4)])
def test_trusted_hits_are_checked_at_the_tiers_verify_rate(monkeypatch, rate, checked):
    w = World(verify_rate=rate)
    for key, part in zip(w.keys, w.parts):
        w.l1.data[key] = part
    calls = []
    real = checksum.verify
    monkeypatch.setattr(checksum, "verify", lambda *a: (calls.append(a[3]), real(*a)))
    assert w.read() == w.parts
    assert len(calls) == checked


def test_a_sampled_l1_hit_found_corrupt_is_dropped_and_never_waited_for():
    w = World(verify_rate=1.0)
    k = w.keys
    w.l1.data[k[0]] = bad(w.parts[0])
    w.l1.report_corrupt = lambda keys: w.l1.calls.append(("report_corrupt", list(keys)))  # cannot drop
    w.l1.elsewhere[k[0]] = None  # and it answers a claim of it as busy
    assert w.read([0]) == [w.parts[0]]
    assert w.l1.asked("report_corrupt") == [[k[0]]]
    assert w.l1.asked("get") == [[k[0]]]  # not asked again for the chunk it served corrupt
    assert counts(w.stats, "l1")[4] == 1


def test_chunks_a_read_through_tier_verified_itself_are_not_checked_again(w, monkeypatch):
    k = w.keys
    for key, part in zip(k, w.parts):
        w.l3.data[key] = part
    w.l3.verified = {k[0], k[1]}
    calls = []
    real = checksum.verify
    monkeypatch.setattr(checksum, "verify", lambda *a: (calls.append(a[3]), real(*a)))
    assert w.read() == w.parts
    assert len(calls) == 2 and all("from l3" in c for c in calls)


# -- faults ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("tier", ["l1", "l2", "l3"])
@pytest.mark.parametrize("error", [TierUnavailable("down"), OSError(5, "EIO")])
def test_a_failing_tier_is_a_miss_and_the_read_goes_on(w, tier, error):
    k = w.keys
    tiers = [w.l1, w.l2, w.l3]
    dead = getattr(w, tier)
    for t in tiers[tiers.index(dead):]:  # the dead tier and those below it hold chunk 0
        t.data[k[0]] = w.parts[0]
    dead.down, dead.error = True, error
    assert w.read() == w.parts
    hits, misses, _, errors, _ = counts(w.stats, tier)
    assert hits == 0 and misses == 4 and errors >= 1
    below = {"l1": "l2", "l2": "l3", "l3": None}[tier]
    if below is not None:  # the next tier served what the dead one held
        assert counts(w.stats, below)[0] == 1
    else:
        assert w.source.reads == [k]
    w.settle()
    assert w.l1.claimed == set()


def test_a_failed_fill_is_counted_and_costs_the_read_nothing(w):
    w.l2.error = TierUnavailable("l2 full of itself")
    w.l2.get_many = lambda keys, touch=True: {}
    w.l2.down = True  # its puts fail
    assert w.read() == w.parts
    w.settle()
    assert counts(w.stats, "l2")[3] == 1  # one failed batch of fills


def test_the_sources_error_reaches_the_reader(w):
    w.source.error = BlobNotFound("no replica holds it")
    with pytest.raises(BlobNotFound):
        w.read()


# -- claims ------------------------------------------------------------------------------------------
def test_claims_name_size_and_namespace_and_end_with_the_fill(w):
    w.read()
    assert w.l1.claims == [(key, len(part), "ns") for key, part in zip(w.keys, w.parts)]
    assert [key for key, _, _ in w.l1.fills] == w.keys and w.l1.claimed == set()


@pytest.mark.parametrize("error", [BlobNotFound("gone"), TierUnavailable("every replica down"),
                                   KeyboardInterrupt()])
def test_claims_are_given_back_when_the_read_below_fails(w, error):
    w.source.error = error
    with pytest.raises(type(error)):
        w.read()
    assert w.l1.claimed == set()
    assert sorted(key.index for keys in w.l1.asked("unclaim") for key in keys) == [0, 1, 2, 3]


def test_a_tier_that_dies_holding_claims_fails_nothing(w):
    def die():
        w.l1.down = True  # after the claims, before the fills and the unclaim

    w.source.on_read = die
    assert w.read() == w.parts
    assert len(w.l1.asked("fill")) == 1  # the first fill failed, ending that batch
    assert len(w.l1.asked("unclaim")) == 1
    assert counts(w.stats, "l1")[3] == 2  # the failed fill and the failed unclaim


def test_a_busy_chunk_is_waited_for_at_its_tier_and_counted_a_hit_there(w):
    k = w.keys
    w.l1.elsewhere[k[1]] = w.parts[1]
    w.l1.elsewhere[k[2]] = None  # that process failed: the chain reads it itself
    assert w.read([1, 2]) == w.parts[1:3]
    first, then = w.l1.asked("get")
    assert first == [k[1], k[2]] and set(then) == {k[1], k[2]}  # then: the wait for the busy ones
    assert w.source.reads == [[k[2]]]
    assert counts(w.stats, "l1")[:3] == (1, 1, len(w.parts[1]))


# -- counters ------------------------------------------------------------------------------------------
def test_counters_per_tier_are_exact(w):
    k = w.keys
    w.l1.data[k[0]], w.l2.data[k[1]], w.l3.data[k[2]] = w.parts[0], w.parts[1], w.parts[2]
    w.read()
    p = [len(x) for x in w.parts]
    assert counts(w.stats, "l1") == (1, 3, p[0], 0, 0)
    assert counts(w.stats, "l2") == (1, 2, p[1], 0, 0)
    assert counts(w.stats, "l3") == (1, 1, p[2], 0, 0)
    assert counts(w.stats, "origin") == (1, 0, p[3], 0, 0)
