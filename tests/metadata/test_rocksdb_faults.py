"""Faults of the embedded RocksDB store: corrupt table files, a full disk, a file too
large, a second writer, a primary that restarts under a reader. Every failure reaches the
caller as an exception of the error tree (never a bare ``Exception``, a ``None`` or a
listing that ends early)."""

from __future__ import annotations

import errno
import glob
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from blobtier.errors import MetadataCorrupt, RegionLocked, StorageFull, TierUnavailable
from blobtier.metadata.rocksdb_store import RocksDBStore
from blobtier.metadata.store import ABSENT
from tests.contracts.metadata_store import make_record
from tests.faults.test_volume_space import fill_up, tmpfs

N = 3000


def build(path: str, n: int = N) -> list[str]:
    """A store whose records all sit in one table file (flushed and compacted)."""
    keys = [f"ns/{i:05d}" for i in range(n)]
    with RocksDBStore(path, writable=True) as s:
        for start in range(0, n, 500):
            s.commit_many([(k, make_record(1, n_chunks=8), ABSENT) for k in keys[start:start + 500]])
        s._db.flush()
        s._db.compact_range(None, None)
    return keys


def flip_table_bytes(path: str) -> None:
    """Flip bytes in the middle of the data blocks of the store's one table file."""
    (sst,) = glob.glob(os.path.join(path, "*.sst"))
    size = os.path.getsize(sst)
    with open(sst, "r+b") as f:
        for at in (size // 3, size // 2):
            f.seek(at)
            byte = f.read(1)
            f.seek(at)
            f.write(bytes([byte[0] ^ 0xFF]))


@pytest.fixture(scope="module")
def damaged_template(tmp_path_factory) -> tuple[str, list[str]]:
    path = str(tmp_path_factory.mktemp("damaged") / "db")
    keys = build(path)
    flip_table_bytes(path)
    return path, keys


@pytest.fixture
def corrupt(damaged_template, tmp_path) -> tuple[str, list[str]]:
    path = str(tmp_path / "db")
    shutil.copytree(damaged_template[0], path)
    return path, damaged_template[1]


@pytest.fixture(params=["writer", "reader"])
def opened(request, corrupt, tmp_path):
    path, keys = corrupt
    store = RocksDBStore(path, writable=request.param == "writer", scratch_dir=str(tmp_path / "tmp"))
    yield store, keys
    store.close()


def test_a_scan_that_meets_a_corrupt_block_raises_naming_store_and_prefix(opened):
    store, _ = opened
    with pytest.raises(MetadataCorrupt, match=f"{store.path}.*'ns/'") as err:
        store.scan("ns/", limit=10 * N)
    assert err.value.errno == errno.EIO


def test_paging_never_returns_a_partial_listing(opened):
    store, _ = opened
    seen, after = [], None
    with pytest.raises(MetadataCorrupt):
        while page := store.scan("ns/", after=after, limit=100):
            seen += [k for k, _ in page]
            after = page[-1][0]
    assert len(seen) < N  # it stopped at the damage, and said so


def test_a_full_listing_raises_rather_than_ends(opened):
    store, _ = opened
    got = []
    with pytest.raises(MetadataCorrupt, match="'ns/'"):
        for key, _ in store.listing("ns/"):
            got.append(key)
    assert len(got) < N


def test_point_reads_of_damaged_records_raise_never_none(opened):
    store, keys = opened
    failed = 0
    for key in keys:
        try:
            rec = store.get(key)
        except MetadataCorrupt:
            failed += 1
        else:
            assert rec is not None and rec.version == 1  # an intact record, never a miss
    assert failed > 0
    with pytest.raises(MetadataCorrupt):
        store.get_many(keys)


def test_a_full_disk_is_storage_full_and_space_back_means_writes_again(tmp_path):
    with tmpfs(str(tmp_path / "disk"), "4m") as disk:
        path = os.path.join(disk, "db")
        store = RocksDBStore(path, writable=True)
        store.commit("ns/before", make_record(1))
        fill_up(disk)
        with pytest.raises(StorageFull) as err:
            for i in range(1000):
                store.commit_many([(f"ns/{i}/{j}", make_record(1, n_chunks=50), ABSENT) for j in range(20)])
        assert err.value.errno == errno.ENOSPC and path in str(err.value)
        with pytest.raises(StorageFull):  # RocksDB stops writing until it is re-opened
            store.commit("ns/again", make_record(1))
        store.close()  # the failure was reported already: close lets go without raising it again
        os.remove(os.path.join(disk, "filler"))
        with RocksDBStore(path, writable=True) as again:  # the next writer, once there is space
            assert again.get("ns/before").version == 1
            again.commit("ns/after", make_record(1))
            assert again.get("ns/after").version == 1


def test_a_file_too_large_is_storage_full(tmp_path):
    """RLIMIT_FSIZE (what a quota does to one process): EFBIG, in the error tree."""
    script = textwrap.dedent(f"""
        import errno, resource, signal
        from blobtier.errors import StorageFull
        from blobtier.metadata.rocksdb_store import RocksDBStore
        from blobtier.metadata.store import ABSENT
        from tests.contracts.metadata_store import make_record
        s = RocksDBStore({str(tmp_path / "db")!r}, writable=True)
        s.commit("ns/before", make_record(1))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))
        try:
            for i in range(1000):
                s.commit_many([(f"ns/{{i}}/{{j}}", make_record(1, n_chunks=50), ABSENT) for j in range(10)])
        except StorageFull as exc:
            assert exc.errno == errno.EFBIG, exc
            print("StorageFull", exc.errno)
        s.close()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert done.returncode == 0, done.stderr
    assert f"StorageFull {errno.EFBIG}" in done.stdout
    with RocksDBStore(str(tmp_path / "db"), writable=True) as again:
        again.commit("ns/after", make_record(1))
        assert again.get("ns/before").version == 1


def test_a_second_writer_is_region_locked(tmp_path):
    path = str(tmp_path / "db")
    with RocksDBStore(path, writable=True) as first:
        with pytest.raises(RegionLocked, match=path):
            RocksDBStore(path, writable=True)
        first.commit("ns/still", make_record(1))


def test_a_closed_store_raises_tier_unavailable(tmp_path):
    store = RocksDBStore(str(tmp_path / "db"), writable=True)
    store.close()
    with pytest.raises(TierUnavailable, match="closed"):
        store.get("ns/a")
    with pytest.raises(TierUnavailable, match="closed"):
        store.commit("ns/a", make_record(1))


def test_a_reader_follows_a_primary_that_restarted(tmp_path):
    """The primary flushes its WAL when it re-opens; a secondary that had replayed an
    older value from that WAL must not keep answering it."""
    path = str(tmp_path / "db")
    first = RocksDBStore(path, writable=True)
    first.commit_many([("ns/k", make_record(1), ABSENT), ("ns/gone", make_record(1), ABSENT)])
    reader = RocksDBStore(path, scratch_dir=str(tmp_path / "tmp"), catch_up_s=0)
    try:
        assert reader.get("ns/k").version == 1 and reader.get("ns/gone").version == 1
        first.commit("ns/k", make_record(2), expected=1)
        first.delete("ns/gone")
        first.close()
        RocksDBStore(path, writable=True).close()  # a writer that opens and writes nothing
        assert reader.get("ns/k").version == 2
        assert reader.get("ns/gone") is None
        assert [k for k, _ in reader.scan("ns/")] == ["ns/k"]
    finally:
        reader.close()


def test_a_reader_follows_a_flush_of_a_running_primary(tmp_path):
    path = str(tmp_path / "db")
    with RocksDBStore(path, writable=True) as primary:
        primary.commit("ns/k", make_record(1))
        reader = RocksDBStore(path, scratch_dir=str(tmp_path / "tmp"), catch_up_s=0)
        try:
            assert reader.get("ns/k").version == 1
            primary.commit("ns/k", make_record(2), expected=1)
            primary._db.flush()  # what a full memtable does; the WAL it replaces goes
            primary._db.flush_wal(True)
            assert reader.get("ns/k").version == 2
        finally:
            reader.close()
