"""Write quorum, health-aware placement and replica order over local stores."""

from __future__ import annotations

import errno

import pytest

from blobtier.blockstore_sim.replicated import ReplicatedBlockStore
from blobtier.blockstore_sim.volume import VolumeStore
from blobtier.checksum import xxh3
from blobtier.chunks import ChunkKey
from blobtier.errors import InvalidRequest, TierUnavailable
from blobtier.metadata.schema import BlobRecord


class FullDisk(VolumeStore):
    """A volume whose disk is full: every write fails."""

    def put_many(self, items):
        raise TierUnavailable(f"chunk store {self.root}: {OSError(errno.ENOSPC, 'No space left')}")


def stores(tmp_path, n: int, full: set[int] = frozenset()) -> dict[int, VolumeStore]:
    return {i: (FullDisk if i in full else VolumeStore)(str(tmp_path / f"s{i}"), writable=True)
            for i in range(n)}


def chunks(n: int) -> list[tuple[ChunkKey, bytes, int]]:
    out = []
    for i in range(n):
        data = bytes([i]) * 1000
        out.append((ChunkKey(b"\x05" * 16, 1, i), data, xxh3(data)))
    return out


def test_placement_is_in_rank_order(tmp_path):
    block = ReplicatedBlockStore(stores(tmp_path, 5), 3)
    try:
        items = chunks(20)
        assert block.write_chunks(items) == [block.place(k) for k, _, _ in items]
    finally:
        block.close()


def test_quorum_all_fails_cleanly_when_a_replica_cannot_be_written(tmp_path):
    block = ReplicatedBlockStore(stores(tmp_path, 3, full={1}), 3)
    try:
        with pytest.raises(TierUnavailable, match="2 of 3 replicas durable.*No space"):
            block.write_chunks(chunks(3))
    finally:
        block.close()


def test_a_lower_quorum_commits_and_lists_the_failed_replica_last(tmp_path):
    block = ReplicatedBlockStore(stores(tmp_path, 3, full={1}), 3, write_quorum=2)
    try:
        items = chunks(4)
        placed = block.write_chunks(items)
        assert all(p[-1] == 1 and sorted(p) == [0, 1, 2] for p in placed)
        rec = BlobRecord(b"\x05" * 16, 1, 4000, 1000, [h for _, _, h in items], placed)
        assert [bytes(v) for v in block.read_many([(rec, i) for i in range(4)])] == [
            d for _, d, _ in items]
    finally:
        block.close()


def test_a_failed_server_is_replaced_by_the_next_ranked(tmp_path):
    block = ReplicatedBlockStore(stores(tmp_path, 5, full={2}), 3)
    try:
        placed = block.write_chunks(chunks(10))
        assert all(2 not in p and len(set(p)) == 3 for p in placed)
        assert 2 in block.health.benched()
        again = block.write_chunks(chunks(10))  # benched: not even tried this time
        assert all(2 not in p for p in again)
    finally:
        block.close()


def test_quorum_must_fit_the_replicas(tmp_path):
    servers = stores(tmp_path, 3)
    try:
        with pytest.raises(InvalidRequest, match="write quorum"):
            ReplicatedBlockStore(servers, 3, write_quorum=4)
    finally:
        for s in servers.values():
            s.close()
