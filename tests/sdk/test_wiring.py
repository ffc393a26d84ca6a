"""The one wiring point (``sdk/wiring.py``): from a config it builds the metadata store, the
block layer and the chain in the README's order (L1 -> L2 -> L3 -> source), keeps each
part for its lifetime (per client, per process, per mode), and a forked child builds its
own host tiers before using any."""

from __future__ import annotations

import os

import blobtier
from blobtier.cache_l1_l2.l1 import SharedL1Cache
from blobtier.config import from_mapping
from blobtier.flash_l3.cache import FlashCache
from blobtier.metadata.remote import RemoteMetadataStore
from blobtier.metadata.rocksdb_store import RocksDBStore
from blobtier.metrics import TierStats
from blobtier.sdk.plans import ReadPlanCache
from blobtier.sdk.routing import RoutingSource
from blobtier.sdk.stores import RegionStores
from blobtier.sdk.wiring import Wiring
from tests.fork_support import in_child


def close(path) -> None:
    for handle in path.handles():
        handle.close()


def test_embedded_region_reads_l1_then_its_local_l3_then_the_block_layer(region):
    config = from_mapping({"root": region, "cache": {"l1_bytes": "8MiB"},
                           "flash": {"local_bytes": "16MiB"}}, env={})
    wiring = Wiring(config, TierStats())
    path = wiring.build(writable=False)
    try:
        assert [t.name for t in path.chain.tiers] == ["l1", "l3"]
        assert path.chain.tiers[0] is wiring.l1 and isinstance(wiring.l1, SharedL1Cache)
        # The flash store itself, on local disk under the root, in the process that owns it.
        assert isinstance(path.chain.tiers[1], FlashCache)
        assert path.chain.tiers[1].root == os.path.join(region, "l3", "cache")
        assert path.chain.source is path.blocks and isinstance(path.blocks, RoutingSource)
        assert isinstance(path.metadata, RocksDBStore) and not path.metadata.writable
        assert path.writer is None and isinstance(wiring.stores.lock.path, str)
    finally:
        close(path)
        for handle in wiring.handles():
            if handle is not None:
                handle.close()


def test_every_tier_in_the_readme_order(region, chunk_servers, meta_service):
    """L1, L3 (flash.endpoints), the chunk servers (block.endpoints), the metadata service
    (metadata.endpoints): each where the config says, in that order."""
    config = from_mapping({"root": region, "cache": {"l1_bytes": "8MiB"},
                           "flash": {"endpoints": ["127.0.0.1:1", "127.0.0.1:2@2"]},
                           "block": {"endpoints": chunk_servers.addresses},
                           "metadata": {"endpoints": [meta_service.address]}}, env={})
    wiring = Wiring(config, TierStats())
    reader = wiring.build(writable=False)
    writer = wiring.build(writable=True)
    try:
        for path in (reader, writer):
            assert [t.name for t in path.chain.tiers] == ["l1", "l3"]
            assert path.chain.tiers == [wiring.l1, wiring.l3]  # one of each per client
            assert [s.addr for s in path.blocks.servers.values()] == chunk_servers.addresses
            assert isinstance(path.metadata, ReadPlanCache)
            assert isinstance(path.metadata.store, RemoteMetadataStore)
            assert path.metadata.store.endpoints == (meta_service.address,)
        assert writer.metadata is reader.metadata  # a remote store serves both modes
        assert writer.blocks is not reader.blocks  # the writer's may write
        assert wiring.stores.lock is None and writer.writer.commit_within_s == 1800.0
        assert not os.path.exists(os.path.join(region, "writer.lock"))
    finally:
        for path in (reader, writer):
            close(path)
        for handle in wiring.handles():
            if handle is not None:
                handle.close()


def test_redis_metadata_is_wired_too(region, chunk_servers, tmp_path):
    from tests import redis_cluster

    node = redis_cluster.RedisNode(str(tmp_path / "redis"))
    try:
        with blobtier.connect(region, metadata={"redis": [node.address], "record_ttl_s": 0},
                              block={"endpoints": chunk_servers.addresses}) as c:
            from blobtier.metadata.redis_store import RedisStore

            assert isinstance(c._metadata, RedisStore)
            c.put("ns/a", b"through redis")
            assert bytes(c.get("ns/a")) == b"through redis"
    finally:
        node.stop()


def test_the_writer_lock_exists_only_for_embedded_metadata(region, chunk_servers, meta_service):
    embedded = from_mapping({"root": region, "block": {"endpoints": chunk_servers.addresses}}, env={})
    assert RegionStores(embedded).lock is not None
    remote = from_mapping({"root": region, "block": {"endpoints": chunk_servers.addresses},
                           "metadata": {"endpoints": [meta_service.address]}}, env={})
    assert RegionStores(remote).lock is None


def test_a_forked_child_builds_its_own_host_tiers(region, chunk_servers, meta_service):
    """The child's first build attaches to the parent's arena through its socket (never
    the parent's owner object) and keeps the client's L3 and remote metadata store."""
    with blobtier.connect(region, cache={"l1_bytes": "8MiB"},
                          flash={"endpoints": ["127.0.0.1:1"]},
                          block={"endpoints": chunk_servers.addresses},
                          metadata={"endpoints": [meta_service.address]}) as c:
        c.put("ns/a", b"before the fork")
        parent = (id(c._l1), id(c._wiring.l3), id(c._metadata))
        assert c._l1._owner is c._arena.owner

        def child():
            dropped = c._wiring.l1 is None and c._path is None  # reset before any child code
            got = bytes(c.get("ns/a"))
            return (dropped, got, id(c._l1) != parent[0], c._l1._owner is None,
                    c._l1._client is not None,
                    (id(c._wiring.l3), id(c._metadata)) == parent[1:], c.tiers)

        assert in_child(child) == (True, b"before the fork", True, True, True, True, ["l1", "l3"])
        assert bytes(c.get("ns/a")) == b"before the fork"
