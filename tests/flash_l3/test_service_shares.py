"""Per-namespace L3 shares through a real flash node: the client names each record's key,
the node files what it reads through under that namespace, and a namespace within its share
keeps its chunks while another namespace reads far more than the node holds. The caches
learn the shares from the region's namespace objects (``SettingsRefresher``)."""

from __future__ import annotations

import pytest

from blobtier.cache_l1_l2.owner import ArenaOwner
from blobtier.config import FlashNodeConfig
from blobtier.errors import TierUnavailable
from blobtier.flash_l3.service import FlashNode
from blobtier.metadata.namespaces import NamespaceSpec
from blobtier.metadata.rocksdb_store import RocksDBStore
from blobtier.rpc.remote_cache import RemoteChunkCache
from blobtier.sdk.namespaces import SettingsRefresher, l1_settings, l3_shares
from tests.flash_l3.helpers import MemorySource, chunk_of

REGION = 1 << 20
CHUNK = 60 << 10


@pytest.fixture
def source():
    return MemorySource()


@pytest.fixture
def node(tmp_path, source):
    n = FlashNode(FlashNodeConfig(str(tmp_path / "flash"), 10 * REGION, region_bytes=REGION), source)
    yield n
    n.stop(0)


@pytest.fixture
def remote(node):
    r = RemoteChunkCache(node.address, timeout_s=10)
    yield r
    r.close()


def read(remote, source, key: str, size: int):
    """Read a new blob of ``size`` bytes at ``key`` through the node; its (record, bytes)."""
    rec, data = source.add(size, chunk=CHUNK)
    rec.key = key
    refs = [(rec, i) for i in range(rec.n_chunks)]
    found = remote.read_through([rec.chunk_key(i) for i in range(rec.n_chunks)], refs).found
    assert all(bytes(found[rec.chunk_key(i)]) == chunk_of(rec, data, i) for i in range(rec.n_chunks))
    return rec, data


def test_a_namespace_within_its_l3_share_survives_a_neighbour_reading_through(node, remote, source):
    node.cache.set_namespace_shares({"train": 0.4})
    train = [read(remote, source, f"train/{i}", 10 * CHUNK) for i in range(5)]  # ~3 of 10 regions
    assert node.cache.namespace_bytes() == {"train": 50 * CHUNK}
    for i in range(30):  # three times the node
        read(remote, source, f"logs/{i}", 10 * CHUNK)
    assert node.cache.namespace_bytes()["train"] == 50 * CHUNK
    reads = source.total_reads()
    for rec, data in train:  # every chunk a hit: nothing read from the block layer again
        keys = [rec.chunk_key(i) for i in range(rec.n_chunks)]
        found = remote.read_through(keys, [(rec, i) for i in range(rec.n_chunks)]).found
        assert b"".join(bytes(found[k]) for k in keys) == data
    assert source.total_reads() == reads


def test_the_caches_read_their_settings_from_the_namespace_objects(tmp_path, node):
    store = RocksDBStore(str(tmp_path / "meta"), writable=True)
    owner = ArenaOwner(1 << 20)
    try:
        store.create_namespace(NamespaceSpec("train", l1_share=0.3, l3_share=0.5, policy="clairvoyant"))
        l3 = SettingsRefresher(store, lambda specs: node.cache.set_namespace_shares(l3_shares(specs)),
                               interval_s=3600)
        l1 = SettingsRefresher(store, lambda specs: owner.configure_namespaces(*l1_settings(specs)),
                               interval_s=3600)
        assert node.cache.namespace_shares == {"train": 0.5}  # read once at start
        assert owner.namespace_shares == {"train": 0.3}
        assert owner.namespace_policies == {"train": "clairvoyant"}
        store.update_namespace("train", {"l3_share": None, "l1_share": 0.2})
        store.create_namespace(NamespaceSpec("eval", l3_share=0.25))
        assert l3.refresh() and l1.refresh()  # what the thread does every interval_s
        assert node.cache.namespace_shares == {"eval": 0.25}
        assert owner.namespace_shares == {"train": 0.2}
        l3.close()
        l1.close()
        store.close()
        closed = SettingsRefresher(store, lambda specs: None)
        assert not closed.refresh()  # a failed read: the settings in force stay
        closed.close()
        assert node.cache.namespace_shares == {"eval": 0.25}
    finally:
        owner.close()


def test_a_cache_serves_while_its_regions_metadata_cannot_be_opened(tmp_path, node):
    """The daemon's refresher opens the metadata itself, again at each refresh until that
    works: a cache starts whatever the metadata's state."""
    reachable = []

    def open_store():
        if not reachable:
            raise TierUnavailable("the metadata service is down")
        return RocksDBStore(str(tmp_path / "meta"), writable=True)

    with RocksDBStore(str(tmp_path / "meta"), writable=True) as store:
        store.create_namespace(NamespaceSpec("train", l3_share=0.5))
    refresher = SettingsRefresher(open_store, lambda specs: node.cache.set_namespace_shares(l3_shares(specs)),
                                  interval_s=3600)
    try:
        assert not refresher.refresh() and node.cache.namespace_shares == {}
        reachable.append(True)
        assert refresher.refresh() and node.cache.namespace_shares == {"train": 0.5}
    finally:
        refresher.close()  # closes the store it opened
    assert refresher.store._db is None
