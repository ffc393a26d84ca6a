"""Registered origin prefixes: kept beside the records, never listed as blobs, read by a
secondary (what a flash node opens) after the writer commits them."""

from __future__ import annotations

import pytest

from blobtier.errors import Forbidden
from blobtier.metadata.rocksdb_store import RocksDBStore
from tests.contracts.metadata_store import make_record


def test_registered_origins_are_canonical_deduplicated_and_not_blobs(tmp_path):
    path = str(tmp_path / "metadata")
    with RocksDBStore(path, writable=True) as writer:
        writer.commit("ns/a", make_record(1))
        writer.register_origins(["memory://bucket/ds/", "memory:///bucket/ds", f"local://{tmp_path}/src/"])
        writer.register_origins([f"memory://b/{i:04d}" for i in range(1500)])  # more than a page
        with pytest.raises(Forbidden):
            writer.register_origins(["simplecache::memory://bucket/x"])
        assert [k for k, _ in writer.scan("")] == ["ns/a"]
        with RocksDBStore(path, scratch_dir=str(tmp_path / "tmp")) as reader:
            got = reader.origins()
    assert got[:2] == [f"file://{tmp_path}/src", "memory:///b/0000"]
    assert "memory:///bucket/ds" in got and len(got) == 1502
