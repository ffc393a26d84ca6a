"""A chunk server compacts when told (the Compact RPC), and ``gc`` tells every server."""

from __future__ import annotations

import os
import time

import pytest

import blobtier
from blobtier.blockstore_sim.chunk_server import ChunkServer
from blobtier.blockstore_sim.remote import RemoteChunkStore
from blobtier.checksum import xxh3
from blobtier.errors import Forbidden, InvalidRequest
from blobtier.rpc.auth import TokenTable
from tests.rpc.test_auth import table_file, token


def chunks(n: int) -> list[tuple[bytes, bytes, int]]:
    out = []
    for i in range(n):
        data = os.urandom(20_000)
        out.append((i.to_bytes(16, "big"), data, xxh3(data)))
    return out


def test_compact_rpc_gives_back_the_space_of_deleted_chunks(tmp_path):
    server = ChunkServer(str(tmp_path / "s"))
    store = RemoteChunkStore(server.address, timeout_s=10)
    try:
        items = chunks(40)
        store.put_many(items)
        before = server.store.stats()["file_bytes"]
        store.delete_many([d for d, _, _ in items[::2]])
        report = store.compact()
        assert report.volumes == 1 and report.reclaimed > 0.45 * before
        assert server.store.stats()["file_bytes"] <= 0.55 * before
        assert all(bytes(store.get(d)) == data for d, data, _ in items[1::2])
        assert not any(store.exists(d) for d, _, _ in items[::2])
        with pytest.raises(InvalidRequest, match="min_dead_ratio"):
            store.compact(float("nan"))
        assert store.compact(0.0).volumes == 0  # nothing dead is left
    finally:
        store.close()
        server.stop(0)


def test_compact_needs_the_write_right(tmp_path):
    server = ChunkServer(str(tmp_path / "s"), auth=TokenTable.load(table_file(tmp_path)))
    try:
        reader = RemoteChunkStore(server.address, token=token("reader"))
        writer = RemoteChunkStore(server.address, token=token("writer"))
        with pytest.raises(Forbidden):
            reader.compact()
        assert writer.compact().volumes == 0
        reader.close()
        writer.close()
    finally:
        server.stop(0)


def test_gc_compacts_every_chunk_server(region, tmp_path):
    servers = [ChunkServer(str(tmp_path / f"s{i}"), server_id=i) for i in range(3)]
    try:
        blobs = {f"ns/{i}": os.urandom(40_000) for i in range(30)}
        with blobtier.connect(region, block={"endpoints": [s.address for s in servers]},
                              client={"chunk_size": "64KiB"}) as c:
            c.put_many(blobs)
            before = sum(s.store.stats()["file_bytes"] for s in servers)
            for key in list(blobs)[::2]:
                c.delete(key)
                del blobs[key]
            time.sleep(2.1)  # gc spares chunks written in the cutoff's second and the one before
            report = c.gc(grace_s=0)
            assert report.reclaimed_bytes > 0.4 * before
            assert sum(s.store.stats()["file_bytes"] for s in servers) <= 0.55 * before
            assert all(bytes(c.get(k)) == v for k, v in blobs.items())
    finally:
        for s in servers:
            s.stop(0)
