"""Deep scrub against real gRPC chunk servers: the same damage as the embedded test,
counted exactly and repaired over the wire (no writer lock), then `blobtier scrub
--repair` against a region started by `blobtier up`."""

from __future__ import annotations

import os
import threading

import pytest

import blobtier
from blobtier import runstate as state
from blobtier.blockstore_sim.chunk_server import ChunkServer
from blobtier.blockstore_sim.remote import RemoteChunkStore
from blobtier.blockstore_sim.volume import VolumeStore
from blobtier.cli import main
from tests.integration.region_support import blobtier as run_cli
from tests.integration.region_support import free_base_port, kill_leftovers, write_config
from tests.scrub_support import LOST, apply_plan, blobs, flip_in_dir, good_counts

NO_L1 = {"l1_bytes": 0, "daemon": "off"}


@pytest.fixture
def servers(tmp_path):
    started = [ChunkServer(str(tmp_path / f"s{i}"), server_id=i) for i in range(3)]
    yield started
    for s in started:
        s.stop(0)


def good_replicas(addresses: list[str], records) -> dict[tuple[int, int], int]:
    """(blob, chunk) -> servers holding its right bytes, each asked directly over gRPC."""
    return good_counts([RemoteChunkStore(a, timeout_s=10) for a in addresses], records)


def test_scrub_and_repair_over_grpc_while_readers_read(region, servers):
    endpoints = [s.address for s in servers]
    settings = {"block": {"endpoints": endpoints}, "client": {"chunk_size": "64KiB"}, "cache": NO_L1}
    data = blobs()
    with blobtier.connect(region, **settings) as c:
        c.put_many(data)
        records = [c._record(k) for k in data]
    remotes = {i: RemoteChunkStore(a, timeout_s=10) for i, a in enumerate(endpoints)}
    expected = apply_plan(records, list(data.values()),
                          flip=lambda sid, b: flip_in_dir(servers[sid].root, b),
                          delete=lambda sid, d: remotes[sid].delete_many([d]))
    for r in remotes.values():
        r.close()

    with blobtier.connect(region, **settings) as c:
        report = c.scrub()
    assert {sid: {"good": t.good, "missing": t.missing, "corrupt": t.corrupt}
            for sid, t in report.servers.items()} == expected.per_server
    assert report.degraded == expected.degraded == 6 and report.lost == 1
    assert report.total.unreachable == 0

    readable = {k: v for k, v in data.items() if k != f"ds/{LOST[0]}"}
    done, wrong, passes = threading.Event(), [], [0]

    def reader() -> None:
        with blobtier.connect(region, **settings) as rc:
            while not done.is_set() or passes[0] == 0:
                wrong.extend(k for k, v in zip(readable, rc.get_many(list(readable)))
                             if bytes(v) != readable[k])
                passes[0] += 1

    t = threading.Thread(target=reader)
    t.start()
    try:
        with blobtier.connect(region, **settings) as c:
            fixed = c.scrub(repair=True)
            assert not c._wiring.stores.lock.held  # chunk servers take writes: no writer lock
    finally:
        done.set()
        t.join()
    assert wrong == [] and passes[0] >= 1
    assert fixed.total.repaired == expected.repaired and fixed.total.repair_failed == 0
    assert fixed.lost == 1 and fixed.short == 1
    after = good_replicas(endpoints, records)
    assert after[LOST] == 0 and all(n == 3 for k, n in after.items() if k != LOST)


def test_a_server_that_is_down_is_unreachable_not_missing(region, servers):
    endpoints = [s.address for s in servers]
    settings = {"block": {"endpoints": endpoints, "max_retries": 0}, "cache": NO_L1}
    with blobtier.connect(region, **settings) as c:
        c.put("ds/one", os.urandom(5000))
    servers[1].faults.update(down=True)
    with blobtier.connect(region, **settings) as c:
        report = c.scrub(repair=True)
    assert report.total.unreachable == 1 and report.total.missing == 0
    assert report.total.repaired == 0 and report.short == 1 and not report.clean


def test_cli_scrub_repair_against_a_running_region(tmp_path):
    root = str(tmp_path / "region")
    path = write_config(tmp_path / "region.toml", root, free_base_port(),
                        "flash_nodes = 0\ndaemon = false\n")
    data = blobs()
    try:
        up = run_cli("up", "-c", path)
        assert up.returncode == 0, up.stderr
        with blobtier.connect(path, cache=NO_L1) as c:
            c.put_many(data)
            records = [c._record(k) for k in data]
        dirs = {i: os.path.join(root, "blocks", f"{i:03d}") for i in range(3)}
        remotes = {s: RemoteChunkStore(rec.address, timeout_s=10)
                   for s, rec in enumerate(state.read(root).of_kind("block"))}
        expected = apply_plan(records, list(data.values()),
                              flip=lambda sid, b: flip_in_dir(dirs[sid], b),
                              delete=lambda sid, d: remotes[sid].delete_many([d]))
        for r in remotes.values():
            r.close()
        scrub = run_cli("-r", path, "scrub", "--repair", "--threads", "4")
        assert scrub.returncode == 1, scrub.stderr  # the lost chunk keeps it from being clean
        assert "repaired" in scrub.stdout and "1 lost" in scrub.stdout
        total = scrub.stdout.splitlines()[5].split()
        assert total[0] == "all" and total[5:] == [str(expected.repaired), "0"]
        assert main(["down", "-c", path]) == 0
    finally:
        kill_leftovers(root)
    after = good_counts([VolumeStore(d) for d in dirs.values()], records)  # down: each disk directly
    assert after[LOST] == 0 and all(n == 3 for k, n in after.items() if k != LOST)
