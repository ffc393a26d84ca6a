"""``gc`` gives disk space back: the volumes of deleted and overwritten blobs are compacted."""

from __future__ import annotations

import os
import time

import blobtier


def block_file_bytes(region: str) -> int:
    """Bytes of every volume file (data and index) of the region's chunk servers."""
    total = 0
    for dirpath, _, names in os.walk(os.path.join(region, "blocks")):
        total += sum(os.path.getsize(os.path.join(dirpath, n)) for n in names
                     if n.endswith((".dat", ".idx")))
    return total


def age_past_cutoff() -> None:
    time.sleep(2.1)  # gc spares chunks written in the cutoff's second and the one before


def test_deleting_half_then_gc_halves_the_bytes_on_disk(region):
    blobs = {f"ns/{i}": os.urandom(50_000 + i) for i in range(40)}
    with blobtier.connect(region, client={"chunk_size": "64KiB"}) as c:
        c.put_many(blobs)
        before = block_file_bytes(region)
        for key in list(blobs)[::2]:
            c.delete(key)
            del blobs[key]
        age_past_cutoff()
        report = c.gc(grace_s=0)
        assert report.deleted_chunks == 20 * c.config.block.replicas
        assert block_file_bytes(region) <= 0.55 * before
        assert report.reclaimed_bytes >= 0.45 * before
        assert all(bytes(c.get(k)) == v for k, v in blobs.items())
    with blobtier.connect(region) as c:
        assert all(bytes(c.get(k)) == v for k, v in blobs.items())


def test_rewriting_the_same_blobs_ten_times_keeps_about_one_copy(region):
    with blobtier.connect(region, client={"chunk_size": "64KiB"}) as c:
        for round_ in range(10):
            blobs = {f"ns/{i}": os.urandom(5_000) for i in range(200)}
            c.put_many(blobs)
            if round_ == 0:
                one_copy = block_file_bytes(region)
        assert block_file_bytes(region) > 9 * one_copy
        age_past_cutoff()
        c.gc(grace_s=0)
        assert block_file_bytes(region) <= 1.2 * one_copy
        assert all(bytes(c.get(k)) == v for k, v in blobs.items())


def test_a_reader_within_the_grace_period_keeps_reading_through_compaction(region):
    old = {f"ns/old/{i}": os.urandom(30_000) for i in range(20)}
    v1 = os.urandom(300_000)
    with blobtier.connect(region, client={"chunk_size": "64KiB"}) as w:
        w.put_many(old)
        for key in old:
            w.delete(key)
        time.sleep(3.1)  # those chunks are now older than the grace period below
        w.put("ns/x", v1)
        with blobtier.connect(region) as reader, reader.open("ns/x") as f:
            head = f.read(100_000)  # the reader has version 1 open
            w.put("ns/x", os.urandom(300_000))  # version 1 is no longer referenced...
            report = w.gc(grace_s=1.0)  # ...but younger than the grace period: spared
            assert report.deleted_chunks == 20 * w.config.block.replicas
            assert report.spared_young > 0 and report.reclaimed_bytes > 0
            assert head + f.read() == v1
