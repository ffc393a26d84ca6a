from __future__ import annotations

import os

import pytest

from blobtier.blockstore_sim.replicated import ReplicatedBlockStore
from blobtier.blockstore_sim.volume import VolumeStore
from blobtier.checksum import xxh3
from blobtier.chunks import ChunkKey
from blobtier.errors import BlobNotFound, ChecksumError, InvalidRequest
from blobtier.metadata.schema import BlobRecord
from blobtier.metrics import TierStats

CHUNK = 4096
BLOB_ID = b"\x07" * 16


@pytest.fixture
def servers(tmp_path):
    stores = {sid: VolumeStore(str(tmp_path / f"server{sid}"), writable=True) for sid in range(5)}
    yield stores
    for s in stores.values():
        s.close()


@pytest.fixture
def stats():
    return TierStats()


@pytest.fixture
def block(servers, stats):
    b = ReplicatedBlockStore(servers, replicas=3, stats=stats)
    yield b
    b._pool.shutdown(wait=True)  # the servers fixture closes the stores


def blob(n_chunks: int = 4) -> bytes:
    return b"".join(bytes([(i * 13 + j) % 256 for j in range(256)]) * (CHUNK // 256)
                    for i in range(n_chunks))[:n_chunks * CHUNK - 100]


def write_blob(block: ReplicatedBlockStore, data: bytes, version: int = 1) -> BlobRecord:
    chunks = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]
    keys = [ChunkKey(BLOB_ID, version, i) for i in range(len(chunks))]
    placement = block.write_chunks([(k, c, xxh3(c)) for k, c in zip(keys, chunks)])
    return BlobRecord(BLOB_ID, version, len(data), CHUNK, [xxh3(c) for c in chunks], placement)


def read_all(block: ReplicatedBlockStore, rec: BlobRecord) -> bytes:
    return b"".join(bytes(v) for v in block.read_many([(rec, i) for i in range(rec.n_chunks)]))


def corrupt(server: VolumeStore, digest: bytes) -> None:
    vol, offset, length, _, _ = server._index[digest]
    with open(os.path.join(server.root, f"{vol:08d}.dat"), "r+b") as f:
        f.seek(offset + length // 2)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))


def test_write_places_three_distinct_servers(block, servers):
    rec = write_blob(block, blob(6))
    for i, where in enumerate(rec.placement):
        assert len(where) == 3 and len(set(where)) == 3
        assert set(where) <= set(servers)
        digest = rec.chunk_key(i).digest()
        holders = {sid for sid, s in servers.items() if s.exists(digest)}
        assert holders == set(where)


def test_placement_is_deterministic(servers):
    a = ReplicatedBlockStore(servers, replicas=3)
    b = ReplicatedBlockStore(dict(reversed(list(servers.items()))), replicas=3)
    try:
        keys = [ChunkKey(BLOB_ID, 1, i) for i in range(50)]
        assert [a.place(k) for k in keys] == [b.place(k) for k in keys]
        assert len({a.place(k) for k in keys}) > 1  # not everything on the same servers
    finally:
        a._pool.shutdown()
        b._pool.shutdown()


def test_read_many_returns_bytes(block):
    data = blob(5)
    rec = write_blob(block, data)
    assert read_all(block, rec) == data
    assert bytes(block.read_many([(rec, 4)])[0]) == data[4 * CHUNK:]


def test_corrupt_first_replica_fails_over(block, servers, stats):
    data = blob(3)
    rec = write_blob(block, data)
    first = rec.placement[1][0]
    corrupt(servers[first], rec.chunk_key(1).digest())
    assert read_all(block, rec) == data
    assert stats.snapshot()["origin"]["corrupt"] == 1
    assert stats.snapshot()["origin"]["errors"] == 0


def test_all_replicas_corrupt(block, servers):
    rec = write_blob(block, blob(2))
    digest = rec.chunk_key(0).digest()
    for sid in rec.placement[0]:
        corrupt(servers[sid], digest)
    with pytest.raises(ChecksumError):
        block.read_many([(rec, 0)])
    assert bytes(block.read_many([(rec, 1)])[0]) == blob(2)[CHUNK:]


def test_missing_everywhere(block, servers, stats):
    rec = write_blob(block, blob(2))
    block.delete_chunks([(rec.chunk_key(0), rec.placement[0])])
    with pytest.raises(BlobNotFound):
        block.read_many([(rec, 0)])
    assert stats.snapshot()["origin"]["errors"] == 3


def test_never_written(block):
    data = b"x" * 10
    rec = BlobRecord(b"\x09" * 16, 1, len(data), CHUNK, [xxh3(data)], [(0, 1, 2)])
    with pytest.raises(BlobNotFound):
        block.read_many([(rec, 0)])


def test_deleted_server_is_skipped(servers, stats):
    writer = ReplicatedBlockStore(servers, replicas=3)
    try:
        data = blob(4)
        rec = write_blob(writer, data)
    finally:
        writer._pool.shutdown()
    gone = rec.placement[0][0]
    reader = ReplicatedBlockStore({s: v for s, v in servers.items() if s != gone}, replicas=3,
                                  stats=stats)
    try:
        assert read_all(reader, rec) == data
        assert stats.snapshot()["origin"]["errors"] >= 1
    finally:
        reader._pool.shutdown()


def test_too_few_writable_servers(servers):
    b = ReplicatedBlockStore(servers, replicas=3, writable_ids=[0, 1])
    try:
        with pytest.raises(InvalidRequest):
            b.write_chunks([(ChunkKey(BLOB_ID, 1, 0), b"x", xxh3(b"x"))])
    finally:
        b._pool.shutdown()


def test_writable_ids_restrict_placement(servers):
    b = ReplicatedBlockStore(servers, replicas=3, writable_ids=[1, 2, 3])
    try:
        rec = write_blob(b, blob(3))
        assert all(set(p) == {1, 2, 3} for p in rec.placement)
        assert not servers[0].exists(rec.chunk_key(0).digest())
    finally:
        b._pool.shutdown()
