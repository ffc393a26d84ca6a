"""A full disk: deletes and compaction still run (they delete before they write), give the
space back, and writes go through again. Each test mounts its own small tmpfs (root only)."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Iterator

import pytest

import blobtier
from blobtier.blockstore_sim.volume import VolumeStore
from blobtier.errors import StorageFull
from tests.blockstore_sim.test_volume import assert_all_readable, digest, item

KiB = 1024


@contextlib.contextmanager
def tmpfs(path: str, size: str) -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    os.makedirs(path, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", path],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], check=False)


def fill_up(disk: str) -> None:
    """Take every byte left, as another program on the disk would."""
    with open(os.path.join(disk, "filler"), "wb", buffering=0) as f:
        block = b"\xff" * 4096
        while True:
            try:
                f.write(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                return


def test_deletes_and_compaction_run_on_a_full_disk(tmp_path):
    with tmpfs(str(tmp_path / "disk"), "2m") as disk:
        root = os.path.join(disk, "vol")
        opts = {"volume_bytes": 128 * KiB, "reserve_bytes": 128 * KiB}
        s = VolumeStore(root, writable=True, **opts)
        acked = []
        try:
            while True:
                s.put_many([item(len(acked), 8 * KiB)])
                acked.append(len(acked))
        except StorageFull:
            pass
        fill_up(disk)
        with pytest.raises(StorageFull):
            s.put_many([item(9999, 8 * KiB)])
        dead, live = acked[::2], acked[1::2]  # no volume is wholly dead
        try:
            s.delete_many([digest(i) for i in dead])
            report = s.compact()
            assert report.volumes >= len(acked) // 16 and report.reclaimed > 0
            new = range(10_000, 10_010)
            s.put_many([item(i, 8 * KiB) for i in new])  # room again
            assert_all_readable(s, [*live, *new], 8 * KiB)
            s.close()
            s = VolumeStore(root, writable=True, **opts)
            assert_all_readable(s, [*live, *new], 8 * KiB)
            assert not any(s.exists(digest(i)) for i in dead)
        finally:
            s.close()


def test_gc_gives_space_back_on_a_full_block_disk(tmp_path):
    region = tmp_path / "region"
    with tmpfs(str(region / "blocks"), "16m") as blocks:
        c = blobtier.connect(str(region), client={"chunk_size": "64KiB"},
                             block={"servers": 3, "replicas": 3, "volume_bytes": "1MiB"})
        try:
            blobs: dict[str, bytes] = {}
            try:
                while True:
                    key = f"ns/{len(blobs)}"
                    data = os.urandom(100_000)
                    c.put(key, data)
                    blobs[key] = data
            except OSError:  # the block disk is full: the write fails, nothing half-committed
                pass
            assert len(blobs) >= 5
            fill_up(blocks)
            for key in list(blobs)[::2]:
                c.delete(key)
                del blobs[key]
            time.sleep(2.1)  # gc spares what is younger than the cutoff's second, and the one before
            report = c.gc(grace_s=0)
            assert report.deleted_chunks > 0 and not report.skipped_servers
            assert report.reclaimed_bytes > 0
            c.put("ns/after", b"a" * 100_000)  # space is back
            blobs["ns/after"] = b"a" * 100_000
            assert all(bytes(c.get(k)) == v for k, v in blobs.items())
        finally:
            c.close()
