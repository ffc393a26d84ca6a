"""FsspecOrigin: byte ranges of origin objects, verified, and changes reported."""

from __future__ import annotations

import os
import uuid

import fsspec
import pytest

from blobtier.blockstore_sim.origin import FsspecOrigin, object_tag, split_origin
from blobtier.checksum import xxh3
from blobtier.errors import BlobNotFound, ChecksumError, OriginChanged
from blobtier.metadata.schema import BlobRecord, new_blob_id

CHUNK = 4096


def register(url: str, data: bytes, fs, path: str) -> BlobRecord:
    sums = [xxh3(data[i:i + CHUNK]) for i in range(0, len(data), CHUNK)]
    return BlobRecord(new_blob_id(), 1, len(data), CHUNK, sums,
                      origin=f"{url}\n{object_tag(fs.info(path))}")


@pytest.fixture
def mem():
    fs = fsspec.filesystem("memory")
    root = f"/origin-{uuid.uuid4().hex}"
    yield fs, root
    if fs.exists(root):
        fs.rm(root, recursive=True)


def read(origin: FsspecOrigin, rec: BlobRecord) -> bytes:
    return b"".join(bytes(v) for v in origin.read_many([(rec, i) for i in range(rec.n_chunks)]))


def test_object_tag_prefers_etag():
    assert object_tag({"ETag": '"abc"', "mtime": 5, "size": 3}) == "etag:abc"
    assert object_tag({"mtime": 5.5, "size": 3}) == "mtime:5.5:size:3"
    assert object_tag({"size": 3}) == "size:3"
    assert split_origin("s3://b/k\netag:1") == ("s3://b/k", "etag:1")
    with pytest.raises(ValueError):
        split_origin("no tag")


def test_reads_memory_ranges(mem):
    fs, root = mem
    data = os.urandom(3 * CHUNK + 100)
    fs.pipe(f"{root}/obj", data)
    rec = register(f"memory://{root}/obj", data, fs, f"{root}/obj")
    origin = FsspecOrigin()
    assert read(origin, rec) == data
    assert bytes(origin.read_many([(rec, 3)])[0]) == data[3 * CHUNK:]
    assert origin.read_many([(rec, 0)])[0].readonly


def test_reads_local_files(tmp_path):
    data = os.urandom(2 * CHUNK)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    fs = fsspec.filesystem("file")
    rec = register(f"file://{path}", data, fs, str(path))
    assert read(FsspecOrigin(), rec) == data


def test_a_changed_object_is_reported_not_served(mem):
    fs, root = mem
    data = os.urandom(2 * CHUNK)
    fs.pipe(f"{root}/obj", data)
    rec = register(f"memory://{root}/obj", data, fs, f"{root}/obj")
    first, later = FsspecOrigin(), FsspecOrigin()
    assert read(first, rec) == data  # ``first`` has seen the registered version
    fs.pipe(f"{root}/obj", data[:CHUNK] + os.urandom(CHUNK))
    with pytest.raises(OriginChanged, match="changed since it was registered"):
        read(later, rec)  # caught by the tag check on first use
    assert bytes(first.read_many([(rec, 0)])[0]) == data[:CHUNK]  # bytes still as registered
    with pytest.raises(OriginChanged, match=f"{root}/obj"):
        first.read_many([(rec, 1)])  # caught by the checksum, named by the tag


def test_bytes_that_fail_their_checksum_are_never_returned(mem):
    fs, root = mem
    data = os.urandom(CHUNK)
    fs.pipe(f"{root}/obj", data)
    good = register(f"memory://{root}/obj", data, fs, f"{root}/obj")
    bad = BlobRecord(good.blob_id, 1, good.size, CHUNK, [good.checksums[0] ^ 1], origin=good.origin)
    with pytest.raises(ChecksumError) as info:
        FsspecOrigin().read_many([(bad, 0)])
    assert not isinstance(info.value, OriginChanged)  # same version: a plain mismatch


def test_a_deleted_object_is_not_found(mem):
    fs, root = mem
    fs.pipe(f"{root}/obj", b"x" * 10)
    rec = register(f"memory://{root}/obj", b"x" * 10, fs, f"{root}/obj")
    fs.rm(f"{root}/obj")
    with pytest.raises(BlobNotFound, match="no longer exists"):
        FsspecOrigin().read_many([(rec, 0)])
