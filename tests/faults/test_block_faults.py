"""Faults in a block layer of real chunk servers: dead nodes, a corrupting server,
stragglers and a restart storm."""

from __future__ import annotations

import os

import pytest

from blobtier.backoff import ReplicaHealth
from blobtier.blockstore_sim.replicated import ReadPolicy
from blobtier.errors import TierUnavailable
from tests.chunk_servers import Cluster

CHUNK = 64 * 1024


def test_a_dead_node_is_benched_not_asked_again_and_again(tmp_path):
    with Cluster(str(tmp_path), 3) as c:
        recs = [c.write(os.urandom(4 * CHUNK))]
        while not any(p[0] == 0 for p in recs[-1].placement):  # a chunk whose first replica is 0
            recs.append(c.write(os.urandom(4 * CHUNK)))
        c.block.health = ReplicaHealth(clock=lambda: 0.0)  # frozen time: the bench never ends
        c.servers[0].faults.update(down=True)
        rec = recs[-1]
        first = next(i for i, p in enumerate(rec.placement) if p[0] == 0)
        assert len(c.read(rec, [first])) == CHUNK
        assert c.servers[0].faults.counters()["refused"] == 1
        for rec in recs:
            assert len(c.read(rec)) == 4 * CHUNK
        assert c.servers[0].faults.counters()["refused"] == 1  # benched: not asked again


def test_a_corrupting_server_never_leaks_bad_bytes(tmp_path):
    with Cluster(str(tmp_path), 5) as c:
        recs = {seed: c.write(seed * (3 * CHUNK // 8)) for seed in (os.urandom(8) for _ in range(10))}
        c.servers[1].faults.update(corrupt_rate=0.5)
        for seed, rec in recs.items():
            assert c.read(rec) == seed * (3 * CHUNK // 8)
        assert c.servers[1].faults.counters()["corrupted"] == c.block.counters()["corrupt"]


def test_stragglers_are_hedged(tmp_path):
    with Cluster(str(tmp_path), 5, policy=ReadPolicy(hedge_after_ms=15)) as c:
        recs = [c.write(os.urandom(2 * CHUNK)) for _ in range(10)]
        c.servers[2].faults.update(latency_ms=10_000, tail_p=1.0)  # every request a straggler
        for rec in recs:
            c.read(rec)
        counts = c.block.counters()
        first_on_2 = sum(p[0] == 2 for rec in recs for p in rec.placement)
        assert counts["hedges"] == first_on_2 and counts["hedge_wins"] == first_on_2
        assert c.servers[2].faults.counters()["stragglers"] == first_on_2


def test_restart_storm_retries_are_bounded_and_concurrency_backs_off(tmp_path):
    policy = ReadPolicy(concurrency=16, max_retries=2)
    with Cluster(str(tmp_path), 3, policy=policy) as c:
        rec = c.write(os.urandom(32 * CHUNK))
        for s in c.servers:
            s.faults.update(down=True)
        with pytest.raises(TierUnavailable):
            c.read(rec)
        refused = sum(s.faults.counters()["refused"] for s in c.servers)
        assert refused <= rec.n_chunks * 3 * (policy.max_retries + 1)
        assert c.block.limit.limit < policy.concurrency and c.block.limit.cuts >= 1
        for s in c.servers:
            s.faults.update(down=False)
        assert len(c.read(rec)) == 32 * CHUNK  # back up: reads succeed again
