"""Faults in the flash tier: kill -9 of a node, EIO, ENOSPC, flipped and torn entries.

The rule under test: the node never crashes and never returns wrong bytes; a bad entry is
dropped and read again from the block layer; a full disk stops admission, not reads; a
restart after a crash keeps what was written. ``FlashCache.check`` is the oracle after
every crash.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading

import pytest

import blobtier
from blobtier.chunks import ChunkKey
from blobtier.config import FlashNodeConfig
from blobtier.flash_l3.cache import FlashCache
from blobtier.flash_l3.device import DeviceFaults
from blobtier.flash_l3.regions import ENTRY_HEADER
from blobtier.flash_l3.service import FlashNode
from blobtier.metadata.schema import new_blob_id
from blobtier.rpc.remote_cache import RemoteChunkCache
from tests.flash_l3.helpers import MemorySource, chunk_of, keys_and_data

REGION = 1 << 20


def serve(root: str, region: str) -> tuple[subprocess.Popen, str, str]:
    """A ``blobtier flash serve`` process reading through from an embedded region."""
    proc = subprocess.Popen([sys.executable, "-m", "blobtier.cli", "flash", "serve", "--dir", root,
                             "--capacity", "32MiB", "--region-size", "1MiB", "--region", region],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("flash node 0 serving"), line
    return proc, line.split()[-1], line


def stop(proc: subprocess.Popen, sig: int) -> None:
    proc.send_signal(sig)
    proc.wait(30)


@pytest.fixture
def dataset(region):
    blobs = {f"ds/{i:03d}": os.urandom(90_000 + 977 * i) for i in range(60)}
    with blobtier.connect(region, client={"chunk_size": "64KiB"}) as c:
        c.put_many(blobs)
        records = {k: c._metadata.get(k) for k in blobs}
    refs = [(rec, i) for rec in records.values() for i in range(rec.n_chunks)]
    expected = {rec.chunk_key(i): chunk_of(rec, blobs[k], i)
                for k, rec in records.items() for i in range(rec.n_chunks)}
    return refs, expected


def test_warm_restart_after_sigkill_and_after_sigterm(tmp_path, region, dataset):
    refs, expected = dataset
    root = str(tmp_path / "flash")
    proc, addr, _ = serve(root, region)
    written: list[ChunkKey] = []
    try:
        remote = RemoteChunkCache(addr, timeout_s=10)

        def writer() -> None:  # read-through fills until the node dies under it
            for start in range(0, len(refs), 8):
                batch = refs[start:start + 8]
                try:
                    got = remote.read_through([r.chunk_key(i) for r, i in batch], batch).found
                except blobtier.TierUnavailable:
                    return
                written.extend(got)  # answered FILLED: the node wrote them before answering

        thread = threading.Thread(target=writer)
        thread.start()
        while len(written) < len(refs) // 2 and thread.is_alive():
            threading.Event().wait(0.002)
        stop(proc, signal.SIGKILL)  # mid-write
        thread.join(30)
        remote.close()
        assert written and not os.path.exists(os.path.join(root, "index.snap"))

        proc, addr, banner = serve(root, region)
        assert "from scan" in banner
        remote = RemoteChunkCache(addr, timeout_s=10)
        back = remote.get_many(written)  # no records: only what the cache itself holds
        assert len(back) >= 0.95 * len(written)
        assert all(bytes(v) == expected[k] for k, v in back.items())
        remote.read_through([r.chunk_key(i) for r, i in refs], refs)  # fill the rest
        remote.close()
        stop(proc, signal.SIGTERM)  # a clean stop leaves a snapshot
        assert proc.returncode == 0 and os.path.exists(os.path.join(root, "index.snap"))

        proc, addr, banner = serve(root, region)
        assert f"({len(refs)} entries from snapshot)" in banner
        remote = RemoteChunkCache(addr, timeout_s=10)
        back = remote.get_many(list(expected))
        assert {k: bytes(v) for k, v in back.items()} == expected
        remote.close()
        stop(proc, signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    cache = FlashCache(root, 32 << 20, region_size=REGION)  # the oracle
    assert cache.recovered_from == "snapshot" and cache.check(deep=True) == []
    cache.close()


@pytest.fixture
def node_with_faults(tmp_path):
    source = MemorySource()
    faults = DeviceFaults()
    node = FlashNode(FlashNodeConfig(str(tmp_path / "flash"), 8 * REGION, region_bytes=REGION), source,
                     faults=faults)
    remote = RemoteChunkCache(node.address, timeout_s=10)
    yield node, source, faults, remote
    remote.close()
    node.stop(0)


def read_all(remote: RemoteChunkCache, rec) -> bytes:
    refs = [(rec, i) for i in range(rec.n_chunks)]
    got = remote.read_through([rec.chunk_key(i) for i in range(rec.n_chunks)], refs).found
    return b"".join(bytes(got[rec.chunk_key(i)]) for i in range(rec.n_chunks))


def test_an_io_error_on_read_drops_the_entry_and_refetches_it(node_with_faults):
    node, source, faults, remote = node_with_faults
    rec, data = source.add(300_000)
    assert read_all(remote, rec) == data
    faults.arm("read", errno.EIO, count=1)
    assert read_all(remote, rec) == data  # one chunk read through again
    assert node.cache.stats()["io_errors"] == 1
    assert source.total_reads() == rec.n_chunks + 1
    assert remote.counters["filled"] == rec.n_chunks + 1
    assert node.cache.check(deep=True) == []


def test_a_corrupt_entry_is_refetched_and_never_served(node_with_faults):
    node, source, _, remote = node_with_faults
    rec, data = source.add(300_000)
    assert read_all(remote, rec) == data
    entry = node.cache._index.get(rec.chunk_key(2).digest())
    with open(node.cache.device.path(entry.slot), "r+b") as f:
        f.seek(entry.offset + ENTRY_HEADER + 77)
        byte = f.read(1)
        f.seek(entry.offset + ENTRY_HEADER + 77)
        f.write(bytes([byte[0] ^ 0x80]))
    assert read_all(remote, rec) == data
    assert node.cache.stats()["corrupt"] == 1 and source.reads[rec.chunk_key(2)] == 2
    assert read_all(remote, rec) == data and source.total_reads() == rec.n_chunks + 1
    assert node.cache.check(deep=True) == []


def test_a_full_disk_stops_admission_but_not_reads(node_with_faults):
    node, source, faults, remote = node_with_faults
    cached, _ = source.add(200_000)
    assert read_all(remote, cached)
    faults.arm("write", errno.ENOSPC)
    fresh, fresh_data = source.add(200_000)
    assert read_all(remote, fresh) == fresh_data  # served from the block layer...
    assert not any(node.cache.contains(fresh.chunk_key(i)) for i in range(fresh.n_chunks))  # ...not kept
    assert node.cache.stats()["disk_full"] == 1 and node.cache.stats()["admission_paused"] == 1
    before = source.total_reads()
    assert len(read_all(remote, cached)) == 200_000  # what is cached still reads
    assert source.total_reads() == before
    assert node.cache.check(deep=True) == []


def test_admission_resumes_after_the_full_disk_pause(tmp_path):
    now = [0.0]
    faults = DeviceFaults()
    cache = FlashCache(str(tmp_path), 4 * REGION, region_size=REGION, faults=faults,
                       full_retry_s=30, clock=lambda: now[0])
    (k1, d1), (k2, d2) = keys_and_data(2).items()
    assert cache.put(k1, d1)
    faults.arm("write", errno.ENOSPC)
    assert not cache.put(k2, d2)
    faults.clear()
    assert not cache.put(k2, d2)  # paused: no write is even tried
    assert bytes(cache.get(k1)) == d1
    now[0] += 31
    assert cache.put(k2, d2) and bytes(cache.get(k2)) == d2
    assert cache.stats()["write_errors"] == 1
    cache.close()


def test_no_room_for_another_region_file_caps_the_capacity(tmp_path):
    faults = DeviceFaults()
    cache = FlashCache(str(tmp_path), 6 * REGION, region_size=REGION, faults=faults)
    chunks = list(keys_and_data(40, 100_000).items())
    for key, data in chunks[:15]:  # 10 entries per region: two region files
        assert cache.put(key, data)
    faults.arm("create", errno.ENOSPC)
    for key, data in chunks[15:]:
        assert cache.put(key, data)  # goes on by reclaiming the regions it has
    assert cache.capacity == 2 * REGION and len(cache.device.slots()) == 2
    assert bytes(cache.get(chunks[-1][0])) == chunks[-1][1]
    assert cache.check(deep=True) == []
    cache.close()


def test_a_torn_last_entry_is_cut_off_at_restart(tmp_path):
    cache = FlashCache(str(tmp_path), 4 * REGION, region_size=REGION)
    chunks = list(keys_and_data(5, 100_000).items())
    for key, data in chunks:
        cache.put(key, data)
    entry = cache._index.get(chunks[-1][0].digest())
    cache.device.write(entry.slot, entry.offset + ENTRY_HEADER + 60_000, [bytes(40_000)])  # half written
    cache.device.close()  # a crash
    again = FlashCache(str(tmp_path), 4 * REGION, region_size=REGION)
    assert again.stats()["discarded_entries"] == 1
    assert len(again.get_many([k for k, _ in chunks])) == 4 and not again.contains(chunks[-1][0])
    assert again.check(deep=True) == []
    key = ChunkKey(new_blob_id(), 1, 0)
    assert again.put(key, b"after the crash") and bytes(again.get(key)) == b"after the crash"
    again.close()


def test_an_unreadable_region_at_restart_is_dropped_not_fatal(tmp_path):
    cache = FlashCache(str(tmp_path), 4 * REGION, region_size=REGION)
    chunks = list(keys_and_data(30, 100_000).items())  # three regions of 10
    for key, data in chunks:
        cache.put(key, data)
    cache.device.close()
    faults = DeviceFaults()
    faults.arm("read", errno.EIO, count=1)
    again = FlashCache(str(tmp_path), 4 * REGION, region_size=REGION, faults=faults)
    assert again.recovered_from == "scan" and again.stats()["entries"] == 20
    assert len(again.device.slots()) == 2
    got = again.get_many([k for k, _ in chunks])
    assert all(bytes(v) == dict(chunks)[k] for k, v in got.items()) and len(got) == 20
    assert again.check(deep=True) == []
    again.close()
