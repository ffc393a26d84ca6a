"""``cache.verify_l1``: an L1 hit whose bytes changed in memory after their fill is caught,
dropped from the arena and read again from below (``always``; ``sampled`` catches it within
a few hundred reads; ``off`` never looks)."""

from __future__ import annotations

import os
import tempfile

import pytest

import blobtier
from blobtier.cache_l1_l2.daemon import HostDaemon
from blobtier.cache_l1_l2.l1 import SharedL1Cache
from blobtier.config import from_mapping
from blobtier.errors import InvalidRequest

DATA = bytes(range(256)) * 200  # one 50 KiB chunk


@pytest.fixture(params=["own arena", "daemon"])
def setup(request, region):
    """(owner of the arena the client reads, the client's cache overrides)."""
    with blobtier.connect(region, cache={"daemon": "off"}) as c:
        c.put("ns/blob", DATA)
    if request.param == "own arena":
        yield None, {"daemon": "off"}
        return
    run = tempfile.mkdtemp(prefix="bt-")  # 0700, ours; short for sun_path
    daemon = HostDaemon(8 << 20, socket_path=os.path.join(run, "d.sock"))
    try:
        yield daemon.owner, {"daemon": daemon.socket_path}
    finally:
        daemon.stop()
        os.rmdir(run)


def flip_a_byte(owner, client) -> None:
    """Flip one bit of the blob's chunk in the arena, through the owner's own mapping."""
    owner = owner or client._arena.owner
    offset, length = owner._index[client._record("ns/blob").chunk_key(0).digest()]
    owner.segment.view[offset + length // 2] ^= 0x10


def connect(region: str, cache: dict, verify: str) -> blobtier.Client:
    c = blobtier.connect(region, cache={**cache, "verify_l1": verify})
    assert bytes(c.get("ns/blob")) == DATA  # from below, into L1
    assert bytes(c.get("ns/blob")) == DATA and c.stats()["l1"]["hits"] == 1
    return c


def below_l1(client: blobtier.Client) -> int:
    """Chunks read from the tiers below L1: the embedded L3 (when its background fill of
    the first read has landed) or the source."""
    stats = client.stats()
    return stats["origin"]["hits"] + stats.get("l3", {}).get("hits", 0)


def test_always_catches_a_flipped_byte_drops_it_and_reads_the_right_bytes_from_below(region, setup):
    owner, cache = setup
    with connect(region, cache, "always") as c:
        owner = owner or c._arena.owner
        flip_a_byte(owner, c)
        below = below_l1(c)
        assert bytes(c.get("ns/blob")) == DATA
        assert c.stats()["l1"]["corrupt"] == 1 and owner.counters["corrupt"] == 1
        assert below_l1(c) == below + 1  # read again from below (the local L3 or the source) ...
        assert bytes(c.get("ns/blob")) == DATA  # ... and filled again: a good hit now
        assert c.stats()["l1"]["hits"] == 2 and c.stats()["l1"]["corrupt"] == 1
        assert owner.check() == []


def test_sampled_catches_it_within_a_few_hundred_reads(region, setup):
    owner, cache = setup
    with connect(region, cache, "sampled") as c:
        owner = owner or c._arena.owner
        flip_a_byte(owner, c)
        reads = 0
        while not c.stats()["l1"]["corrupt"]:  # 1 in 64: missed 2000 times once in 10^13
            assert reads < 2000, "sampling never checked the chunk"
            c.get("ns/blob")
            reads += 1
        assert owner.counters["corrupt"] == 1
        assert bytes(c.get("ns/blob")) == DATA


def test_off_never_looks(region, setup):
    """What the checks above guard against: with verify_l1 off the flipped byte is served."""
    owner, cache = setup
    with connect(region, cache, "off") as c:
        flip_a_byte(owner, c)
        for _ in range(200):
            assert bytes(c.get("ns/blob")) != DATA
        assert c.stats()["l1"]["corrupt"] == 0


def test_verify_l1_is_a_checked_config_field():
    assert from_mapping({}, env={}).cache.verify_l1 == "sampled"
    assert from_mapping({"cache": {"verify_l1": "always"}}, env={}).cache.verify_l1 == "always"
    assert from_mapping({}, env={"BLOBTIER_CACHE_VERIFY_L1": "off"}).cache.verify_l1 == "off"
    for bad in ("sometimes", ""):
        with pytest.raises(InvalidRequest, match="cache.verify_l1 must be one of off, sampled, always"):
            from_mapping({"cache": {"verify_l1": bad}}, env={})
    with pytest.raises(InvalidRequest, match="cache.verify_l1"):
        from_mapping({}, env={"BLOBTIER_CACHE_VERIFY_L1": "never"})
    with pytest.raises(InvalidRequest, match="verify_l1"):
        SharedL1Cache(socket_path="/nonexistent", verify="Always")
