"""Reads and writes against 3 to 5 real chunk servers on loopback, with injected faults."""

from __future__ import annotations

import os
import threading
import time

import pytest

from blobtier.blockstore_sim.replicated import ReadPolicy
from blobtier.errors import ChecksumError, TierUnavailable
from tests.chunk_servers import Cluster

DATA = os.urandom(20 * 64 * 1024 + 333)  # 21 chunks of 64 KiB


@pytest.fixture
def three(tmp_path):
    with Cluster(str(tmp_path), 3) as c:
        yield c


@pytest.fixture
def five(tmp_path):
    with Cluster(str(tmp_path), 5) as c:
        yield c


def eventually(check, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition never held"
        threading.Event().wait(0.01)


def test_reads_go_straight_to_replica_holders_in_parallel(tmp_path):
    # No hedging: on a loaded machine a hedge would (rightly) read a slow chunk twice.
    with Cluster(str(tmp_path), 5, policy=ReadPolicy(max_retries=1, hedge_after_ms=-1)) as five:
        rec = five.write(DATA)
        assert five.read(rec) == DATA
        served = [s.faults.counters()["bytes_sent"] for s in five.servers]
    assert sum(served) == len(DATA)  # each chunk read once, from one holder, no proxy
    assert sum(1 for b in served if b) >= 3  # primaries spread over the servers


@pytest.mark.parametrize("down", [1, 2])
def test_reads_survive_servers_down(three, down):
    rec = three.write(DATA)
    for s in three.servers[:down]:
        s.faults.update(down=True)
    assert three.read(rec) == DATA
    assert three.block.counters()["errors"] >= 1
    assert three.stats.snapshot()["origin"]["errors"] >= 1


def test_reads_survive_a_stopped_server(three):
    rec = three.write(DATA)
    three.servers[1].stop(0)
    assert three.read(rec) == DATA


def test_all_down_is_a_clear_error(three):
    rec = three.write(DATA)
    for s in three.servers:
        s.faults.update(down=True)
    with pytest.raises(TierUnavailable, match=r"no replica could be read \(0 corrupt, \d+ unavailable"):
        three.read(rec, [0])
    retried = three.block.counters()["retries"]
    assert retried == three.block.policy.max_retries  # bounded
    for s in three.servers:
        s.faults.update(down=False)
    assert three.read(rec) == DATA  # and the servers are used again once they are back


def test_corrupted_bytes_are_detected_and_bypassed(three):
    rec = three.write(DATA)
    bad = rec.placement[0][0]
    three.servers[bad].faults.update(corrupt_rate=1.0)
    assert three.read(rec) == DATA
    assert three.servers[bad].faults.counters()["corrupted"] >= 1
    assert three.block.counters()["corrupt"] >= 1
    assert three.stats.snapshot()["origin"]["corrupt"] >= 1
    assert bad in three.block.health.benched()
    for s in three.servers:
        s.faults.update(corrupt_rate=1.0)
    with pytest.raises(ChecksumError, match="no good replica"):
        three.read(rec, [0])


def test_injected_latency_is_observable_and_hedged(tmp_path):
    with Cluster(str(tmp_path), 3, policy=ReadPolicy(hedge_after_ms=20)) as c:
        rec = c.write(DATA)
        slow = rec.placement[0][0]
        c.servers[slow].faults.update(latency_ms=30_000)
        assert c.read(rec, [0]) == DATA[:64 * 1024]
        counts = c.block.counters()
        assert counts["hedges"] == 1 and counts["hedge_wins"] == 1
        assert c.servers[slow].faults.counters()["delayed"] == 1
        # The loser was cancelled: its server stops waiting instead of sending.
        eventually(lambda: c.servers[slow].faults.counters()["cancelled"] == 1)
        assert c.servers[slow].faults.counters()["bytes_sent"] == 0


def test_no_hedging_when_turned_off(tmp_path):
    with Cluster(str(tmp_path), 3, policy=ReadPolicy(hedge_after_ms=-1)) as c:
        rec = c.write(DATA[:1000])
        c.servers[rec.placement[0][0]].faults.update(latency_ms=50)
        assert c.read(rec) == DATA[:1000]
        assert c.block.counters()["hedges"] == 0


def test_bandwidth_cap_is_observable(three):
    rec = three.write(DATA)
    for s in three.servers:
        s.faults.update(bandwidth_bytes_per_s=50 * 2**20)
    assert three.read(rec) == DATA
    throttled = sum(s.faults.counters()["throttled"] for s in three.servers)
    assert throttled >= rec.n_chunks  # every piece sent waited for the capped link


def test_put_with_a_server_down_follows_the_quorum(tmp_path):
    with Cluster(str(tmp_path / "all"), 3) as c:
        c.servers[2].faults.update(down=True)
        with pytest.raises(TierUnavailable, match="2 of 3 replicas durable, write quorum is 3"):
            c.write(DATA)
    with Cluster(str(tmp_path / "two"), 3, write_quorum=2) as c:
        c.servers[2].faults.update(down=True)
        rec = c.write(DATA)
        assert all(p[-1] == 2 for p in rec.placement)  # the failed replica is listed last
        assert c.read(rec) == DATA
        c.servers[2].faults.update(down=False)
        assert c.read(rec) == DATA  # server 2 lacks the chunks: read from the others


def test_put_with_one_of_five_down_uses_another_server(five):
    five.servers[3].faults.update(down=True)
    rec = five.write(DATA)
    assert all(len(set(p)) == 3 and 3 not in p for p in rec.placement)
    assert five.read(rec) == DATA
    for s in five.servers:
        if s.server_id != 3:
            s.faults.update(down=True)
    five.servers[3].faults.update(down=False)
    with pytest.raises(TierUnavailable):
        five.read(rec, [0])  # server 3 got nothing: it was skipped, not half-written
