"""Faults in the embedded block layer: flipped bytes, lost replicas, full disk, crashes."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

import blobtier
from blobtier import ChecksumError, TierUnavailable


def replica_file_offset(client, key: str, index: int, replica: int) -> tuple[str, int]:
    """(volume file, byte offset) of one replica of one chunk of ``key``."""
    rec = client._metadata.get(key)
    sid = rec.placement[index][replica]
    store = client._blocks.servers[sid]
    vol, offset, _, _, _ = store._locate(rec.chunk_key(index).digest())
    return store._path(vol, "dat"), offset


def flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


def test_corrupt_replica_is_bypassed_and_counted(region):
    data = os.urandom(200_000)
    with blobtier.connect(region) as c:
        c.put("ns/c", data)
        path, off = replica_file_offset(c, "ns/c", 0, 0)
    flip(path, off + 1234)
    with blobtier.connect(region) as c:
        assert bytes(c.get("ns/c")) == data
        assert c.stats()["origin"]["corrupt"] == 1


def test_every_replica_corrupt_raises_checksum_error_naming_the_key(region):
    with blobtier.connect(region) as c:
        c.put("ns/c", os.urandom(50_000))
        spots = [replica_file_offset(c, "ns/c", 0, r) for r in range(3)]
    for path, off in spots:
        flip(path, off + 10)
    with blobtier.connect(region) as c, pytest.raises(ChecksumError, match="ns/c"):
        c.get("ns/c")


def test_deleted_replica_directory_does_not_stop_reads(region):
    blobs = {f"ns/{i}": os.urandom(30_000) for i in range(30)}
    with blobtier.connect(region) as c:
        c.put_many(blobs)
    shutil.rmtree(os.path.join(region, "blocks", "002"))
    with blobtier.connect(region) as c:
        assert all(bytes(c.get(k)) == v for k, v in blobs.items())
        assert c.stats()["origin"]["errors"] > 0


def test_full_disk_fails_the_write_and_keeps_serving(region, monkeypatch):
    with blobtier.connect(region) as c:
        c.put("ns/before", b"committed")
        real = os.pwritev

        def enospc(fd, buffers, offset):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "pwritev", enospc)
        with pytest.raises(TierUnavailable, match="No space"):
            c.put("ns/during", b"x" * 5000)
        assert not c.exists("ns/during")
        assert bytes(c.get("ns/before")) == b"committed"
        monkeypatch.setattr(os, "pwritev", real)
        c.put("ns/after", b"space again")
    with blobtier.connect(region) as c:
        assert bytes(c.get("ns/after")) == b"space again"


WRITER = """
import sys, os, blobtier
c = blobtier.connect(sys.argv[1], client={"chunk_size": "64KiB"})
i = 0
while True:
    batch = [(f"ns/{i + j:06d}", os.urandom(1000 + (i + j) % 200_000)) for j in range(8)]
    c.put_many([(k, v + k.encode()) for k, v in batch])
    i += 8
    print(i, flush=True)
"""


def test_kill_9_mid_write_loses_nothing_committed(region):
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(WRITER), region],
                            stdout=subprocess.PIPE, text=True)
    acknowledged = 0
    try:
        while acknowledged < 400:
            acknowledged = int(proc.stdout.readline())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with blobtier.connect(region) as c:
        infos = c.ls("ns/")
        assert len(infos) >= acknowledged
        for info in infos:
            data = bytes(c.get(info.key))
            assert data.endswith(info.key.encode()) and len(data) == info.size
        c.put("ns/next", b"the region takes writes after recovery")
        report = c.gc(grace_s=0)
        assert report.live_chunks > 0
