"""Delimiter listings of the stores without a directory index: RocksDB's seeking iterator
and the generic fallback over ``_scan_raw``, against a listing computed from sorted keys."""

from __future__ import annotations

import random

import pytest

from blobtier.metadata.rocksdb_store import RocksDBStore
from blobtier.metadata.store import ABSENT, MetadataStore
from tests.contracts.metadata_store import make_record


class GenericStore(RocksDBStore):
    """RocksDB listed by the base class's fallback, counting the rows it reads."""

    _dir_raw = MetadataStore._dir_raw
    rows_read = 0

    def _scan_raw(self, prefix: bytes, start: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        rows = super()._scan_raw(prefix, start, limit)
        self.rows_read += len(rows)
        return rows


@pytest.fixture(params=[RocksDBStore, GenericStore], ids=["rocksdb", "generic"])
def store(request, tmp_path):
    s = request.param(str(tmp_path / "db"), writable=True)
    yield s
    s.close()


def expected(keys: list[str], prefix: str) -> list[str]:
    """The delimiter listing of ``prefix`` from the sorted keys themselves."""
    d = prefix[:prefix.rfind("/") + 1]
    out: list[str] = []
    for k in sorted(keys, key=str.encode):
        if not k.startswith(prefix):
            continue
        slash = k.find("/", len(d))
        entry = k if slash < 0 else k[:slash + 1]
        if not out or out[-1] != entry:
            out.append(entry)
    return out


def test_random_trees_list_as_their_sorted_keys_say(store):
    rng = random.Random(7)
    parts = ["a", "a-b", "a0", "b", "é", "a.b", "z"]
    keys = sorted({"ns/" + "/".join(rng.choice(parts) for _ in range(rng.randint(1, 4)))
                   for _ in range(300)})
    keys = [k for k in keys if not any(o.startswith(k + "/") for o in keys)] + ["ns/a"]
    store.commit_many([(k, make_record(1, n_chunks=0), ABSENT) for k in sorted(set(keys))])
    for prefix in ["", "ns/", "ns/a", "ns/a/", "ns/a-b/", "ns/é/a", "ns/z/z/"]:
        want = expected(keys, prefix)
        assert [k for k, _ in store.list_dir(prefix, limit=10_000)] == want, prefix
        for limit in (1, 3):  # paged: the same entries, each once
            seen, after = [], None
            while page := store.list_dir(prefix, after=after, limit=limit):
                seen += [k for k, _ in page]
                after = page[-1][0]
            assert seen == want, (prefix, limit)


def test_the_fallback_reads_few_keys_below_a_subdirectory(tmp_path):
    with GenericStore(str(tmp_path / "db"), writable=True) as store:
        store.commit_many([(f"ns/d/big/{i:05d}", make_record(1, n_chunks=0), ABSENT) for i in range(3000)])
        store.commit_many([(f"ns/d/{n}", make_record(1, n_chunks=0), ABSENT) for n in ("a", "c", "z")])
        store.rows_read = 0
        assert [k for k, _ in store.list_dir("ns/d/")] == ["ns/d/a", "ns/d/big/", "ns/d/c", "ns/d/z"]
        assert store.rows_read < 40  # not the 3000 keys below big/
