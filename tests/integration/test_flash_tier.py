"""The flash tier (L3) between clients and real chunk servers, all on loopback.

Three flash nodes read through from three chunk servers; clients read with no L1, so every
read reaches L3. The chunk servers' own counters say what reached the block layer.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

import blobtier
from blobtier.blockstore_sim.chunk_server import ChunkServer
from blobtier.blockstore_sim.remote import RemoteChunkStore
from blobtier.blockstore_sim.replicated import ReadPolicy, ReplicatedBlockStore
from blobtier.config import FlashNodeConfig
from blobtier.flash_l3.service import FlashNode
from blobtier.sdk.routing import RoutingSource

CHUNK = 64 * 1024
NO_L1 = {"l1_bytes": 0, "daemon": "off"}


def node_source(endpoints: list[str]) -> RoutingSource:
    """What ``blobtier flash serve --block-endpoints`` builds, without hedging so that the
    chunk servers' byte counts are exact."""
    stores = {sid: RemoteChunkStore(addr, timeout_s=10) for sid, addr in enumerate(endpoints)}
    return RoutingSource(ReplicatedBlockStore(stores, 1, writable_ids=(),
                                              policy=ReadPolicy(hedge_after_ms=-1, max_retries=1)))


@pytest.fixture
def chunk_servers(tmp_path):
    started = [ChunkServer(str(tmp_path / f"chunks{i}"), server_id=i) for i in range(3)]
    yield started
    for s in started:
        s.stop(0)


@pytest.fixture
def flash_nodes(tmp_path, chunk_servers):
    endpoints = [s.address for s in chunk_servers]
    sources = [node_source(endpoints) for _ in range(3)]
    nodes = [FlashNode(FlashNodeConfig(str(tmp_path / f"flash{i}"), 64 << 20, region_bytes=4 << 20,
                                       node_id=i), src) for i, src in enumerate(sources)]
    yield nodes
    for node, src in zip(nodes, sources):
        node.stop(0)
        src.close()


def served(servers: list[ChunkServer]) -> tuple[int, int]:
    """(requests, bytes sent) of the chunk servers so far."""
    counters = [s.faults.counters() for s in servers]
    return sum(c["requests"] for c in counters), sum(c["bytes_sent"] for c in counters)


def connect(region: str, servers: list[ChunkServer], flash: list[str]) -> blobtier.Client:
    return blobtier.connect(region, block={"endpoints": [s.address for s in servers]},
                            flash={"endpoints": flash, "request_timeout_s": 10},
                            client={"chunk_size": "64KiB"}, cache=NO_L1)


def write_dataset(region: str, servers: list[ChunkServer], n: int = 24) -> dict[str, bytes]:
    blobs = {f"ds/{i:03d}": os.urandom(150_000 + 1000 * i) for i in range(n)}
    with blobtier.connect(region, block={"endpoints": [s.address for s in servers]},
                          client={"chunk_size": "64KiB"}, cache=NO_L1) as c:
        c.put_many(blobs)
    return blobs


def test_the_second_read_of_a_dataset_is_served_from_l3(region, chunk_servers, flash_nodes):
    blobs = write_dataset(region, chunk_servers)
    chunks = sum(-(-len(b) // CHUNK) for b in blobs.values())
    flash = [n.address for n in flash_nodes]
    with connect(region, chunk_servers, flash) as c:
        before = served(chunk_servers)
        assert [bytes(v) for v in c.get_many(list(blobs))] == list(blobs.values())
        first = served(chunk_servers)
        assert first[1] - before[1] == sum(map(len, blobs.values()))  # each chunk read once
        assert c.stats()["origin"]["hits"] == 0  # the nodes read through, not the client
    assert sum(n.readthrough.counters["fills"] for n in flash_nodes) == chunks
    assert all(n.cache.stats()["entries"] > 0 for n in flash_nodes)  # spread over the nodes
    with connect(region, chunk_servers, flash) as c:
        for key, data in blobs.items():
            assert bytes(c.get(key)) == data
        assert served(chunk_servers) == first  # the chunk servers saw no reads at all
        assert c.stats()["l3"]["hits"] == chunks and c.stats()["l3"]["misses"] == 0
    for node in flash_nodes:
        assert node.cache.check(deep=True) == []


def start_flash_process(root: str, endpoints: list[str], node_id: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "blobtier.cli", "flash", "serve", "--dir", root,
                             "--capacity", "64MiB", "--region-size", "4MiB", "--id", str(node_id),
                             "--block-endpoints", ",".join(endpoints)], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith(f"flash node {node_id} serving"), line
    return proc, line.split()[-1]


def test_a_flash_node_killed_mid_read_fails_no_read(region, chunk_servers, tmp_path, caplog):
    blobs = write_dataset(region, chunk_servers)
    endpoints = [s.address for s in chunk_servers]
    procs = []
    try:
        for i in range(3):
            procs.append(start_flash_process(str(tmp_path / f"fp{i}"), endpoints, i))
        flash = [addr for _, addr in procs]
        failures, reads = [], []
        one_pass = threading.Event()
        stop = threading.Event()

        def reader() -> None:
            with connect(region, chunk_servers, flash) as c:
                while not stop.is_set():
                    for key, data in blobs.items():
                        try:
                            ok = bytes(c.get(key)) == data
                        except Exception as exc:  # noqa: BLE001  (any failure is the finding)
                            failures.append(f"{key}: {exc!r}")
                            continue
                        reads.append(ok)
                    one_pass.set()

        threads = [threading.Thread(target=reader) for _ in range(2)]
        for t in threads:
            t.start()
        assert one_pass.wait(60)
        procs[1][0].send_signal(signal.SIGKILL)  # while both readers are reading
        procs[1][0].wait(30)
        done = len(reads)
        while len(reads) < done + 3 * len(blobs) and not failures:
            threading.Event().wait(0.01)
        stop.set()
        for t in threads:
            t.join(60)
        assert failures == []
        assert all(reads) and len(reads) > 4 * len(blobs)
        assert f"l3 node {procs[1][1]} skipped" in caplog.text  # they met the dead node, and read on
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)


READER = textwrap.dedent("""
    import hashlib, json, os, sys, time
    import blobtier
    region, go, keys = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    config = json.loads(sys.argv[4])
    with blobtier.connect(region, **config) as c:
        c.exists(keys[0])  # open everything before the start line
        while not os.path.exists(go):
            time.sleep(0.002)
        digest = hashlib.sha256(b"".join(bytes(v) for v in c.get_many(keys))).hexdigest()
        print(digest, c.stats()["origin"]["hits"], flush=True)
""")


def test_eight_processes_reading_the_same_cold_chunks_cause_one_origin_read_each(
        region, chunk_servers, flash_nodes, tmp_path):
    import json

    blobs = write_dataset(region, chunk_servers, n=12)
    chunks = sum(-(-len(b) // CHUNK) for b in blobs.values())
    go = str(tmp_path / "go")
    config = {"block": {"endpoints": [s.address for s in chunk_servers]},
              "flash": {"endpoints": [n.address for n in flash_nodes]},
              "client": {"chunk_size": "64KiB"}, "cache": NO_L1}
    before = served(chunk_servers)
    readers = [subprocess.Popen([sys.executable, "-c", READER, region, go, ",".join(blobs),
                                 json.dumps(config)], stdout=subprocess.PIPE, text=True)
               for _ in range(8)]
    try:
        open(go, "w").close()
        outputs = [r.communicate(timeout=120)[0].split() for r in readers]
    finally:
        for r in readers:
            if r.poll() is None:
                r.kill()
                r.wait()
    expected = hashlib.sha256(b"".join(blobs.values())).hexdigest()
    assert [o[0] for o in outputs] == [expected] * 8
    assert [int(o[1]) for o in outputs] == [0] * 8  # no reader went to the block layer itself
    assert sum(n.readthrough.counters["fills"] for n in flash_nodes) == chunks
    assert served(chunk_servers)[1] - before[1] == sum(map(len, blobs.values()))  # once per chunk
