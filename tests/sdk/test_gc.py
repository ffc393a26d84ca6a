from __future__ import annotations

import os
import time
from types import SimpleNamespace

import pytest

from blobtier.sdk import gc


def stored(client) -> int:
    return sum(len(s.digests()) for s in client._blocks.servers.values())


def test_gc_reclaims_overwritten_and_deleted_blobs_after_the_grace_period(client, monkeypatch):
    client.put("ns/keep", os.urandom(200_000))
    client.put("ns/over", os.urandom(200_000))
    client.put("ns/over", os.urandom(10))
    client.put("ns/gone", os.urandom(1000))
    client.delete("ns/gone")
    replicas = client.config.block.replicas
    live = (4 + 1) * replicas  # ns/keep has 4 chunks of 64 KiB, ns/over now 1
    assert stored(client) > live
    assert client.gc().deleted_chunks == 0  # everything is younger than the grace period
    monkeypatch.setattr(gc, "time", SimpleNamespace(time=lambda: time.time() + 7200))
    report = client.gc()
    assert report.live_chunks == 5 and report.deleted_chunks == 5 * replicas
    assert stored(client) == live
    assert len(bytes(client.get("ns/keep"))) == 200_000 and len(bytes(client.get("ns/over"))) == 10


def test_gc_spares_writes_in_progress(client, monkeypatch):
    monkeypatch.setattr(gc, "time", SimpleNamespace(time=lambda: time.time() + 7200))
    with client.open("ns/slow", "wb") as f:
        f.write(os.urandom(70 * 1024 * 1024))  # a group of chunks reaches the block store
        assert stored(client) > 0
        assert client.gc(grace_s=0).deleted_chunks == 0
    assert len(bytes(client.get("ns/slow"))) == 70 * 1024 * 1024


def test_only_the_writer_collects(region):
    import blobtier

    with blobtier.connect(region) as a:
        a.put("ns/x", b"x")
        with blobtier.connect(region) as b, pytest.raises(blobtier.RegionLocked):
            b.gc()
