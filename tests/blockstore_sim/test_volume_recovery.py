"""Recovery never cuts good data: a damaged entry or index slot costs only itself.

Each test damages a closed volume the way a disk or a power cut would, reopens it and
checks that every valid entry before and after the damage is still there, that the data
file was not cut short, and that what is lost is absent, never wrong bytes.
"""

from __future__ import annotations

import errno
import os

import pytest

from blobtier.blockstore_sim import volume
from blobtier.blockstore_sim.volume import HEADER_SIZE, INDEX_SIZE, VolumeStore
from blobtier.checksum import xxh3
from blobtier.errors import StorageFull
from tests.blockstore_sim.test_volume import assert_all_readable, dat, digest, idx, item, payload
from tests.faults.test_disk_faults import flip


@pytest.fixture
def root(tmp_path) -> str:
    return str(tmp_path / "vol")


def write(root: str, ids, n: int = 1000) -> None:
    s = VolumeStore(root, writable=True)
    try:
        for i in ids:  # one group commit each: one index append each
            s.put_many([item(i, n)])
    finally:
        s.close()


def entry_start(i: int, n: int = 1000) -> int:
    """Where entry ``i`` starts in a volume written by ``write`` (entries of equal size)."""
    return i * (HEADER_SIZE + n)


def power_cut_index(root: str, keep_entries: int) -> None:
    """The index is never fsynced: a power cut may take any part of its tail."""
    with open(idx(root), "r+b") as f:
        f.truncate(keep_entries * INDEX_SIZE)


def check(root: str, present, absent) -> VolumeStore:
    s = VolumeStore(root, writable=True)
    assert_all_readable(s, present)
    assert not any(s.exists(digest(i)) for i in absent)
    return s


@pytest.mark.parametrize("where", ["header", "data"])
@pytest.mark.parametrize("index_left", [0, 2])
def test_damaged_entry_in_unindexed_stretch_costs_only_itself(root, where, index_left):
    write(root, range(6))
    size = os.path.getsize(dat(root))
    power_cut_index(root, index_left)
    flip(dat(root), entry_start(3) + (10 if where == "header" else HEADER_SIZE + 500))
    s = check(root, [0, 1, 2, 4, 5], [3])
    try:
        assert os.path.getsize(dat(root)) == size  # nothing cut
        s.put_many([item(6)])
    finally:
        s.close()
    s = check(root, [0, 1, 2, 4, 5, 6], [3])
    s.close()
    reader = VolumeStore(root)
    try:
        assert_all_readable(reader, [0, 1, 2, 4, 5, 6])
    finally:
        reader.close()


def test_flipped_header_of_an_indexed_entry_keeps_it(root):
    write(root, range(5))
    flip(dat(root), entry_start(2) + 5)  # the index still locates its (intact) data
    check(root, range(5), []).close()


def test_garbage_between_entries_is_skipped_and_kept(root):
    write(root, range(3))
    size = os.path.getsize(dat(root))
    # A stretch no valid entry covers (e.g. a write that failed half way), then a whole
    # entry whose index entry a power cut took.
    with open(dat(root), "ab") as f:
        f.write(b"\x00" * 700 + b"BTV1" + os.urandom(300))
        f.write(volume._pack_header(digest(7), volume.PUT, 1000, xxh3(payload(7))) + payload(7))
    s = check(root, [0, 1, 2, 7], [])
    try:
        assert os.path.getsize(dat(root)) == size + 1004 + HEADER_SIZE + 1000
    finally:
        s.close()


def test_damaged_index_slot_is_skipped_by_readers_and_rebuilt_by_the_writer(root):
    write(root, range(5))
    flip(idx(root), 2 * INDEX_SIZE + 20)
    reader = VolumeStore(root)
    try:
        assert_all_readable(reader, [0, 1, 3, 4])  # the slots after the bad one count
        assert not reader.exists(digest(2))  # only the writer trusts the data unindexed
        s = check(root, range(5), [])
        try:
            assert os.path.getsize(idx(root)) == 5 * INDEX_SIZE
            assert_all_readable(reader, range(5))  # the rebuilt index is read afresh
            s.put_many([item(5)])
            assert_all_readable(reader, range(6))
        finally:
            s.close()
    finally:
        reader.close()


def test_zeroed_index_stretch_is_rebuilt_from_the_data(root):
    write(root, range(6))
    with open(idx(root), "r+b") as f:
        f.seek(INDEX_SIZE)
        f.write(b"\x00" * 3 * INDEX_SIZE)
    s = check(root, range(6), [])
    s.close()
    assert os.path.getsize(idx(root)) == 6 * INDEX_SIZE


def test_lost_index_slot_of_a_tombstone_keeps_the_chunk_deleted(root):
    write(root, range(4))
    s = VolumeStore(root, writable=True)
    s.delete_many([digest(1)])
    s.put_many([item(4)])
    s.close()
    flip(idx(root), 4 * INDEX_SIZE + 3)  # the tombstone's slot
    check(root, [0, 2, 3, 4], [1]).close()


def test_index_entries_the_data_does_not_back_are_dropped(root):
    write(root, range(5))
    with open(dat(root), "r+b") as f:
        f.truncate(entry_start(3))  # e.g. a volume file restored from an older copy
    s = check(root, [0, 1, 2], [3, 4])
    s.close()
    assert os.path.getsize(idx(root)) == 3 * INDEX_SIZE


def test_torn_last_entry_with_lost_index_cuts_only_the_torn_bytes(root):
    write(root, range(4))
    power_cut_index(root, 1)
    with open(dat(root), "r+b") as f:
        f.truncate(entry_start(3) + HEADER_SIZE + 400)
    s = check(root, [0, 1, 2], [3])
    s.close()
    assert os.path.getsize(dat(root)) == entry_start(3)


def test_short_write_leaves_no_gap_before_later_writes(root, monkeypatch):
    s = VolumeStore(root, writable=True)
    s.put_many([item(0)])
    real = os.pwritev

    def half_then_full(fd, parts, offset):
        data = b"".join(bytes(p) for p in parts)
        real(fd, [data[:len(data) // 2]], offset)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwritev", half_then_full)
    with pytest.raises(StorageFull, match="No space"):
        s.put_many([item(1)])
    monkeypatch.setattr(os, "pwritev", real)
    s.put_many([item(2)])  # acknowledged: must survive whatever happens to the index
    s.close()
    power_cut_index(root, 0)
    check(root, [0, 2], [1]).close()
    assert os.path.getsize(dat(root)) == entry_start(2)


def test_damage_in_one_volume_leaves_the_next_alone(root):
    s = VolumeStore(root, writable=True, volume_bytes=8 * 1024)
    for i in range(12):
        s.put_many([item(i)])
    s.close()
    assert os.path.exists(dat(root, 2))
    power_cut_index(root, 0)
    flip(dat(root), entry_start(1) + HEADER_SIZE + 7)
    s = VolumeStore(root, writable=True, volume_bytes=8 * 1024)
    try:
        assert_all_readable(s, [i for i in range(12) if i != 1])
        assert not s.exists(digest(1))
    finally:
        s.close()


def test_new_names_are_fsynced_into_their_directories(tmp_path, monkeypatch):
    synced: list[str] = []
    monkeypatch.setattr(volume, "_fsync_dir", synced.append)
    root = tmp_path / "a" / "b"
    s = VolumeStore(str(root), writable=True, volume_bytes=2048, reserve_bytes=0)
    try:
        before = len(synced)
        for i in range(3):  # 1040-byte entries: each put after the first rolls over
            s.put_many([item(i)])
        rolled = len(synced) - before
    finally:
        s.close()
    assert str(tmp_path) in synced and str(tmp_path / "a") in synced  # the new store's dirs
    assert rolled == 2 and synced[-1] == str(root)  # each new volume's names
