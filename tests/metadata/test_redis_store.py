"""RedisStore over real redis-server processes: the metadata contract on one node and on a
3-master Redis Cluster, then what only Redis has (directory index, slots, WAIT, checks)."""

from __future__ import annotations

import functools
import itertools
import threading

import pytest

from blobtier.errors import InvalidRequest, MetadataCorrupt, StorageFull, TierUnavailable
from blobtier.metadata import schema
from blobtier.metadata.store import ABSENT, ANY
from tests import redis_cluster as servers
from tests.contracts.metadata_store import MetadataStoreContract, make_record
from tests.redis_cluster import RedisNode

redis_node, redis_cluster = servers.redis_node, servers.redis_cluster  # the session's servers

_prefixes = itertools.count()


def open_store(url: str, **kw):
    from blobtier.metadata.redis_store import RedisStore

    # a fresh key prefix per store: the session's servers are shared, each store is empty
    kw.setdefault("prefix", f"t{next(_prefixes)}:")
    return RedisStore.from_url(url, retry_s=kw.pop("retry_s", 5), **kw)


@pytest.fixture(params=["single", "cluster"])
def deployment(request):
    return request.getfixturevalue("redis_node" if request.param == "single" else "redis_cluster")


@pytest.fixture
def store(deployment):
    s = open_store(deployment.url)
    yield s
    s.close()


class TestRedisStore(MetadataStoreContract):
    @pytest.fixture
    def store_opener(self, store, deployment):
        from blobtier.metadata.redis_store import RedisStore

        return functools.partial(RedisStore.from_url, deployment.url, prefix=store.prefix)


def names(rows) -> list[str]:
    return [k for k, _ in rows]


def raw_client(deployment, key: bytes):
    """A plain client on the node that holds ``key`` (the only one for a single node)."""
    import redis

    if isinstance(deployment, RedisNode):
        return deployment.client()
    host, port = deployment.addresses[0].split(":")
    rc = redis.RedisCluster(host=host, port=int(port))
    return rc.get_redis_connection(rc.get_node_from_key(key))


# -- delimiter listing ------------------------------------------------------------------------
def test_list_dir_reads_one_page_not_the_directory(redis_node):
    """The first page of a 3000-entry directory costs its page's GETs, not 3000."""
    store = open_store(redis_node.url)
    try:
        store.commit_many([(f"big/d/{i:05d}", make_record(1, n_chunks=0), ABSENT) for i in range(3000)])
        store.commit_many([(f"big/d/sub{i}/x", make_record(1, n_chunks=0), ABSENT) for i in range(5)])
        client = redis_node.client()
        store.ns_refresh_s = 3600  # read the namespaces' TTLs (an index page) once, now
        store._ttls()
        client.config_resetstat()
        rows = store.list_dir("big/d/", limit=10)
        assert names(rows) == [f"big/d/{i:05d}" for i in range(10)]
        stats = client.info("commandstats")
        assert stats["cmdstat_get"]["calls"] == 10
        assert stats["cmdstat_evalsha"]["calls"] == 1  # one page of the index
        assert "cmdstat_scan" not in stats and "cmdstat_keys" not in stats
        assert names(store.list_dir("big/d/", after="big/d/02999")) == [f"big/d/sub{i}/" for i in range(5)]
    finally:
        store.close()


# -- the index stays true ---------------------------------------------------------------------
def test_listing_removes_an_entry_whose_record_is_gone(store, deployment):
    from blobtier.metadata.redis_store import _dir_keys

    store.commit_many([(k, make_record(1), ABSENT) for k in ["ns/a/1", "ns/a/2", "ns/b/1"]])
    record = b"{}" + store.prefix.encode() + b"Rns/a/2"
    raw_client(deployment, record).delete(record)  # as if its writer died before the commit
    zset = _dir_keys(store.prefix.encode(), b"Rns/a/")[0]
    assert raw_client(deployment, zset).zscore(zset, b"2") == 0
    assert names(store.list_dir("ns/a/")) == ["ns/a/1"]
    assert raw_client(deployment, zset).zscore(zset, b"2") is None
    record = b"{}" + store.prefix.encode() + b"Rns/b/1"
    raw_client(deployment, record).delete(record)
    assert names(store.scan("ns/")) == ["ns/a/1"]
    assert names(store.list_dir("ns/")) == ["ns/a/"]  # b/ emptied and removed up the tree


def test_an_entry_of_a_writer_in_flight_is_not_removed(store, deployment):
    """A writer adds its index entry, then commits: a listing in between sees no record
    but must leave the entry, or the commit lands unlisted."""
    from blobtier.metadata.redis_store import _CAS, _INDEX_ADD, _INDEX_DONE, _dir_keys, _script

    keys = _dir_keys(store.prefix.encode(), b"Rns/")
    adding = _script(_INDEX_ADD, keys, ["tok1", b"late"])
    store._execute([adding])
    assert adding.result == 1
    assert store.list_dir("ns/") == [] and store.scan("ns/") == []
    # the writer's commit lands (its compare-and-set alone: the entry is the one above)
    cas = _script(_CAS, [store._rk(b"Rns/late")], [b"absent", "set", schema.encode(make_record(1)), b"0"])
    done = _script(_INDEX_DONE, keys, ["tok2", b"late"])
    store._execute([cas, done])
    assert cas.result == 1
    assert names(store.list_dir("ns/")) == ["ns/late"]
    assert names(store.scan("ns/")) == ["ns/late"]


def test_an_entry_is_not_removed_when_its_commit_lands_during_the_check(store):
    """The race a listing's repair must lose: the entry was added (a), the listing read
    the directory (0) and found no record (1), the commit landed and its writer finished
    (b, c), then the repair runs (2). The directory's seq changed since (0): no removal."""
    from blobtier.metadata.redis_store import _CAS, _INDEX_ADD, _INDEX_DONE, _dir_keys, _script, _Stale

    d = b"Rns/"
    keys = _dir_keys(store.prefix.encode(), d)
    store._execute([_script(_INDEX_ADD, keys, ["tok1", b"late"])])           # (a)
    seq, found = store._page(d, b"-", b"+", 10)                              # (0)
    stale = _Stale()
    assert store._resolve(d, [(seq, n) for n in found], stale) == []         # (1)
    cas = _script(_CAS, [store._rk(d + b"late")], [b"absent", "set", schema.encode(make_record(1)), b"0"])
    store._execute([cas, _script(_INDEX_DONE, keys, ["tok2", b"late"])])     # (b), (c)
    assert cas.result == 1
    store._prune(stale)                                                      # (2)
    assert names(store.list_dir("ns/")) == ["ns/late"]


def test_a_listing_during_a_commit_never_drops_its_entries(store):
    """The same race through the store's own commit: a listing reads the directories
    between the commit's index entries and its compare-and-set (no record yet, and the
    subdirectory's own index not always written: each level is another slot), then
    repairs after the commit finished. The commit's end must change every directory's
    seq from what its start set, or the repair removes the entries of a landed commit
    (the key, or its whole subdirectory, would be unlisted: gc would then reclaim it)."""
    from blobtier.metadata.redis_store import _CAS, _INDEX_ADD, _SHA, _Stale

    stale, real = _Stale(), store._execute

    def execute(cmds, *, wait=False):
        if any(c.args[:2] == ["EVALSHA", _SHA[_CAS]] for c in cmds):  # the commit point is next
            assert list(store._rows(b"Rns/", b"Rns/", 16, stale)) == []  # entries, no record
        if any(c.args[:2] == ["EVALSHA", _SHA[_INDEX_ADD]] for c in cmds):
            # The subdirectory's own entry arrives after its parent's was read: "sub/" is empty.
            parent = [c for c in cmds if c.key.endswith(b"DRns/")]
            real(parent)
            seq, found = store._page(b"Rns/", b"-", b"+", 10)
            assert found == [b"sub/"] and store._resolve(b"Rns/", [(seq, b"sub/")], stale) == []
            cmds = [c for c in cmds if c not in parent]
        real(cmds, wait=wait)

    store._execute = execute
    store.commit("ns/sub/late", make_record(1), ABSENT)
    store._execute = real
    store._prune(stale)  # the listing's repair, after the commit finished
    assert names(store.scan("ns/")) == ["ns/sub/late"]
    assert names(store.list_dir("ns/")) == ["ns/sub/"]
    assert names(store.list_dir("ns/sub/")) == ["ns/sub/late"]


def test_index_matches_records_after_racing_writers_deleters_and_listers(store):
    """Writers commit and delete a small set of keys while listers repair the index: at
    the end every key with a record is listed, and nothing else."""
    pool = [f"ns/r/{i}" for i in range(6)]
    stop = threading.Event()
    errors = []

    def writer(seed: int) -> None:
        try:
            for r in range(60):
                key = pool[(seed * 7 + r) % len(pool)]
                if (seed + r) % 3:
                    store.commit(key, make_record(r + 1), expected=ANY)
                else:
                    store.delete(key)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def lister() -> None:
        while not stop.is_set():
            store.list_dir("ns/r/")
            store.scan("ns/")

    listers = [threading.Thread(target=lister) for _ in range(2)]
    writers = [threading.Thread(target=writer, args=(i,)) for i in range(3)]
    for t in listers + writers:
        t.start()
    for t in writers:
        t.join(60)
    stop.set()
    for t in listers:
        t.join(60)
    assert not errors
    present = [k for k, r in zip(pool, store.get_many(pool)) if r is not None]
    assert names(store.scan("ns/r/")) == present
    assert names(store.list_dir("ns/r/")) == present


# -- cluster layout and redirections ------------------------------------------------------------
def test_one_namespace_spreads_over_all_masters(redis_cluster):
    from redis.crc import key_slot

    # A prefix of its own: the spread of 300 keys depends on it (with "t28:" only 228 slots;
    # a counter-made prefix moved whenever a test was added before this one).
    store = open_store(redis_cluster.url, prefix="spread:")
    try:
        keys = [f"imagenet/{{shard}}/train/{i}.jpg" for i in range(300)]  # a hash tag in every key
        store.commit_many([(k, make_record(1, n_chunks=0), ABSENT) for k in keys])
        slots = {key_slot(b"{}" + store.prefix.encode() + b"R" + k.encode()) for k in keys}
        assert len(slots) > 280
        per_master = [len(m.client().keys(f"{{}}{store.prefix}R*")) for m in redis_cluster.masters()]
        assert sum(per_master) == 300 and min(per_master) > 50
    finally:
        store.close()


def _same_slot_keys(prefix: str, n: int) -> list[str]:
    from redis.crc import key_slot

    by_slot: dict[int, list[str]] = {}
    for i in itertools.count():
        key = f"mv/k{i}"
        group = by_slot.setdefault(key_slot(b"{}" + prefix.encode() + b"R" + key.encode()), [])
        group.append(key)
        if len(group) == n:
            return group


def test_reads_and_commits_follow_a_slot_migration(redis_cluster):
    """ASK while a slot is half migrated, MOVED after: the store follows both."""
    from redis.crc import key_slot

    store = open_store(redis_cluster.url)
    try:
        moving = _same_slot_keys(store.prefix, 3)
        others = [f"mv/o{i}" for i in range(40)]
        store.commit_many([(k, make_record(1), ABSENT) for k in moving + others])
        slot = key_slot(b"{}" + store.prefix.encode() + b"R" + moving[0].encode())
        topo = redis_cluster.topology()
        owner = next(n for n in redis_cluster.masters() if any(
            lo <= slot <= hi for lo, hi in map(lambda r: map(int, r), topo[n.address]["slots"])))
        target = next(n for n in redis_cluster.masters() if n is not owner)
        src, dst = owner.client(), target.client()
        src_id, dst_id = topo[owner.address]["node_id"], topo[target.address]["node_id"]
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
        first = b"{}" + store.prefix.encode() + b"R" + moving[0].encode()
        src.execute_command("MIGRATE", "127.0.0.1", target.port, first, 0, 5000)
        # half migrated: moving[0] answers ASK from the old owner
        assert [r.version for r in store.get_many(moving + others)] == [1] * 43
        store.commit(moving[0], make_record(2), expected=1)
        store.commit(moving[1], make_record(2), expected=1)
        assert store.get(moving[0]).version == 2
        for key in moving[1:]:
            raw = b"{}" + store.prefix.encode() + b"R" + key.encode()
            src.execute_command("MIGRATE", "127.0.0.1", target.port, raw, 0, 5000)
        for node in redis_cluster.masters():
            node.client().execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
        # done: the store's slot map is stale; the first request to the slot gets MOVED
        # and updates it, the next go straight to the new owner
        assert [r.version for r in store.get_many(moving)] == [2, 2, 1]
        src.config_resetstat()
        assert [r.version for r in store.get_many(moving)] == [2, 2, 1]
        assert "cmdstat_get" not in src.info("commandstats")
        store.commit(moving[2], make_record(2), expected=1)
        assert [r.version for r in store.get_many(moving + others)] == [2, 2, 2] + [1] * 40
        assert names(store.scan("mv/")) == sorted(moving + others)
    finally:
        store.close()


# -- scripts, types, start-up checks -------------------------------------------------------------
def test_a_flushed_script_cache_is_reloaded(store, deployment):
    store.commit("ns/a", make_record(1))
    nodes = deployment.masters() if hasattr(deployment, "masters") else [deployment]
    for node in nodes:
        node.client().script_flush()
    store.commit("ns/a", make_record(2), expected=1)
    assert store.get("ns/a").version == 2
    assert names(store.list_dir("ns/")) == ["ns/a"]


def test_a_key_of_another_type_is_corrupt_metadata(store, deployment):
    record = b"{}" + store.prefix.encode() + b"Rns/h"
    raw_client(deployment, record).hset(record, "f", "v")
    with pytest.raises(MetadataCorrupt, match="wrong type"):
        store.get("ns/h")
    with pytest.raises(MetadataCorrupt):
        store.commit("ns/h", make_record(2), expected=1)


def test_a_full_server_is_storage_full_and_writes_nothing(tmp_path):
    node = RedisNode(str(tmp_path))
    try:
        store = open_store(node.url, retry_s=0.5)
        client = node.client()
        client.config_set("maxmemory", client.info("memory")["used_memory"] + 300_000)
        committed = 0
        with pytest.raises(StorageFull, match=node.address):
            while committed < 10_000:
                store.commit(f"ns/full/{committed}", make_record(1, n_chunks=64), expected=ABSENT)
                committed += 1
        assert store.get(f"ns/full/{committed}") is None
        client.config_set("maxmemory", 0)
        assert len(store.scan("ns/full/", limit=20_000)) == committed > 0
        store.close()
    finally:
        node.stop()


def test_refuses_a_server_that_evicts(tmp_path):
    node = RedisNode(str(tmp_path), extra=["--maxmemory-policy", "allkeys-lru"])
    try:
        with pytest.raises(InvalidRequest, match=f"{node.address}.*allkeys-lru.*noeviction"):
            open_store(node.url)
    finally:
        node.stop()


def test_refuses_more_wait_replicas_than_the_master_has(redis_node):
    with pytest.raises(InvalidRequest, match="wait_replicas=1.*0 connected replicas"):
        open_store(redis_node.url, wait_replicas=1)


def test_wait_replicas_confirms_each_commit(tmp_path):
    master = RedisNode(str(tmp_path / "m"))
    replica = None
    try:
        replica = RedisNode(str(tmp_path / "r"), extra=["--replicaof", "127.0.0.1", str(master.port)])
        replica.wait_replicating()
        with open_store(master.url, wait_replicas=1, wait_timeout_ms=10_000) as store:
            store.commit("ns/a", make_record(1), expected=ABSENT)
            # acknowledged: the replica has it (WAIT returned 1), no polling needed
            assert replica.client().get(b"{}" + store.prefix.encode() + b"Rns/a") is not None
            replica.stop()
            store.wait_timeout_ms = 200
            with pytest.raises(TierUnavailable, match="only 0 of 1 replicas"):
                store.commit("ns/b", make_record(1), expected=ABSENT)
    finally:
        for node in (replica, master):
            if node is not None:
                node.stop()


def test_from_url(redis_node, redis_cluster):
    from blobtier.metadata.redis_store import RedisStore

    with RedisStore.from_url(redis_node.url + "?prefix=u1:&wait_timeout_ms=50") as s:
        assert (s.cluster, s.prefix, s.wait_timeout_ms) == (False, "u1:", 50)
    with RedisStore.from_url(redis_cluster.url, prefix="u2:") as s:
        assert s.cluster and len(s.endpoints) == len(redis_cluster.nodes)
    for bad in ["http://h:1", "redis://h", "redis://h:1?bogus=1", "redis://h:1?wait_replicas=x"]:
        with pytest.raises(InvalidRequest):
            RedisStore.from_url(bad)


def test_a_store_used_across_fork_works_in_parent_and_child(store):
    import multiprocessing

    store.commit("ns/parent", make_record(1))
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()

    def child() -> None:
        # reset before the child's code ran: none of the parent's clients is left to use
        assert store._rc is None and store._single is None
        store.commit("ns/child", make_record(2), expected=ABSENT)
        out.put((store.get("ns/parent").version, names(store.scan("ns/"))))

    p = ctx.Process(target=child)
    p.start()
    assert store.get("ns/parent").version == 1  # the parent goes on meanwhile
    assert out.get(timeout=60) == (1, ["ns/child", "ns/parent"])
    p.join(30)
    assert p.exitcode == 0
    assert store.get("ns/child").version == 2


def test_missing_redis_fails_under_ci_and_skips_elsewhere(monkeypatch):
    import shutil

    from tests.redis_cluster import require_redis

    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run the Redis tests"):
        require_redis()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        require_redis()


def test_registered_origins_live_beside_the_records(store, tmp_path):
    """The base class's second kind of raw key (b"O" + url) through the same index: URLs
    with "//", "///" and many entries, never listed as blobs."""
    store.commit("ns/a", make_record(1))
    store.register_origins(["memory://bucket/ds/", "memory:///bucket/ds", f"local://{tmp_path}/src/"])
    store.register_origins([f"memory://b/{i:04d}" for i in range(1200)])  # more than a page
    got = store.origins()
    assert got[:2] == [f"file://{tmp_path}/src", "memory:///b/0000"]
    assert "memory:///bucket/ds" in got and len(got) == 1202 and got == sorted(got, key=str.encode)
    assert names(store.scan("")) == ["ns/a"] and store.list_dir("") == [("ns/", None)]


def test_a_closed_store_says_so(redis_node):
    store = open_store(redis_node.url)
    store.commit("ns/a", make_record(1))
    store.close()
    with pytest.raises(TierUnavailable, match="closed"):
        store.get("ns/a")
