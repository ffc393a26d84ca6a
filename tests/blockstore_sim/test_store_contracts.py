"""The chunk stores pass the ``ChunkStore`` contract: ``VolumeStore`` on local disk, and
``RemoteChunkStore`` against a real chunk server on loopback."""

from __future__ import annotations

import pytest

from blobtier.blockstore_sim.chunk_server import ChunkServer
from blobtier.blockstore_sim.remote import RemoteChunkStore
from blobtier.blockstore_sim.volume import VolumeStore
from tests.contracts.chunk_store import ChunkStoreContract


class TestVolumeStore(ChunkStoreContract):
    refuses_over_max = False  # its limit (4 GiB) is more than a test should write

    @pytest.fixture
    def store(self, tmp_path):
        s = VolumeStore(str(tmp_path / "vol"), writable=True)
        yield s
        s.close()

    def fail(self, store: VolumeStore) -> None:
        store.close()

    def stored(self, store: VolumeStore) -> tuple[int, int]:
        stats = store.stats()
        return stats["chunks"], stats["bytes"]


class TestRemoteChunkStore(ChunkStoreContract):
    @pytest.fixture
    def store(self, tmp_path):
        self.server = ChunkServer(str(tmp_path / "server"))
        s = RemoteChunkStore(self.server.address, timeout_s=30)
        yield s
        s.close()
        self.server.stop(0)

    def fail(self, store: RemoteChunkStore) -> None:
        self.server.stop(0)

    def stored(self, store: RemoteChunkStore) -> tuple[int, int]:
        stats = self.server.store.stats()
        return stats["chunks"], stats["bytes"]
