"""A host daemon reading the chunks homed at it (``cache_l1_l2/peers.py`` ``HomeFill``):
however many peers ask for a chunk at once, its source is read once; the bytes go into the
arena and to every asker; a failure reaches every waiter; an origin's record is never read."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from blobtier.cache_l1_l2.owner import ArenaOwner
from blobtier.cache_l1_l2.peers import ArenaPeerCache, HomeFill
from blobtier.checksum import xxh3
from blobtier.errors import TierUnavailable
from blobtier.records import BlobRecord
from blobtier.rpc.cache_service import FAILED, FILLED, HIT, MISS

CHUNK = 64 << 10


class SlowSource:
    """A ChunkSource that counts its reads per chunk and takes a while (so that the askers
    overlap), or fails."""

    def __init__(self, data: bytes, fail: bool = False) -> None:
        self.data, self.fail = data, fail
        self.reads: dict[int, int] = {}
        self.lock = threading.Lock()

    def read_many(self, refs):
        time.sleep(0.2)
        with self.lock:
            for _, index in refs:
                self.reads[index] = self.reads.get(index, 0) + 1
        if self.fail:
            raise TierUnavailable("the block layer is down")
        return [memoryview(self.data[i * CHUNK:(i + 1) * CHUNK]) for _, i in refs]

    def close(self) -> None:
        pass


@pytest.fixture
def parts():
    data = os.urandom(4 * CHUNK)
    rec = BlobRecord(os.urandom(16), 1, len(data), CHUNK,
                     [xxh3(data[i:i + CHUNK]) for i in range(0, len(data), CHUNK)], [(0,)] * 4)
    owner = ArenaOwner(16 << 20)
    cache = ArenaPeerCache(owner)
    yield data, rec, owner, cache
    cache.close()
    owner.close()


def test_peers_asking_at_once_read_each_chunk_from_below_once(parts):
    data, rec, owner, cache = parts
    source = SlowSource(data)
    fill = HomeFill(cache, source)
    refs = [(rec, i) for i in range(4)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: fill.fill(refs), range(8)))
    assert source.reads == {0: 1, 1: 1, 2: 1, 3: 1}
    for batch in answers:
        assert [bytes(a.data) for a in batch] == [data[i * CHUNK:(i + 1) * CHUNK] for i in range(4)]
        assert {a.outcome for a in batch} <= {FILLED, HIT}
    assert sum(a.outcome == FILLED for batch in answers for a in batch) == 4  # one filler per chunk
    assert owner.stats()["chunks"] == 4  # kept in the arena: the next ask is a hit
    assert bytes(cache.get(rec.chunk_key(2))) == data[2 * CHUNK:3 * CHUNK]


def test_a_failed_read_fails_every_waiter_and_holds_no_claim(parts):
    data, rec, owner, cache = parts
    fill = HomeFill(cache, SlowSource(data, fail=True))
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: fill.fill([(rec, 0), (rec, 1)]), range(4)))
    assert all(a.outcome == FAILED for batch in answers for a in batch)
    assert owner.stats()["chunks"] == 0 and not owner.check()
    good = HomeFill(cache, SlowSource(data))  # nothing left claimed: a later fill succeeds
    assert [a.outcome for a in good.fill([(rec, 0)])] == [FILLED]


def test_a_record_naming_an_origin_is_never_read(parts):
    data, rec, _, cache = parts
    source = SlowSource(data)
    origin = BlobRecord(rec.blob_id, 2, CHUNK, CHUNK, [xxh3(data[:CHUNK])], origin="file:///etc/shadow\ntag")
    assert [a.outcome for a in HomeFill(cache, source).fill([(origin, 0)])] == [MISS]
    assert source.reads == {}


# A daemon whose fills never finish: it serves its (empty) arena to peers and reads the
# chunks homed at it from a source that marks that it was entered, then hangs.
HANGING_DAEMON = r"""
import sys, threading
from blobtier.cache_l1_l2.owner import ArenaOwner
from blobtier.cache_l1_l2.peers import PeerServer

class Hangs:
    def read_many(self, refs):
        open(sys.argv[2], "w").close()
        threading.Event().wait()

    def close(self):
        pass

server = PeerServer(ArenaOwner(16 << 20), sys.argv[1], source=Hangs())
print(server.address, flush=True)
threading.Event().wait()
"""


class Below:
    """The tiers under L2: the chunks' right bytes, counted per read."""

    def __init__(self, data: bytes) -> None:
        self.data, self.reads = data, 0

    def read_many(self, refs):
        self.reads += len(refs)
        return [memoryview(self.data[i * CHUNK:(i + 1) * CHUNK]) for _, i in refs]

    def close(self) -> None:
        pass


def l2_chain(address: str, below: Below, timeout_s: float = 10.0):
    from blobtier.metrics import TierStats
    from blobtier.rpc.sharded_cache import ShardedChunkCache
    from blobtier.sdk.chain import TierChain

    l2 = ShardedChunkCache.connect([(address, 1.0)], name="l2", timeout_s=timeout_s)
    return TierChain([l2], below, TierStats()), l2


def test_a_home_killed_during_its_fill_costs_its_askers_no_hang_and_no_wrong_bytes(parts, tmp_path):
    """SIGKILL of the daemon doing a fill another host's reader waits on: the reader's
    call ends (the connection drops) and it reads the chunk from below, right bytes."""
    import signal
    import subprocess
    import sys

    data, rec, _, _ = parts
    entered = tmp_path / "entered"
    daemon = subprocess.Popen([sys.executable, "-c", HANGING_DAEMON, "127.0.0.1:0", str(entered)],
                              stdout=subprocess.PIPE, text=True)
    below = Below(data)
    try:
        chain, l2 = l2_chain(daemon.stdout.readline().strip(), below, timeout_s=600.0)
        with ThreadPoolExecutor(1) as pool:
            read = pool.submit(chain.read, [(rec, 1)])
            while not entered.exists():  # the home is filling chunk 1 for this reader
                assert not read.done(), read.result()
                time.sleep(0.01)
            os.kill(daemon.pid, signal.SIGKILL)
            # Far inside the call's 600 s deadline: the dead connection, not the deadline, ends it.
            got = read.result(timeout=60)
        assert [bytes(v) for v in got] == [data[CHUNK:2 * CHUNK]] and below.reads == 1
        chain.close()
        l2.close()
    finally:
        daemon.kill()
        daemon.wait()


def test_a_chunk_flipped_in_a_homes_arena_is_caught_by_the_reader(parts):
    """A home's arena serving wrong bytes for a chunk (a flipped bit): the reader's chain
    verifies every L2 hit against the record, drops the bad copy and reads it from below."""
    from blobtier.cache_l1_l2.peers import PeerServer

    data, rec, _, _ = parts
    owner = ArenaOwner(16 << 20)
    server = PeerServer(owner, "127.0.0.1:0")
    below = Below(data)
    chain, l2 = l2_chain(server.address, below)
    try:
        bad = bytearray(data[2 * CHUNK:3 * CHUNK])
        bad[100] ^= 1
        assert server.cache.put(rec.chunk_key(2), bytes(bad))
        assert bytes(server.cache.get(rec.chunk_key(2))) == bytes(bad)  # the home serves it
        got = chain.read([(rec, 2)])
        assert bytes(got[0]) == data[2 * CHUNK:3 * CHUNK] and below.reads == 1
    finally:
        chain.close()
        l2.close()
        server.stop(0)
        owner.close()
