"""Short-circuit reads: a client on the node's host reads L3 hits from the region files."""

from __future__ import annotations

import os

import pytest

import blobtier
from blobtier import checksum
from blobtier.blockstore_sim.replicated import ReplicatedBlockStore
from blobtier.blockstore_sim.volume import VolumeStore
from blobtier.chunks import CORRUPT, LocatedEntry
from blobtier.config import FlashNodeConfig
from blobtier.flash_l3.cache import FlashCache
from blobtier.flash_l3.local_reads import RegionReader
from blobtier.flash_l3.regions import ENTRY_HEADER
from blobtier.flash_l3.service import FlashNode
from blobtier.rpc import remote_cache
from blobtier.rpc.remote_cache import RemoteChunkCache
from blobtier.sdk.routing import RoutingSource
from tests.flash_l3.helpers import MemorySource, keys_and_data
from tests.fork_support import identities, in_child

REGION = 1 << 20


@pytest.fixture
def node(tmp_path):
    n = FlashNode(FlashNodeConfig(str(tmp_path / "flash"), 8 * REGION, region_bytes=REGION), MemorySource())
    yield n
    n.stop(0)


def remote(node: FlashNode, local: bool = True) -> RemoteChunkCache:
    return RemoteChunkCache(node.address, timeout_s=10, local_reads=RegionReader if local else None)


def test_hits_are_read_from_the_region_files(node):
    chunks = keys_and_data(12)
    for key, data in chunks.items():
        assert node.cache.put(key, data)
    r = remote(node)
    try:
        got = r.get_many(list(chunks))
        assert {k: bytes(v) for k, v in got.items()} == chunks
        assert r.counters["local_hits"] == 12 and r.local_reads
        assert node.cache.stats()["located"] == 12  # located, never streamed
        assert node.cache.stats()["hits"] == 12
        missing = keys_and_data(1)
        assert r.get_many(list(missing)) == {}  # a miss goes on to an ordinary Get
    finally:
        r.close()


def test_a_reclaimed_region_is_a_miss_not_old_bytes(tmp_path):
    cache = FlashCache(str(tmp_path / "c"), 2 * REGION, region_size=REGION)
    try:
        chunks = keys_and_data(4, 100_000)
        for key, data in chunks.items():
            cache.put(key, data)
        where, entries = cache.locate(list(chunks))
        reader = RegionReader(where)
        key, entry = next(iter(chunks)), entries[0]
        assert bytes(reader.read(key, entry.slot, entry.offset, entry.length, entry.seq)) == chunks[key]
        for k, data in keys_and_data(40, 100_000).items():  # FIFO reclaims the first region
            cache.put(k, data)
        assert cache.locate([key])[1] == [None]
        assert reader.read(key, entry.slot, entry.offset, entry.length, entry.seq) is None
        reader.close()
    finally:
        cache.close()


def test_another_host_gets_its_chunks_over_grpc(node, monkeypatch):
    chunks = keys_and_data(3)
    for key, data in chunks.items():
        node.cache.put(key, data)
    monkeypatch.setattr(remote_cache, "boot_id", lambda: "some-other-host")
    r = remote(node)
    try:
        got = r.get_many(list(chunks))
        assert {k: bytes(v) for k, v in got.items()} == chunks
        assert r.local_reads is False and r.counters["local_hits"] == 0
    finally:
        r.close()


def test_unreadable_region_files_turn_local_reads_off(node, monkeypatch):
    chunks = keys_and_data(3)
    for key, data in chunks.items():
        node.cache.put(key, data)

    def denied(self, *args):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(RegionReader, "read_many", denied)
    r = remote(node)
    try:
        got = r.get_many(list(chunks))
        assert {k: bytes(v) for k, v in got.items()} == chunks
        assert r.local_reads is False
    finally:
        r.close()


def test_a_flipped_byte_read_locally_is_refetched_and_dropped(tmp_path):
    """Through the SDK: the corrupt chunk is never returned, and the node forgets it."""
    region = str(tmp_path / "region")
    with blobtier.connect(region, cache={"daemon": "off"}) as c:
        c.put("ds/a", os.urandom(200_000))
        want = c.get("ds/a")
    # The node reads the embedded region's block directories, as `flash serve --region` does.

    blocks = os.path.join(region, "blocks")
    servers = {int(n): VolumeStore(os.path.join(blocks, n)) for n in os.listdir(blocks) if n.isdigit()}
    source = RoutingSource(ReplicatedBlockStore(servers, 1, writable_ids=()))
    node = FlashNode(FlashNodeConfig(str(tmp_path / "flash"), 8 * REGION, region_bytes=REGION), source)
    try:
        opts = {"cache": {"daemon": "off", "l1_bytes": 0}, "flash": {"endpoints": [node.address]}}
        with blobtier.connect(region, **opts) as c:
            assert bytes(c.get("ds/a")) == bytes(want)  # read through: now cached on the node
        entry = next(e for _, e in node.cache._index.items())
        path = os.path.join(node.cache.device.root, f"{entry.slot:06d}.reg")
        with open(path, "r+b") as f:  # flip a data byte behind the node's back
            f.seek(entry.offset + 64 + 1000)
            b = f.read(1)
            f.seek(entry.offset + 64 + 1000)
            f.write(bytes([b[0] ^ 0xFF]))
        with blobtier.connect(region, **opts) as c:
            assert bytes(c.get("ds/a")) == bytes(want)  # from the block layer, not the bad copy
            assert c.stats()["l3"]["corrupt"] == 1
        assert node.cache.stats()["dropped"] >= 1  # told, the node dropped the entry
    finally:
        node.stop(0)
        source.close()


def test_buffer_pool_reuses_only_buffers_nobody_holds():
    from blobtier.flash_l3.local_reads import BufferPool

    pool = BufferPool(limit_bytes=1 << 20)
    first = pool.take(100_000)
    first_id = id(first)
    held = memoryview(first)[10:20]  # a reader still holds a view of it
    del first
    second = pool.take(100_000)
    assert id(second) != first_id
    del held
    again = pool.take(100_000)  # the first buffer is free now: used again
    assert id(again) == first_id and len(again) == 100_000
    big = [pool.take(300_000) for _ in range(5)]  # past the limit: made, not kept
    assert pool._bytes <= 1 << 20 and len(big) == 5


def _in_forked_child(reader: RegionReader, key, entry, ids: set) -> tuple[bool, bytes | None]:
    held = bool(identities() & ids)
    view = reader.read(key, entry.slot, entry.offset, entry.length, entry.seq)
    return held, None if view is None else bytes(view)


def test_a_forked_child_closes_the_region_descriptors_and_opens_its_own(tmp_path):
    cache = FlashCache(str(tmp_path / "c"), 2 * REGION, region_size=REGION)
    chunks = keys_and_data(2)
    for key, data in chunks.items():
        cache.put(key, data)
    where, entries = cache.locate(list(chunks))
    cache.close()  # the node is another process: only the reader holds the region files here
    reader = RegionReader(where)
    try:
        key, entry = next(iter(chunks)), entries[0]
        assert bytes(reader.read(key, entry.slot, entry.offset, entry.length, entry.seq)) == chunks[key]
        ids = identities(reader._fds.values())
        assert ids
        with reader.pool._lock:  # as if another parent thread were taking a buffer at the fork
            held, data = in_child(_in_forked_child, reader, key, entry, ids)
        assert not held and data == chunks[key]
        assert bytes(reader.read(key, entry.slot, entry.offset, entry.length, entry.seq)) == chunks[key]
    finally:
        reader.close()


def _located(cache: FlashCache, chunks: dict) -> tuple[str, list[LocatedEntry]]:
    where, entries = cache.locate(list(chunks))
    return where, [LocatedEntry(k, e.slot, e.offset, e.length, e.seq, ("xxh3", checksum.xxh3(d)))
                   for (k, d), e in zip(chunks.items(), entries)]


def _flip(where: str, entry: LocatedEntry, at: int) -> None:
    path = os.path.join(where, f"{entry.slot:06d}.reg")
    with open(path, "r+b") as f:
        f.seek(entry.offset + ENTRY_HEADER + at)
        byte = f.read(1)
        f.seek(entry.offset + ENTRY_HEADER + at)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_back_to_back_entries_are_one_preadv_each_verified(tmp_path, monkeypatch):
    """Small entries written one after another come in with one preadv per window, and
    each is checked against its checksum: a flipped byte in the middle of a run is
    CORRUPT for that entry only, a stale entry None for itself only."""
    cache = FlashCache(str(tmp_path / "c"), 8 * REGION, region_size=REGION)
    try:
        chunks = keys_and_data(6, 20_000)  # 6 entries of 5 pages: one 30-page window
        for key, data in chunks.items():
            cache.put(key, data)
        where, wanted = _located(cache, chunks)
        calls = []
        real = os.preadv
        monkeypatch.setattr(os, "preadv",
                            lambda fd, bufs, off: calls.append(len(bufs)) or real(fd, bufs, off))
        reader = RegionReader(where)
        got = reader.read_many(wanted)
        assert [bytes(v) for v in got] == list(chunks.values())
        assert len(calls) == 1 and calls[0] == 2 * len(chunks) - 1  # entries and the gaps between
        _flip(where, wanted[2], 7_000)
        stale = wanted[4]._replace(seq=wanted[4].seq + 1)
        got = reader.read_many([*wanted[:4], stale, wanted[5]])
        assert got[2] is CORRUPT and got[4] is None
        assert [bytes(got[i]) for i in (0, 1, 3, 5)] == [chunks[wanted[i].key] for i in (0, 1, 3, 5)]
        reader.close()
    finally:
        cache.close()


def test_a_big_entry_is_read_and_hashed_a_window_at_a_time(tmp_path, monkeypatch):
    """An entry bigger than a window: read in pieces, hashed as they land; a flipped byte
    in its last window is CORRUPT, never its bytes."""
    cache = FlashCache(str(tmp_path / "c"), 16 * (4 << 20), region_size=4 << 20)
    try:
        chunks = keys_and_data(2, 1_500_000)
        for key, data in chunks.items():
            cache.put(key, data)
        where, wanted = _located(cache, chunks)
        calls = []
        real = os.preadv
        monkeypatch.setattr(os, "preadv", lambda fd, bufs, off: calls.append(off) or real(fd, bufs, off))
        reader = RegionReader(where)
        got = reader.read_many(wanted)
        assert [bytes(v) for v in got] == list(chunks.values())
        windows = -(-(ENTRY_HEADER + 1_500_000) // RegionReader.WINDOW)
        assert len(calls) == 2 * windows
        _flip(where, wanted[1], 1_499_000)
        got = reader.read_many(wanted)
        assert bytes(got[0]) == chunks[wanted[0].key] and got[1] is CORRUPT
        assert bytes(reader.read(wanted[1].key, *wanted[1][1:5])) != chunks[wanted[1].key]  # unchecked read
        reader.close()
    finally:
        cache.close()
