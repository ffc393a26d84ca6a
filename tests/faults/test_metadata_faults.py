"""Faults in an embedded region's metadata, seen through the client.

A flipped byte in a RocksDB table file: ``ls`` raises instead of returning part of a
namespace, ``gc`` refuses and deletes nothing, point reads raise instead of missing. A
record that fails its codec checksum counts as the same corruption. A full disk (a real,
small tmpfs; root only) or a file-size limit (any user): writes raise ``StorageFull``,
``close()`` still releases the writer lock, and the next process writes once there is
space again.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import pytest

import blobtier
from blobtier.errors import MetadataCorrupt, StorageFull
from blobtier.metadata import schema
from blobtier.metadata.rocksdb_store import RocksDBStore
from blobtier.metadata.store import ANY
from tests.faults.test_volume_space import fill_up, tmpfs
from tests.metadata.test_rocksdb_faults import flip_table_bytes

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N = 1500


def stored_chunks(client) -> int:
    return sum(len(s.digests()) for s in client._blocks.servers.values())


def make_garbage_and_flush(client) -> None:
    """N small blobs, half of them overwritten (garbage for gc), all records in one
    table file."""
    client.put_many({f"ns/{i:05d}": b"first %d" % i for i in range(N)})
    client.put_many({f"ns/{i:05d}": b"second %d" % i for i in range(0, N, 2)})
    client._metadata._db.flush()
    client._metadata._db.compact_range(None, None)


@pytest.fixture
def damaged_region(region) -> str:
    with blobtier.connect(region) as c:
        make_garbage_and_flush(c)
    flip_table_bytes(os.path.join(region, "metadata"))
    return region


def test_ls_of_a_damaged_namespace_raises_never_a_partial_list(damaged_region):
    with blobtier.connect(damaged_region) as c:
        with pytest.raises(MetadataCorrupt, match="'ns/'") as err:
            c.ls("ns/")
        assert err.value.errno == errno.EIO
        with pytest.raises(MetadataCorrupt):
            list(c.iter_ls("ns/", page=100))


def test_gc_on_damaged_metadata_refuses_and_deletes_nothing(damaged_region):
    with blobtier.connect(damaged_region) as c:
        before = stored_chunks(c)
        with pytest.raises(MetadataCorrupt):
            c.gc(grace_s=0)
        assert stored_chunks(c) == before
    with blobtier.connect(damaged_region) as c:  # and nothing was lost on disk
        assert stored_chunks(c) == before


def test_point_reads_of_damaged_metadata_raise_never_miss(damaged_region):
    with blobtier.connect(damaged_region) as c:
        failed = 0
        for i in range(N):
            key = f"ns/{i:05d}"
            try:
                data = bytes(c.get(key))
            except MetadataCorrupt:
                failed += 1
            else:
                assert data == (b"second %d" if i % 2 == 0 else b"first %d") % i
        assert failed > 0


def test_a_record_that_fails_its_checksum_is_metadata_corruption(client):
    client.put("ns/good", b"good")
    client.put("ns/old", b"old")
    client.put("ns/old", b"new")  # garbage for gc
    raw = bytearray(schema.encode(client._metadata.get("ns/good")))
    raw[len(raw) // 2] ^= 0x10
    client._metadata._cas_many([(schema.record_key("ns/bad"), ANY, bytes(raw))])
    before = stored_chunks(client)
    with pytest.raises(MetadataCorrupt, match="ns/bad"):
        client.get("ns/bad")
    with pytest.raises(MetadataCorrupt, match="ns/bad"):
        client.ls("ns/")
    with pytest.raises(MetadataCorrupt, match="ns/bad"):
        client.gc(grace_s=0)
    assert stored_chunks(client) == before
    assert bytes(client.get("ns/good")) == b"good"


def writes_in_another_process(region: str, key: str) -> str:
    script = textwrap.dedent(f"""
        import blobtier
        from blobtier.errors import RegionLocked, StorageFull
        try:
            with blobtier.connect({region!r}) as c:
                c.put({key!r}, b"from another process")
                print("wrote", bytes(c.get({key!r})).decode())
        except RegionLocked:
            print("locked")
        except StorageFull:
            print("full")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_full_disk_never_strands_the_writer_lock(tmp_path):
    with tmpfs(str(tmp_path / "disk"), "32m") as disk:
        region = os.path.join(disk, "region")
        c = blobtier.connect(region)
        try:
            c.put("ns/before", b"committed before the disk filled")
            fill_up(disk)
            attrs = {"note": "x" * 4000}  # records outweigh chunks: RocksDB meets the full disk
            with pytest.raises(StorageFull) as err:
                for i in range(1000):
                    c.put_many([(f"ns/{i}/{j}", b"y", attrs) for j in range(20)])
            assert err.value.errno == errno.ENOSPC
        finally:
            c.close()  # the failure was reported: close releases everything without raising it again
        assert writes_in_another_process(region, "ns/next") == "full"  # not "locked"
        os.remove(os.path.join(disk, "filler"))
        assert writes_in_another_process(region, "ns/next") == "wrote from another process"
        with blobtier.connect(region) as again:
            assert bytes(again.get("ns/before")) == b"committed before the disk filled"


def test_a_file_too_large_never_strands_the_writer_lock(region):
    """A process under RLIMIT_FSIZE fills its WAL, closes, and stays alive while another
    process writes: the lock went with the close, not with the process."""
    script = textwrap.dedent(f"""
        import errno, resource, signal, sys
        import blobtier
        from blobtier.errors import StorageFull
        c = blobtier.connect({region!r})
        c.put("ns/before", b"ok")
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, resource.RLIM_INFINITY))
        try:
            for i in range(1000):
                c.put_many([(f"ns/{{i}}/{{j}}", b"y", {{"note": "x" * 4000}}) for j in range(10)])
        except StorageFull as exc:
            print("StorageFull", exc.errno, flush=True)
        c.close()
        print("closed", flush=True)
        sys.stdin.read()  # alive until the test is done
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout.readline().split() in (["StorageFull", str(errno.EFBIG)],
                                                  ["StorageFull", str(errno.ENOSPC)])
        assert proc.stdout.readline().strip() == "closed"
        assert writes_in_another_process(region, "ns/next") == "wrote from another process"
    finally:
        proc.stdin.close()
        proc.wait(30)
    assert proc.returncode == 0, proc.stderr.read()
    with blobtier.connect(region) as c:
        assert bytes(c.get("ns/before")) == b"ok"


def test_a_writer_whose_open_fails_releases_the_lock(region):
    """The writer's metadata cannot open (another primary holds RocksDB's own lock): the
    region's writer lock taken for that open is given back, not kept by a reader."""
    with blobtier.connect(region) as c:
        c.put("ns/a", b"a")
    holder = blobtier.connect(region)
    try:
        rogue = RocksDBStore(os.path.join(region, "metadata"), writable=True)  # bypasses the region lock
        try:
            with pytest.raises(blobtier.RegionLocked):
                holder.put("ns/b", b"b")
            assert not holder._wiring.stores.lock.held
        finally:
            rogue.close()
        holder.put("ns/b", b"b")  # it can still become the writer later
    finally:
        holder.close()
