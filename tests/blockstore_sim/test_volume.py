from __future__ import annotations

import os
import threading

import pytest

from blobtier.blockstore_sim import volume
from blobtier.blockstore_sim.volume import HEADER_SIZE, INDEX_SIZE, VolumeStore
from blobtier.checksum import xxh3
from blobtier.errors import BlobNotFound, InvalidRequest, TierUnavailable

KiB = 1024


def digest(i: int) -> bytes:
    return i.to_bytes(16, "big")


def payload(i: int, n: int = 1000) -> bytes:
    pattern = i.to_bytes(4, "big") + bytes((i * 31 + j) % 251 for j in range(251))
    return (pattern * (n // len(pattern) + 1))[:n]


def item(i: int, n: int = 1000) -> tuple[bytes, bytes, int]:
    data = payload(i, n)
    return digest(i), data, xxh3(data)


@pytest.fixture
def root(tmp_path) -> str:
    return str(tmp_path / "vol")


@pytest.fixture
def store(root):
    s = VolumeStore(root, writable=True)
    yield s
    s.close()


def reopen(s: VolumeStore, **kw) -> VolumeStore:
    s.close()
    return VolumeStore(s.root, writable=True, **kw)


def dat(root: str, vol: int = 1) -> str:
    return os.path.join(root, f"{vol:08d}.dat")


def idx(root: str, vol: int = 1) -> str:
    return os.path.join(root, f"{vol:08d}.idx")


def assert_all_readable(s: VolumeStore, ids, n: int = 1000) -> None:
    for i in ids:
        assert bytes(s.get(digest(i))) == payload(i, n), i


# -- reading and writing -------------------------------------------------------------
def test_put_get_round_trip_zero_copy(store):
    store.put_many([item(i) for i in range(5)] + [(digest(99), b"", xxh3(b""))])
    for i in range(5):
        view = store.get(digest(i))
        assert isinstance(view, memoryview) and view.readonly
        assert bytes(view) == payload(i)
    assert bytes(store.get(digest(99))) == b""
    assert store.stored_checksum(digest(3)) == xxh3(payload(3))


def test_ranged_get(store):
    store.put_many([item(1)])
    data = payload(1)
    assert bytes(store.get(digest(1), 10, 20)) == data[10:30]
    assert bytes(store.get(digest(1), 990)) == data[990:]
    assert bytes(store.get(digest(1), 1000)) == b""
    assert bytes(store.get(digest(1), 0, 1000)) == data


@pytest.mark.parametrize("offset, length", [(-1, 10), (1001, -1), (0, 1001), (999, 2), (1000, 1)])
def test_bad_ranges(store, offset, length):
    store.put_many([item(1)])
    with pytest.raises(InvalidRequest):
        store.get(digest(1), offset, length)


def test_unknown_digest(store):
    with pytest.raises(BlobNotFound):
        store.get(digest(42))
    with pytest.raises(BlobNotFound):
        store.stored_checksum(digest(42))
    assert not store.exists(digest(42))


def test_exists_and_delete(store):
    store.put_many([item(i) for i in range(4)])
    assert all(store.exists(digest(i)) for i in range(4))
    store.delete_many([digest(1), digest(3), digest(77)])
    assert [store.exists(digest(i)) for i in range(4)] == [True, False, True, False]
    with pytest.raises(BlobNotFound):
        store.get(digest(1))
    assert bytes(store.get(digest(2))) == payload(2)


def test_delete_survives_reopen(store):
    store.put_many([item(i) for i in range(3)])
    store.delete_many([digest(1)])
    s = reopen(store)
    try:
        assert not s.exists(digest(1))
        assert_all_readable(s, [0, 2])
    finally:
        s.close()


def test_reopen_keeps_everything(store):
    store.put_many([item(i) for i in range(10)])
    store.put_many([item(i) for i in range(10, 20)])
    s = reopen(store)
    try:
        assert_all_readable(s, range(20))
        s.put_many([item(20)])
        assert_all_readable(s, range(21))
    finally:
        s.close()


def test_digests_lists_everything(store):
    store.put_many([item(i) for i in range(6)])
    store.delete_many([digest(0)])
    listed = dict(store.digests())
    assert set(listed) == {digest(i) for i in range(1, 6)}
    assert all(isinstance(t, int) and t > 1_600_000_000 for t in listed.values())


def test_reader_sees_later_writes(store, root):
    store.put_many([item(0)])
    reader = VolumeStore(root)
    try:
        assert bytes(reader.get(digest(0))) == payload(0)
        store.put_many([item(1), item(2)])
        assert reader.exists(digest(1))
        assert bytes(reader.get(digest(2))) == payload(2)
        assert {d for d, _ in reader.digests()} == {digest(i) for i in range(3)}
        store.delete_many([digest(0)])
        store.put_many([item(3)])
        assert bytes(reader.get(digest(3))) == payload(3)
        assert not any(d == digest(0) for d, _ in reader.digests())
        with pytest.raises(PermissionError):
            reader.put_many([item(9)])
    finally:
        reader.close()


def test_reader_on_empty_root(root):
    reader = VolumeStore(root)
    try:
        assert not reader.exists(digest(1))
        writer = VolumeStore(root, writable=True)
        try:
            writer.put_many([item(1)])
            assert bytes(reader.get(digest(1))) == payload(1)
        finally:
            writer.close()
    finally:
        reader.close()


def test_volume_rollover(root):
    s = VolumeStore(root, writable=True, volume_bytes=1 << 20)
    for batch in range(5):
        s.put_many([item(batch * 8 + j, 100 * KiB) for j in range(8)])
    assert_all_readable(s, range(40), 100 * KiB)
    dats = sorted(n for n in os.listdir(root) if n.endswith(".dat"))
    assert len(dats) >= 4
    assert all(os.path.getsize(os.path.join(root, n)) <= 1 << 20 for n in dats)
    reader = VolumeStore(root)
    try:
        assert_all_readable(reader, range(40), 100 * KiB)
    finally:
        reader.close()
    s = reopen(s, volume_bytes=1 << 20)
    try:
        assert_all_readable(s, range(40), 100 * KiB)
        s.put_many([item(40, 100 * KiB)])
        assert_all_readable(s, [40], 100 * KiB)
    finally:
        s.close()


def test_reader_refresh_during_rollover(root, monkeypatch):
    s = VolumeStore(root, writable=True, volume_bytes=1 << 20)
    reader = VolumeStore(root)
    try:
        s.put_many([item(0)])
        assert reader.exists(digest(0))
        real = os.fdatasync

        def fdatasync_racing_reader(fd):
            reader.exists(digest(12345))  # another process's lookup miss, mid group commit
            real(fd)

        monkeypatch.setattr(os, "fdatasync", fdatasync_racing_reader)
        s.put_many([item(1, 600 * KiB), item(2, 600 * KiB)])  # item 2 rolls to volume 2
        monkeypatch.setattr(os, "fdatasync", real)
        assert reader.exists(digest(2))
        assert reader.exists(digest(1))
    finally:
        reader.close()
        s.close()


# -- crash recovery ------------------------------------------------------------------
def test_torn_append_of_garbage_is_cut(store, root):
    store.put_many([item(i) for i in range(5)])
    store.close()
    good_size = os.path.getsize(dat(root))
    with open(dat(root), "ab") as f:
        f.write(b"\xde\xad" * 37)
    s = VolumeStore(root, writable=True)
    try:
        assert os.path.getsize(dat(root)) == good_size
        assert_all_readable(s, range(5))
        s.put_many([item(5)])
        s = reopen(s)
        assert_all_readable(s, range(6))
    finally:
        s.close()


def test_torn_partial_header_and_data_is_cut(store, root):
    store.put_many([item(i) for i in range(3)])
    store.close()
    good_size = os.path.getsize(dat(root))
    entry = volume._pack_header(digest(9), volume.PUT, 1000, xxh3(payload(9))) + payload(9)
    for cut in (HEADER_SIZE - 5, HEADER_SIZE + 10):
        with open(dat(root), "ab") as f:
            f.write(entry[:cut])
        s = VolumeStore(root, writable=True)
        try:
            assert os.path.getsize(dat(root)) == good_size
            assert not s.exists(digest(9))
            assert_all_readable(s, range(3))
        finally:
            s.close()


def test_truncated_last_entry_before_index_write(store, root):
    store.put_many([item(i) for i in range(4)])
    store.put_many([item(4)])
    store.close()
    entry_start = os.path.getsize(dat(root)) - HEADER_SIZE - 1000
    with open(dat(root), "r+b") as f:
        f.truncate(entry_start + HEADER_SIZE + 500)  # crash mid-data
    with open(idx(root), "r+b") as f:
        f.truncate(os.path.getsize(idx(root)) - INDEX_SIZE)  # before its index entry
    s = VolumeStore(root, writable=True)
    try:
        assert os.path.getsize(dat(root)) == entry_start
        assert not s.exists(digest(4))
        assert_all_readable(s, range(4))
        s.put_many([item(5), item(6)])
        s = reopen(s)
        assert not s.exists(digest(4))
        assert_all_readable(s, [0, 1, 2, 3, 5, 6])
    finally:
        s.close()


def test_durable_entry_missing_from_index_is_recovered(store, root):
    store.put_many([item(i) for i in range(3)])
    store.close()
    idx_size = os.path.getsize(idx(root))
    with open(idx(root), "r+b") as f:
        f.truncate(idx_size - INDEX_SIZE)
    reader = VolumeStore(root)
    try:
        assert not reader.exists(digest(2))
        s = VolumeStore(root, writable=True)
        try:
            assert_all_readable(s, range(3))
            assert os.path.getsize(idx(root)) == idx_size  # indexed again
            assert bytes(reader.get(digest(2))) == payload(2)
        finally:
            s.close()
    finally:
        reader.close()


def test_corrupt_trailing_index_entry_is_rebuilt(store, root):
    store.put_many([item(i) for i in range(3)])
    store.close()
    idx_size = os.path.getsize(idx(root))
    with open(idx(root), "r+b") as f:
        f.seek(idx_size - INDEX_SIZE + 20)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0x10]))
    s = VolumeStore(root, writable=True)
    try:
        assert_all_readable(s, range(3))
        assert os.path.getsize(idx(root)) == idx_size
        s = reopen(s)
        assert_all_readable(s, range(3))
    finally:
        s.close()


def test_torn_index_entry_is_dropped(store, root):
    store.put_many([item(i) for i in range(2)])
    store.close()
    with open(idx(root), "ab") as f:
        f.write(b"\x00" * (INDEX_SIZE // 2))
    s = VolumeStore(root, writable=True)
    try:
        assert os.path.getsize(idx(root)) % INDEX_SIZE == 0
        assert_all_readable(s, range(2))
    finally:
        s.close()


# -- concurrency and failure ---------------------------------------------------------
def test_concurrent_put_many(root):
    s = VolumeStore(root, writable=True, volume_bytes=1 << 20)
    errors = []
    barrier = threading.Barrier(8)

    def work(t):
        barrier.wait()
        try:
            for j in range(10):
                s.put_many([item(t * 100 + j * 2, 4 * KiB), item(t * 100 + j * 2 + 1, 4 * KiB)])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    ids = [t * 100 + j for t in range(8) for j in range(20)]
    assert_all_readable(s, ids, 4 * KiB)
    s = reopen(s, volume_bytes=1 << 20)
    try:
        assert_all_readable(s, ids, 4 * KiB)
        assert len(s.digests()) == len(ids)
    finally:
        s.close()


def test_fsync_failure_poisons_the_store(store, monkeypatch):
    store.put_many([item(0)])
    real = os.fdatasync
    calls = []

    def failing_once(fd):
        calls.append(fd)
        if len(calls) == 1:
            raise OSError(5, "EIO")
        return real(fd)

    monkeypatch.setattr(os, "fdatasync", failing_once)
    with pytest.raises(TierUnavailable):
        store.put_many([item(1)])
    with pytest.raises(TierUnavailable):
        store.put_many([item(2)])
    with pytest.raises(TierUnavailable):
        store.delete_many([digest(0)])
    assert bytes(store.get(digest(0))) == payload(0)
    assert not store.exists(digest(2))
    monkeypatch.setattr(os, "fdatasync", real)
    s = reopen(store)
    try:
        s.put_many([item(3)])
        assert_all_readable(s, [0, 3])
    finally:
        s.close()


def test_closed_store_rejects_puts(store):
    store.close()
    with pytest.raises(TierUnavailable):
        store.put_many([item(0)])
