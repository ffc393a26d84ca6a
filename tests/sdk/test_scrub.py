"""Deep scrub of an embedded region: replicas flipped and deleted on two of three servers
are counted exactly, ``repair`` brings every chunk that has a good copy back to three good
replicas, a chunk with none is reported lost and never rewritten, and readers reading all
the while get the right bytes."""

from __future__ import annotations

import os
import threading

import pytest
from prometheus_client import CollectorRegistry

import blobtier
from blobtier.blockstore_sim.volume import VolumeStore
from blobtier.cli import main
from blobtier.errors import ChecksumError, InvalidRequest, RegionLocked
from blobtier.sdk.scrub import ScrubMetrics
from tests.scrub_support import LOST, apply_plan, blobs, flip_in_dir, good_counts

SETTINGS = {"block": {"servers": 3}, "client": {"chunk_size": "64KiB"},
            "cache": {"l1_bytes": 0, "daemon": "off"}}  # every read goes to the replicas


def server_dir(region: str, sid: int) -> str:
    return os.path.join(region, "blocks", f"{sid:03d}")


@pytest.fixture
def damaged(region):
    """A region of six blobs whose replicas were damaged as ``PLAN`` says; the writer is closed."""
    data = blobs()
    with blobtier.connect(region, **SETTINGS) as c:
        c.put_many(data)
        records = [c._record(k) for k in data]
    stores = {sid: VolumeStore(server_dir(region, sid), writable=True) for sid in range(3)}
    try:
        expected = apply_plan(records, list(data.values()),
                              flip=lambda sid, b: flip_in_dir(server_dir(region, sid), b),
                              delete=lambda sid, d: stores[sid].delete_many([d]))
    finally:
        for s in stores.values():
            s.close()
    return data, records, expected


def read_each_server(region: str, records) -> dict[tuple[int, int], int]:
    """(blob, chunk) -> how many servers hold its right bytes, each server's disk read directly."""
    return good_counts([VolumeStore(server_dir(region, sid)) for sid in range(3)], records)


def test_scrub_counts_exactly_then_repair_restores_every_replica(region, damaged):
    data, records, expected = damaged
    registry = CollectorRegistry()
    metrics = ScrubMetrics(registry)
    with blobtier.connect(region, **SETTINGS) as c:
        report = c.scrub("ds/", metrics=metrics)
        assert not c._wiring.stores.lock.held  # reading took no lock
    assert report.blobs == 6 and report.chunks == expected.chunks
    assert {sid: {"good": t.good, "missing": t.missing, "corrupt": t.corrupt}
            for sid, t in report.servers.items()} == expected.per_server
    assert report.total.unreachable == 0 and report.total.repaired == 0
    assert report.degraded == 6 and report.lost == 1 and report.short == 6
    assert report.lost_chunks == [f"ds/{LOST[0]}#{LOST[1]}"]
    assert not report.clean
    assert registry.get_sample_value("blobtier_scrub_replicas_total", {"state": "corrupt"}) == 7
    assert registry.get_sample_value("blobtier_scrub_replicas_total", {"state": "missing"}) == 5
    assert registry.get_sample_value("blobtier_scrub_lost_chunks_total") == 1
    # Scrubbing only looked: the disks are as damaged as before.
    before = read_each_server(region, records)
    assert sum(n < 3 for n in before.values()) == 6

    with blobtier.connect(region, **SETTINGS) as c:
        fixed = c.scrub("ds/", repair=True, metrics=metrics)
    assert fixed.total.repaired == expected.repaired == 9 and fixed.total.repair_failed == 0
    assert fixed.lost == 1 and fixed.short == 1
    assert registry.get_sample_value("blobtier_scrub_repaired_total") == 9
    after = read_each_server(region, records)
    assert {k: n for k, n in after.items() if k != LOST} == {k: 3 for k in after if k != LOST}
    assert after[LOST] == 0  # never "repaired" with bad bytes
    lost_rec = records[LOST[0]]
    digest = lost_rec.chunk_key(LOST[1]).digest()
    for sid in range(3):  # the corrupt copies were not rewritten either: each server's own record
        store = VolumeStore(server_dir(region, sid))  # of what it was sent still says the true xxh3
        try:
            if store.exists(digest):
                assert store.stored_checksum(digest) == lost_rec.checksums[LOST[1]]
        finally:
            store.close()

    with blobtier.connect(region, **SETTINGS) as c:
        again = c.scrub("ds/")
        assert again.degraded == 1 and again.lost == 1 and again.total.good == 3 * 18 - 3
        for key, blob in data.items():
            if key == f"ds/{LOST[0]}":
                with pytest.raises(ChecksumError):
                    c.get(key)
            else:
                assert bytes(c.get(key)) == blob


def test_repair_while_readers_read(region, damaged):
    data, records, _ = damaged
    readable = {k: v for k, v in data.items() if k != f"ds/{LOST[0]}"}
    done = threading.Event()
    wrong: list[str] = []
    passes = [0, 0]

    def reader(slot: int) -> None:
        with blobtier.connect(region, **SETTINGS) as c:
            while not done.is_set() or passes[slot] == 0:
                for key, blob in readable.items():
                    if bytes(c.get(key)) != blob:
                        wrong.append(key)
                passes[slot] += 1

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    try:
        with blobtier.connect(region, **SETTINGS) as c:
            report = c.scrub(repair=True)
    finally:
        done.set()
        for t in threads:
            t.join()
    assert report.total.repaired == 9 and wrong == [] and min(passes) >= 1
    assert sum(n == 3 for n in read_each_server(region, records).values()) == 17


def test_repair_needs_the_writer_lock_only_to_write(region, damaged):
    with blobtier.connect(region, **SETTINGS) as writer:
        writer.put("other/x", b"the writer holds the lock")
        with blobtier.connect(region, **SETTINGS) as c:
            assert c.scrub("other/", repair=True).clean  # nothing to write: no lock needed
            assert c.scrub("ds/").degraded == 6
            with pytest.raises(RegionLocked):
                c.scrub("ds/", repair=True)


def test_prefix_and_blobs_registered_by_reference(region, damaged, tmp_path):
    (tmp_path / "origin").mkdir()
    (tmp_path / "origin" / "a.bin").write_bytes(os.urandom(1000))
    with blobtier.connect(region, **SETTINGS) as c:
        from blobtier.sdk.ingest import register

        register(c, f"file://{tmp_path / 'origin'}", "ref/")
        ref = c.scrub("ref/")
        assert ref.blobs == 1 and ref.by_reference == 1 and ref.chunks == 0 and ref.clean
        one = c.scrub("ds/4")
        assert one.blobs == 1 and one.chunks == 3 and one.total.corrupt == 1
        narrow = c.scrub("ds/", threads=1)  # 4 chunks in flight: windows across blob boundaries
        assert (narrow.chunks, narrow.total, narrow.lost_chunks) == (18, c.scrub("ds/").total, ["ds/5#0"])
        with pytest.raises(InvalidRequest, match="threads"):
            c.scrub("ds/", threads=0)


def test_cli_scrub_prints_a_table_and_says_by_its_status(region, damaged, capsys, tmp_path,
                                                         monkeypatch):
    monkeypatch.setenv("BLOBTIER_BLOCK_SERVERS", "3")
    metrics_file = tmp_path / "scrub.prom"
    assert main(["-r", region, "scrub", "ds/", "-q", "--metrics-file", str(metrics_file)]) == 1
    out = capsys.readouterr().out
    assert "scrub ds/: 6 blobs, 18 chunks" in out
    assert "all             42        5        7           0" in out
    assert "12 healthy, 6 degraded, 1 lost; 6 still short" in out and "lost: ds/5#0" in out
    assert 'blobtier_scrub_replicas_total{state="corrupt"} 7.0' in metrics_file.read_text()
    assert main(["-r", region, "scrub", "--repair", "-q"]) == 1  # one chunk stays lost
    out = capsys.readouterr().out
    assert "repaired" in out and "all             42        5        7           0         9" in out
    assert main(["-r", region, "scrub", "ds/0", "-q"]) == 0  # that blob is whole again
