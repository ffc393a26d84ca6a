"""A RocksDB store across fork (issue 19, item 1): the child never uses, closes or cleans
up after the parent's RocksDB handle; it reads through a secondary of its own."""

from __future__ import annotations

import os

from blobtier.metadata.rocksdb_store import RocksDBStore
from tests.contracts.metadata_store import make_record
from tests.fork_support import in_child


def _use_and_close(store: RocksDBStore) -> tuple[int, str, str | None]:
    version = store.get("ns/a").version
    try:
        store.commit("ns/child", make_record(9))
        wrote = "wrote"
    except PermissionError:
        wrote = "refused"
    mine = store._secondary_dir
    store.close()
    return version, wrote, mine


def test_a_forked_child_reads_through_its_own_secondary_and_leaves_the_parents_alone(tmp_path):
    path, scratch = str(tmp_path / "db"), str(tmp_path / "scratch")
    writer = RocksDBStore(path, writable=True)
    reader = RocksDBStore(path, scratch_dir=scratch, catch_up_s=0)
    try:
        writer.commit("ns/a", make_record(1))
        assert reader.get("ns/a").version == 1
        parents = reader._secondary_dir
        # The reader's copy: the child's own secondary, closed by the child.
        version, wrote, childs = in_child(_use_and_close, reader)
        assert (version, wrote) == (1, "refused") and childs != parents
        assert not os.path.exists(childs) and os.path.isdir(parents)
        # The writer's copy reads too, and cannot write: the lock is the parent's.
        assert in_child(_use_and_close, writer)[:2] == (1, "refused")
        writer.commit("ns/a", make_record(2))  # the parent's handles still work
        assert reader.get("ns/a").version == 2
        assert reader.get("ns/child") is None
    finally:
        reader.close()
        writer.close()
