"""``RemoteMetadataStore`` through a real metadata service: the metadata contract over
RocksDB and over a Redis node (the compare-and-set race from 4 forked client processes),
and what only a remote store does (spreading calls, large batches cut to messages)."""

from __future__ import annotations

import functools
import itertools

import pytest

from blobtier.errors import InvalidRequest
from blobtier.metadata import schema
from blobtier.metadata.remote import RemoteMetadataStore
from blobtier.metadata.rocksdb_store import RocksDBStore
from blobtier.metadata.service import MAX_RECORD_BYTES, MetadataServer
from blobtier.metadata.store import ABSENT, ANY
from tests import redis_cluster
from tests.contracts.metadata_store import MetadataStoreContract, assert_same, make_record

redis_node = redis_cluster.redis_node  # the session's Redis node
_prefixes = itertools.count()


def redis_backend(node):
    from blobtier.metadata.redis_store import RedisStore

    return RedisStore.from_url(node.url, prefix=f"remote{next(_prefixes)}:", retry_s=2)


def redis_backend_sharing(store, node):
    """A second store on ``store``'s keys (another server's view of one region)."""
    from blobtier.metadata.redis_store import RedisStore

    return RedisStore.from_url(node.url, prefix=store.prefix, retry_s=2)


@pytest.fixture
def server(backend):
    s = MetadataServer(backend)
    yield s
    s.stop(0)


class RemoteContract(MetadataStoreContract):
    """The contract through a service; ``backend`` is the store the service serves."""

    @pytest.fixture(autouse=True)
    def _behind(self, backend):
        self.backend = backend

    def write_raw(self, store, key, raw):
        # the service refuses records it cannot decode: corrupt the store behind it
        self.backend._cas_many([(schema.record_key(key), ANY, raw)])

    @pytest.fixture
    def store(self, server):
        s = RemoteMetadataStore([server.address])
        yield s
        s.close()

    @pytest.fixture
    def store_opener(self, server):
        return functools.partial(RemoteMetadataStore, [server.address])


class TestRemoteOverRocksDB(RemoteContract):
    @pytest.fixture
    def backend(self, tmp_path):
        return RocksDBStore(str(tmp_path / "db"), writable=True)


class TestRemoteOverRedis(RemoteContract):
    @pytest.fixture
    def backend(self, redis_node):
        return redis_backend(redis_node)


@pytest.fixture
def rocks(tmp_path):
    return RocksDBStore(str(tmp_path / "db"), writable=True)


def test_calls_are_spread_over_the_servers(redis_node):
    backend = redis_backend(redis_node)
    with MetadataServer(backend) as a, MetadataServer(redis_backend_sharing(backend, redis_node)) as b:
        client = RemoteMetadataStore([a.address, b.address])
        try:
            client.commit("ns/k", make_record(1))
            for _ in range(10):
                assert client.get("ns/k").version == 1
        finally:
            client.close()
        got = [s.metrics.registry.get_sample_value("blobtier_meta_requests_total", {"method": "Get"})
               for s in (a, b)]
        assert got == [5, 5]


def test_batches_larger_than_a_message_are_split(rocks):
    # ~1.4 MB records: three do not fit one 4 MiB message either way
    big = {f"ns/big/{i}": make_record(i + 1, n_chunks=100_000) for i in range(3)}
    with MetadataServer(rocks) as server:
        client = RemoteMetadataStore([server.address])
        try:
            assert client.commit_many([(k, r, ABSENT) for k, r in big.items()]) == [True] * 3
            for rec, got in zip(big.values(), client.get_many(list(big))):
                assert_same(got, rec)
            assert [k for k, _ in client.scan("ns/big/")] == list(big)
            assert [k for k, _ in client.list_dir("ns/big/")] == list(big)
        finally:
            client.close()
        count = server.metrics.registry.get_sample_value
        assert count("blobtier_meta_requests_total", {"method": "Commit"}) >= 2
        assert count("blobtier_meta_requests_total", {"method": "GetMany"}) == 2  # cut, then the rest
        assert count("blobtier_meta_requests_total", {"method": "List"}) == 4  # scan 2, list_dir 2


def test_a_record_too_large_for_the_service_is_refused_naming_its_key(rocks):
    n = MAX_RECORD_BYTES // 14 + 1  # 8 bytes of checksum and 3 x 2 of placement per chunk
    with MetadataServer(rocks) as server:
        client = RemoteMetadataStore([server.address])
        try:
            with pytest.raises(InvalidRequest, match="ns/huge"):
                client.commit("ns/huge", make_record(1, n_chunks=n))
            assert client.get("ns/huge") is None
        finally:
            client.close()


def test_origins_round_trip(rocks, tmp_path):
    with MetadataServer(rocks) as server:
        client = RemoteMetadataStore(server.address)
        try:
            client.register_origins([str(tmp_path), f"file://{tmp_path}/sub/"])
            assert client.origins() == sorted({f"file://{tmp_path}", f"file://{tmp_path}/sub"})
        finally:
            client.close()


@pytest.mark.parametrize("bad", ["", "host", "host:0", "host:http", ":80"])
def test_bad_endpoints_are_refused(bad):
    with pytest.raises(InvalidRequest):
        RemoteMetadataStore([bad] if bad else [])
