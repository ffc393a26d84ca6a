"""The read-plan cache (``sdk/plans.py``) over a real metadata service: warm lookups never
reach the server, another client's commit is seen once the TTL has passed, a client's own
writes and deletes are seen at once (also by a lookup that raced them), the metadata
contract holds through it, and a client reading a cached version whose chunks are gone
reads the newer version."""

from __future__ import annotations

import functools
import threading

import pytest

import blobtier
from blobtier.metadata.remote import RemoteMetadataStore
from blobtier.metadata.store import ABSENT
from blobtier.sdk.plans import ReadPlanCache
from tests.contracts.metadata_store import MetadataStoreContract, make_record


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server(meta_service):
    return meta_service


def gets_served(server) -> float:
    return server.metrics.registry.get_sample_value(
        "blobtier_meta_requests_total", {"method": "Get"}) or 0.0


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def cache(server, clock):
    c = ReadPlanCache(RemoteMetadataStore([server.address]), ttl_s=1.0, clock=clock)
    yield c
    c.close()


@pytest.fixture
def other(server):
    """Another client of the same service (another host's view)."""
    s = RemoteMetadataStore([server.address])
    yield s
    s.close()


def test_warm_lookups_are_answered_without_the_server(cache, other, server):
    other.commit("ns/a", make_record(1), ABSENT)
    assert cache.get("ns/a").version == 1
    served = gets_served(server)
    for _ in range(50):
        assert cache.get("ns/a").version == 1
    assert cache.get_many(["ns/a", "ns/a"])[1].version == 1
    assert gets_served(server) == served


def test_another_clients_commit_is_seen_once_the_ttl_has_passed(cache, other, clock):
    other.commit("ns/a", make_record(1), ABSENT)
    assert cache.get("ns/a").version == 1
    other.commit("ns/a", make_record(2), 1)
    clock.now += 0.99
    assert cache.get("ns/a").version == 1  # documented staleness: up to ttl_s
    assert cache.get_many(["ns/a"])[0].version == 1
    clock.now += 0.02
    assert cache.get("ns/a").version == 2
    other.delete("ns/a")
    clock.now += 1.01
    assert cache.get("ns/a") is None


def test_misses_are_not_cached(cache, other):
    assert cache.get("ns/new") is None
    other.commit("ns/new", make_record(1), ABSENT)
    assert cache.get("ns/new").version == 1  # at once, however long the TTL
    assert cache.get_many(["ns/newer"]) == [None]
    other.commit("ns/newer", make_record(1), ABSENT)
    assert cache.get_many(["ns/newer"])[0].version == 1


def test_own_writes_and_deletes_are_seen_at_once(cache, other):
    cache.commit("ns/a", make_record(1), ABSENT)
    assert cache.get("ns/a").version == 1
    cache.commit("ns/a", make_record(2), 1)
    assert cache.get("ns/a").version == 2
    cache.commit_many([("ns/a", make_record(3), 2), ("ns/b", make_record(1), ABSENT)])
    assert [r.version for r in cache.get_many(["ns/a", "ns/b"])] == [3, 1]
    cache.delete("ns/a")
    assert cache.get("ns/a") is None


def test_a_lost_compare_and_set_drops_the_stale_entry(cache, other):
    """A writer whose cached version is old loses its compare-and-set once, then sees the
    current one (so put's retry succeeds)."""
    other.commit("ns/a", make_record(1), ABSENT)
    assert cache.get("ns/a").version == 1
    other.commit("ns/a", make_record(2), 1)
    assert cache.commit_many([("ns/a", make_record(2), 1)]) == [False]
    assert cache.get("ns/a").version == 2


def test_a_lookup_racing_an_own_write_caches_nothing(server, clock):
    """A lookup that read the old record before this client's commit, and returns after
    it, must not cache what it read: the client would not see its own write."""
    inner = RemoteMetadataStore([server.address])
    read, release = threading.Event(), threading.Event()

    class Slow(RemoteMetadataStore):
        def get(self, key):
            rec = inner.get(key)
            read.set()
            release.wait(10)
            return rec

    slow = Slow([server.address])
    cache = ReadPlanCache(slow, ttl_s=3600, clock=clock)
    try:
        inner.commit("ns/a", make_record(1), ABSENT)
        got = []
        reader = threading.Thread(target=lambda: got.append(cache.get("ns/a")))
        reader.start()
        assert read.wait(10)
        cache.commit("ns/a", make_record(2), 1)  # lands while the lookup is under way
        release.set()
        reader.join(10)
        assert got[0].version == 1  # what it read
        slow.get = inner.get  # the next lookup answers at once
        assert cache.get("ns/a").version == 2
    finally:
        cache.close()
        inner.close()


def test_refresh_asks_the_store(cache, other):
    other.commit("ns/a", make_record(1), ABSENT)
    cache.get("ns/a")
    other.commit("ns/a", make_record(2), 1)
    assert cache.refresh("ns/a").version == 2
    assert cache.get("ns/a").version == 2


def test_the_cache_stays_bounded(server, clock, other):
    other.commit_many([(f"ns/{i:03d}", make_record(1), ABSENT) for i in range(100)])
    cache = ReadPlanCache(RemoteMetadataStore([server.address]), ttl_s=60, max_records=40, clock=clock)
    try:
        for i in range(100):
            cache.get(f"ns/{i:03d}")
            assert len(cache._records) <= 40
        assert cache.get("ns/099").version == 1
    finally:
        cache.close()


class TestContractThroughTheCache(MetadataStoreContract):
    """The whole metadata contract, through a cache with a long TTL over the service (the
    compare-and-set race runs in 4 processes, each with its own cache)."""

    @pytest.fixture
    def store(self, server):
        s = ReadPlanCache(RemoteMetadataStore([server.address]), ttl_s=3600)
        self.backend = server.store
        yield s
        s.close()

    @pytest.fixture
    def store_opener(self, server):
        return functools.partial(_cached_store, server.address)

    def write_raw(self, store, key, raw):
        from blobtier.metadata import schema
        from blobtier.metadata.store import ANY

        self.backend._cas_many([(schema.record_key(key), ANY, raw)])


def _cached_store(address: str) -> ReadPlanCache:
    return ReadPlanCache(RemoteMetadataStore([address]), ttl_s=3600)


# -- through the client -----------------------------------------------------------------------
def connect(region, server, chunk_servers, **metadata):
    return blobtier.connect(region, metadata={"endpoints": [server.address], **metadata},
                            block={"endpoints": chunk_servers.addresses, "replicas": 2},
                            client={"chunk_size": "64KiB"}, cache={"l1_bytes": 0})


def test_a_client_over_the_service_caches_its_lookups(region, server, chunk_servers):
    with connect(region, server, chunk_servers, record_ttl_s=60) as c:
        assert isinstance(c._metadata, ReadPlanCache)
        assert isinstance(c._metadata.store, RemoteMetadataStore)
        c.put("ns/a", b"one")
        assert bytes(c.get("ns/a")) == b"one"
        served = gets_served(server)
        for _ in range(20):
            assert c.stat("ns/a").version == 1
            assert bytes(c.get("ns/a")) == b"one"
        assert gets_served(server) == served
        c.put("ns/a", b"two")  # its own write: seen at once
        assert bytes(c.get("ns/a")) == b"two"
        c.delete("ns/a")
        assert not c.exists("ns/a")


def test_a_write_reads_the_version_it_replaces_from_the_store(region, server, chunk_servers):
    """A cached version may be old: a put that trusted it would lose its compare-and-set
    and upload every chunk again."""
    with connect(region, server, chunk_servers, record_ttl_s=3600) as c, \
            connect(region, server, chunk_servers) as other:
        c.put("ns/a", b"one")
        assert c.stat("ns/a").version == 1  # cached
        other.put("ns/a", b"two")
        commits = server.metrics.registry.get_sample_value("blobtier_meta_requests_total",
                                                           {"method": "Commit"})
        assert c.put("ns/a", b"three").version == 3
        assert server.metrics.registry.get_sample_value(
            "blobtier_meta_requests_total", {"method": "Commit"}) == commits + 1  # won at once
        assert bytes(c.get("ns/a")) == b"three"


def test_record_ttl_0_turns_the_cache_off(region, server, chunk_servers):
    with connect(region, server, chunk_servers, record_ttl_s=0) as c:
        assert isinstance(c._metadata, RemoteMetadataStore)
        c.put("ns/a", b"one")
        served = gets_served(server)
        c.stat("ns/a")
        c.stat("ns/a")
        assert gets_served(server) == served + 2


def test_a_cached_version_whose_chunks_are_gone_reads_the_new_one(region, server, chunk_servers):
    """Another client replaced the blob and its old chunks were collected: the cached
    version has ended, so the client looks it up again rather than failing."""
    with connect(region, server, chunk_servers, record_ttl_s=3600) as reader, \
            connect(region, server, chunk_servers) as writer:
        writer.put("ns/a", b"old" * 30_000)  # two chunks
        assert bytes(reader.get("ns/a")) == b"old" * 30_000  # cached: version 1
        old = reader._metadata.get("ns/a")
        writer.put("ns/a", b"new" * 30_000)
        for store in writer._blocks.servers.values():  # what gc does to version 1
            store.delete_many([old.chunk_key(i).digest() for i in range(old.n_chunks)])
        assert reader.stat("ns/a").version == 1  # still cached
        assert bytes(reader.get("ns/a")) == b"new" * 30_000
        writer.put("ns/b", b"b" * 100)
        reader.get("ns/b")
        old_b = reader._metadata.get("ns/b")
        writer.put("ns/b", b"B" * 100)
        for store in writer._blocks.servers.values():
            store.delete_many([old_b.chunk_key(0).digest()])
        assert bytes(reader.read_range("ns/b", 10, 5)) == b"BBBBB"
        writer.put("ns/c", b"c" * 100)
        assert [bytes(v) for v in reader.get_many(["ns/b", "ns/c"])] == [b"B" * 100, b"c" * 100]
        old_c = reader._metadata.get("ns/c")
        writer.put("ns/c", b"C" * 100)
        for store in writer._blocks.servers.values():
            store.delete_many([old_c.chunk_key(0).digest()])
        assert [bytes(v) for v in reader.get_many(["ns/b", "ns/c"])] == [b"B" * 100, b"C" * 100]
