"""Compaction gives back the space of deleted chunks, online, and keeps every live one."""

from __future__ import annotations

import os
import random
import threading

import pytest

from blobtier.blockstore_sim.volume import VolumeStore
from blobtier.errors import InvalidRequest
from tests.blockstore_sim.test_volume import assert_all_readable, dat, digest, item, payload
from tests.faults.test_disk_faults import flip

KiB = 1024
VOL = 64 * KiB


@pytest.fixture
def root(tmp_path) -> str:
    return str(tmp_path / "vol")


def fill(root: str, n: int, size: int = 4 * KiB) -> VolumeStore:
    s = VolumeStore(root, writable=True, volume_bytes=VOL)
    for start in range(0, n, 8):
        s.put_many([item(i, size) for i in range(start, min(n, start + 8))])
    return s


def reopen(s: VolumeStore) -> VolumeStore:
    s.close()
    return VolumeStore(s.root, writable=True, volume_bytes=VOL)


def test_deleting_half_and_compacting_halves_the_files(root):
    s = fill(root, 80)
    before = s.stats()["file_bytes"]
    s.delete_many([digest(i) for i in range(0, 80, 2)])
    report = s.compact()
    try:
        assert report.volumes >= 5 and report.skipped == 0
        assert s.stats()["file_bytes"] <= 0.55 * before
        assert report.bytes_after == s.stats()["file_bytes"]
        assert report.reclaimed >= 0.45 * before
        live = range(1, 80, 2)
        assert_all_readable(s, live, 4 * KiB)
        assert not any(s.exists(digest(i)) for i in range(0, 80, 2))
        s = reopen(s)
        assert_all_readable(s, live, 4 * KiB)
        assert not any(s.exists(digest(i)) for i in range(0, 80, 2))
        assert s.compact().volumes == 0  # nothing left to give back
    finally:
        s.close()


def test_wholly_dead_volumes_are_removed(root):
    s = fill(root, 48)
    try:
        s.delete_many([digest(i) for i in range(32)])  # the first volumes hold only these
        s.compact(min_dead_ratio=1.0)
        assert not os.path.exists(dat(root, 1)) and not os.path.exists(dat(root, 2))
        assert_all_readable(s, range(32, 48), 4 * KiB)
    finally:
        s.close()


def test_overwrites_leave_one_copy(root):
    s = fill(root, 16)
    for _ in range(5):  # the same chunks again (a retried or repaired write)
        s.put_many([item(i, 4 * KiB) for i in range(16)])
    one_copy = 16 * (4 * KiB + 40)
    try:
        assert s.stats()["file_bytes"] > 5 * one_copy
        s.compact()
        assert s.stats()["file_bytes"] <= 1.2 * one_copy + 16 * 48
        assert_all_readable(s, range(16), 4 * KiB)
    finally:
        s.close()


def test_tombstone_hiding_an_older_volume_is_kept(root):
    s = fill(root, 15)  # volume 1: chunks 0..14, full
    s.put_many([item(15, 4 * KiB)])  # volume 2 begins
    s.delete_many([digest(3)])  # a tombstone in volume 2 hides chunk 3 in volume 1
    s.put_many([item(i, 4 * KiB) for i in range(16, 30)])
    s.delete_many([digest(i) for i in range(15, 29)])  # volume 2: all dead but chunk 29
    try:
        s.compact(min_dead_ratio=0.6)  # volume 2 only: volume 1 is 7% dead
        assert os.path.exists(dat(root, 1)) and not os.path.exists(dat(root, 2))
        s = reopen(s)
        assert not s.exists(digest(3))  # not brought back by its put in volume 1
        assert_all_readable(s, [i for i in range(15) if i != 3] + [29], 4 * KiB)
        s.compact(min_dead_ratio=0.0)  # volume 1 goes now, and the tombstone after it
        assert not os.path.exists(dat(root, 1))
        s = reopen(s)
        assert not s.exists(digest(3))
        assert_all_readable(s, [i for i in range(15) if i != 3] + [29], 4 * KiB)
    finally:
        s.close()


def test_a_chunk_that_fails_its_checksum_is_dropped_not_copied(root):
    s = fill(root, 16)
    vol, offset = s._locate(digest(5))[:2]
    s.delete_many([digest(i) for i in range(0, 16, 2)])
    flip(dat(root, vol), offset + 100)  # the disk flips a byte of a live chunk
    try:
        report = s.compact(min_dead_ratio=0.0)
        assert report.dropped_corrupt == 1
        assert not s.exists(digest(5))
        assert_all_readable(s, [1, 3, 7, 9, 11, 13, 15], 4 * KiB)
        s = reopen(s)
        assert not s.exists(digest(5))
    finally:
        s.close()


def test_views_and_readers_from_before_compaction_keep_reading(root):
    s = fill(root, 40)
    reader = VolumeStore(root)  # another process's view of the store
    try:
        views = {i: s.get(digest(i)) for i in range(1, 40, 2)}
        assert_all_readable(reader, range(40), 4 * KiB)  # its index: the old volumes
        s.delete_many([digest(i) for i in range(0, 40, 2)])
        s.compact(min_dead_ratio=0.0)
        assert not os.path.exists(dat(root, 1))
        for i, view in views.items():  # zero-copy views of unlinked volumes: still valid
            assert bytes(view) == payload(i, 4 * KiB)
        assert_all_readable(reader, range(1, 40, 2), 4 * KiB)
        assert {d for d, _ in reader.digests()} == {digest(i) for i in range(1, 40, 2)}
        assert not reader.exists(digest(0))
    finally:
        reader.close()
        s.close()


def test_reads_writes_and_deletes_go_on_during_compaction(root):
    s = fill(root, 120)
    live = set(range(120))
    model_lock = threading.Lock()
    errors: list[BaseException] = []
    stop = threading.Event()

    def read_loop(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            with model_lock:
                i = rng.choice(sorted(live))
            try:
                got = bytes(s.get(digest(i)))
            except FileNotFoundError:
                with model_lock:
                    if i in live:  # deleted meanwhile is fine; live must read
                        errors.append(AssertionError(f"live chunk {i} not found"))
                continue
            if got != payload(i, 4 * KiB):
                errors.append(AssertionError(f"chunk {i}: wrong bytes"))

    def write_loop() -> None:
        rng = random.Random(7)
        for n in range(120, 240):
            s.put_many([item(n, 4 * KiB)])
            with model_lock:
                live.add(n)
                victim = rng.choice(sorted(live))
                live.discard(victim)
            s.delete_many([digest(victim)])

    s.delete_many([digest(i) for i in range(0, 120, 2)])
    live -= set(range(0, 120, 2))
    threads = [threading.Thread(target=read_loop, args=(k,)) for k in range(2)]
    writer = threading.Thread(target=write_loop)
    for t in [*threads, writer]:
        t.start()
    try:
        for _ in range(3):
            s.compact(min_dead_ratio=0.0)
        writer.join()
    finally:
        stop.set()
        for t in [*threads, writer]:
            t.join()
    try:
        assert not errors, errors[:3]
        s.compact(min_dead_ratio=0.0)
        s = reopen(s)
        assert {d for d, _ in s.digests()} == {digest(i) for i in live}
        assert_all_readable(s, live, 4 * KiB)
    finally:
        s.close()


@pytest.mark.parametrize("ratio", [-0.1, 1.5, float("nan")])
def test_bad_ratio_is_refused_naming_it(root, ratio):
    s = VolumeStore(root, writable=True)
    try:
        with pytest.raises(InvalidRequest, match="min_dead_ratio"):
            s.compact(ratio)
    finally:
        s.close()


def test_readers_cannot_compact(root):
    fill(root, 4).close()
    reader = VolumeStore(root)
    try:
        with pytest.raises(PermissionError):
            reader.compact()
    finally:
        reader.close()


def test_a_copy_never_lands_after_a_delete_still_being_synced(root, monkeypatch):
    s = fill(root, 8)
    loc = s._locate(digest(2))
    syncing, release = threading.Event(), threading.Event()
    real = os.fdatasync

    def slow_fdatasync(fd):
        syncing.set()
        release.wait(10)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", slow_fdatasync)
    deleter = threading.Thread(target=s.delete_many, args=([digest(2)],))
    deleter.start()
    try:
        assert syncing.wait(10)  # the tombstone is written, not yet durable nor applied
        assert s.exists(digest(2))
        assert s._copy(digest(2), loc) == 0  # so compaction must not copy the chunk
    finally:
        release.set()
        deleter.join()
        monkeypatch.setattr(os, "fdatasync", real)
    try:
        s._commit()
        assert not s.exists(digest(2))
        s = reopen(s)
        assert not s.exists(digest(2))
        assert_all_readable(s, [0, 1, 3, 4, 5, 6, 7], 4 * KiB)
    finally:
        s.close()
