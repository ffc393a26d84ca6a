"""ShardedChunkCache: rendezvous homes, failed nodes skipped and taken back, 1/N remapping."""

from __future__ import annotations

import os

import pytest

from blobtier.chunks import ChunkKey, Lookup
from blobtier.errors import InvalidRequest, TierUnavailable
from blobtier.metadata.schema import new_blob_id
from blobtier.rpc.sharded_cache import NodeHealth, ShardedChunkCache, ShardedReadThroughCache


class FakeNode:
    """A read-through cache node in memory: answers every key it is asked with refs."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.down = False
        self.store: dict[ChunkKey, bytes] = {}
        self.asked: list[ChunkKey] = []
        self.closed = False

    trusted = False

    def get_many(self, keys, touch=True):
        if self.down:
            raise TierUnavailable(f"{self.name} is down")
        self.asked += keys
        return {k: memoryview(self.store[k]) for k in keys if k in self.store}

    def read_through(self, keys, refs, touch=True):
        for key, (data, _) in zip(keys, refs):
            if not self.down:
                self.store.setdefault(key, data)
        return Lookup(self.get_many(keys, touch))

    def put(self, key, data, touch=True):
        if self.down:
            raise TierUnavailable(f"{self.name} is down")
        self.store[key] = bytes(data)
        return True

    def contains(self, key):
        if self.down:
            raise TierUnavailable(f"{self.name} is down")
        return key in self.store

    def report_corrupt(self, keys):
        if self.down:
            raise TierUnavailable(f"{self.name} is down")
        for key in keys:
            self.store.pop(key, None)

    def close(self):
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def sharded(n: int = 3, weights=None, clock=None):
    nodes = [FakeNode(f"n{i}") for i in range(n)]
    ws = weights or [1.0] * n
    cache = ShardedReadThroughCache([(node.name, w, node) for node, w in zip(nodes, ws)],
                                    health=NodeHealth(1.0, 8.0, clock or Clock()))
    return cache, nodes


def keys(n: int) -> list[ChunkKey]:
    return [ChunkKey(new_blob_id(), 1, 0) for _ in range(n)]


def test_every_key_goes_to_its_rendezvous_home():
    cache, nodes = sharded()
    ks = keys(300)
    refs = [(os.urandom(8), 0) for _ in ks]
    got = cache.read_through(ks, refs).found
    assert len(got) == 300
    for node in nodes:
        assert node.asked and all(cache.rank(k)[0] == node.name for k in node.asked)
    assert sum(len(n.asked) for n in nodes) == 300  # each key asked once, of one node


def test_weights_shift_the_share_of_keys():
    cache, nodes = sharded(weights=[1.0, 1.0, 2.0])
    homes = [cache.home(k) for k in keys(4000)]
    share = homes.count("n2") / len(homes)
    assert 0.42 < share < 0.58  # half of the weight, half of the keys


def test_losing_one_node_of_n_moves_only_its_keys():
    cache, nodes = sharded(5)
    ks = keys(5000)
    before = {k: cache.home(k) for k in ks}
    cache.health.failed("n3")
    after = {k: cache.home(k) for k in ks}
    moved = [k for k in ks if before[k] != after[k]]
    assert all(before[k] == "n3" for k in moved)
    assert 0.15 < len(moved) / len(ks) < 0.25  # about 1/5
    assert "n3" not in after.values()


def test_a_failing_node_is_skipped_its_keys_go_to_the_next_candidate_and_it_comes_back():
    clock = Clock()
    cache, nodes = sharded(clock=clock)
    ks = keys(200)
    refs = [(b"x", 0)] * len(ks)
    nodes[1].down = True
    got = cache.read_through(ks, refs).found
    assert len(got) == 200  # nothing lost: the failed node's keys were asked of their next node
    assert cache.health.benched() == ["n1"]
    nodes[1].asked.clear()
    cache.read_through(ks, refs)
    assert nodes[1].asked == []  # skipped while benched: no time wasted on it
    nodes[1].down = False
    clock.now += 1.5  # past its backoff
    cache.read_through(ks, refs)
    assert nodes[1].asked and cache.health.benched() == []
    assert all(cache.rank(k)[0] == "n1" for k in nodes[1].asked)


def test_when_every_candidate_fails_the_keys_are_misses():
    cache, nodes = sharded(2)
    for node in nodes:
        node.down = True
    assert cache.read_through(keys(10), [(b"x", 0)] * 10).found == {}
    assert cache.get_many(keys(10)) == {}  # every node benched: not even asked
    assert not cache.contains(keys(1)[0])
    with pytest.raises(TierUnavailable):
        cache.put(keys(1)[0], b"data")


def test_backoff_doubles_and_resets_on_success():
    clock = Clock()
    health = NodeHealth(1.0, 8.0, clock)
    for expected in (1.0, 2.0, 4.0, 8.0, 8.0):
        health.failed("a")
        assert not health.usable("a")
        clock.now += expected - 0.01
        assert not health.usable("a")
        clock.now += 0.02
        assert health.usable("a")
    health.ok("a")
    health.failed("a")
    clock.now += 1.01
    assert health.usable("a")


def test_put_goes_home_and_close_closes_every_node():
    cache, nodes = sharded()
    key = keys(1)[0]
    cache.put(key, b"bytes")
    home = next(n for n in nodes if n.name == cache.home(key))
    assert home.store == {key: b"bytes"} and cache.contains(key)
    cache.close()
    assert all(n.closed for n in nodes)


def test_needs_a_node():
    with pytest.raises(InvalidRequest):
        ShardedChunkCache([])


def test_a_corrupt_report_reaches_every_live_home_and_benches_a_dead_one():
    cache, nodes = sharded()
    ks = keys(60)
    for key in ks:
        cache.put(key, b"bad")
    dead = nodes[0]
    dead.down = True
    cache.report_corrupt(ks)  # a dead home is no reason to fail the read that found them
    assert all(not n.store for n in nodes[1:])  # the live homes forgot their copies
    assert dead.store and not cache.health.usable(dead.name)
