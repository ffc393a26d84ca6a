"""``FsspecOrigin`` passes the ``ChunkSource`` contract over a real HTTP object store on
loopback (``tests/http_origin.py``), and over local files."""

from __future__ import annotations

import os
import uuid

import pytest

from blobtier.blockstore_sim.origin import FsspecOrigin, split_origin
from blobtier.checksum import xxh3
from blobtier.metadata.schema import BlobRecord, new_blob_id
from tests.contracts.chunk_source import ChunkSourceContract
from tests.http_origin import HttpStore


class OriginContract(ChunkSourceContract):
    """Objects are files under ``self.root``, named by ``self.url_of``."""

    root: str

    def url_of(self, name: str) -> str:
        raise NotImplementedError

    def _path(self, rec: BlobRecord) -> str:
        return os.path.join(self.root, split_origin(rec.origin)[0].rsplit("/", 1)[1])

    def store(self, source: FsspecOrigin, data: bytes, chunk: int) -> BlobRecord:
        name = f"{uuid.uuid4().hex}.bin"
        with open(os.path.join(self.root, name), "wb") as f:
            f.write(data)
        url = self.url_of(name)
        sums = [xxh3(data[i:i + chunk]) for i in range(0, len(data), chunk)]
        return BlobRecord(new_blob_id(), 1, len(data), chunk, sums,
                          origin=f"{url}\n{source.current_tag(url)}")

    def damage(self, source: FsspecOrigin, rec: BlobRecord, index: int, copies: int) -> None:
        with open(self._path(rec), "r+b") as f:  # the same size: only the bytes tell
            f.seek(rec.chunk_range(index)[0])
            byte = f.read(1)
            f.seek(rec.chunk_range(index)[0])
            f.write(bytes([byte[0] ^ 0xFF]))

    def forget(self, source: FsspecOrigin, rec: BlobRecord) -> None:
        os.unlink(self._path(rec))


class HttpOriginContract(OriginContract):
    """Objects served by a real HTTP store on loopback (``serve`` starts it)."""

    def serve(self, tmp_path) -> None:
        self.root = str(tmp_path / "web")
        os.makedirs(self.root)
        self.http = HttpStore(self.root)

    def url_of(self, name: str) -> str:
        return f"{self.http.url}/{name}"

    def fail(self, source) -> None:
        self.http.close()  # the store is gone: connections are refused


class TestOriginOverHttp(HttpOriginContract):
    @pytest.fixture
    def source(self, tmp_path):
        self.serve(tmp_path)
        origin = FsspecOrigin()
        yield origin
        origin.close()
        self.http.close()


class TestOriginOnLocalFiles(OriginContract):
    @pytest.fixture
    def source(self, tmp_path):
        self.root = str(tmp_path / "files")
        os.makedirs(self.root)
        origin = FsspecOrigin()
        yield origin
        origin.close()

    def url_of(self, name: str) -> str:
        return f"file://{self.root}/{name}"

    def fail(self, source: FsspecOrigin) -> None:
        pytest.skip("a local file system has no server to lose")
