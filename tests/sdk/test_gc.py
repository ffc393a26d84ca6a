from __future__ import annotations

import os
import threading
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


def test_gc_with_no_grace_collects_chunks_written_a_moment_ago(client):
    replicas = client.config.block.replicas
    for round_ in range(3):  # three rounds: one that straddles a second boundary proves nothing
        key = f"ns/a{round_}"
        client.put(key, os.urandom(100_000))  # two chunks
        client.put(key, b"new")  # ... garbage a moment later
        client.put("ns/gone", b"x")
        client.delete("ns/gone")
        report = client.gc(grace_s=0)
        assert report.deleted_chunks == 3 * replicas and report.spared_young == 0
        assert stored(client) == (round_ + 1) * replicas
        assert bytes(client.get(key)) == b"new"


def test_gc_grace_is_never_cut_short(client, monkeypatch):
    client.put("ns/a", b"old")
    written = time.time()
    client.put("ns/a", b"new")
    grace = 30.0
    monkeypatch.setattr(gc, "time", SimpleNamespace(time=lambda: written + grace - 0.01))
    assert client.gc(grace_s=grace).deleted_chunks == 0  # whole-second write times round up
    monkeypatch.setattr(gc, "time", SimpleNamespace(time=lambda: written + grace + 1.01))
    assert client.gc(grace_s=grace).deleted_chunks == client.config.block.replicas


def test_gc_with_no_grace_never_takes_a_write_in_flight(client):
    """Chunks are listed before the writes in progress are noted and before the metadata
    is listed, so a write that commits while gc runs keeps every chunk."""
    stop = threading.Event()
    written: dict[str, bytes] = {}

    def write() -> None:
        i = 0
        while not stop.is_set():
            data = os.urandom(70_000 + i % 3)
            client.put(f"ns/w{i % 4}", data)
            written[f"ns/w{i % 4}"] = data
            i += 1

    t = threading.Thread(target=write)
    t.start()
    try:
        for _ in range(15):
            client.gc(grace_s=0)
            for key in list(written):
                got = bytes(client.get(key))
                assert len(got) in (70_000, 70_001, 70_002)  # a whole version, its chunks intact
    finally:
        stop.set()
        t.join(30)
    for key, data in written.items():
        assert bytes(client.get(key)) == data
