"""The contract every ``MetadataStore`` backend passes.

A backend's test module subclasses ``MetadataStoreContract`` and provides a ``store``
fixture: a fresh, empty, writable store.
"""

from __future__ import annotations

import pytest

from blobtier.errors import InvalidKey, VersionConflict
from blobtier.metadata.schema import BlobRecord
from blobtier.metadata.store import ABSENT, ANY


def make_record(version: int = 1, n_chunks: int = 2, **kw) -> BlobRecord:
    chunk_size = kw.pop("chunk_size", 4096)
    size = kw.pop("size", max(0, (n_chunks - 1) * chunk_size + 100) if n_chunks else 0)
    fields = dict(
        blob_id=bytes(range(16)),
        version=version,
        size=size,
        chunk_size=chunk_size,
        checksums=[0x1234_5678_9ABC_DEF0 + i for i in range(n_chunks)],
        placement=[(i % 5, (i + 1) % 5, (i + 2) % 5) for i in range(n_chunks)],
        checksum_algo="xxh3",
        created_ns=1_700_000_000_123_456_789,
        attrs={"content-type": "image/jpeg", "label": "ñandú"},
        origin="",
    )
    fields.update(kw)
    return BlobRecord(**fields)


def assert_same(got: BlobRecord | None, want: BlobRecord) -> None:
    """Field-by-field equality, normalising the sequence types a codec may choose."""
    assert got is not None
    assert got.blob_id == want.blob_id
    assert got.version == want.version
    assert got.size == want.size
    assert got.chunk_size == want.chunk_size
    assert list(got.checksums) == list(want.checksums)
    assert [tuple(p) for p in got.placement] == [tuple(p) for p in want.placement]
    assert got.checksum_algo == want.checksum_algo
    assert got.created_ns == want.created_ns
    assert dict(got.attrs) == dict(want.attrs)
    assert got.origin == want.origin


class MetadataStoreContract:
    """Tests every backend must pass; needs a ``store`` fixture."""

    # -- get / commit ----------------------------------------------------------------
    def test_get_absent_is_none(self, store):
        assert store.get("ns/missing") is None

    def test_commit_absent_then_get_round_trips(self, store):
        rec = make_record(version=1, origin="s3://bucket/obj\netag-1", placement=[])
        store.commit("ns/a/b.bin", rec, expected=ABSENT)
        assert_same(store.get("ns/a/b.bin"), rec)

    def test_round_trip_all_fields(self, store):
        rec = make_record(version=7, n_chunks=5, checksum_algo="crc32c",
                          attrs={"k": "v", "ключ": "значение"})
        store.commit("ns/x", rec)
        assert_same(store.get("ns/x"), rec)

    def test_commit_overwrites_with_expected_version(self, store):
        store.commit("ns/k", make_record(1), expected=ABSENT)
        store.commit("ns/k", make_record(2, n_chunks=1), expected=1)
        got = store.get("ns/k")
        assert got.version == 2 and got.n_chunks == 1

    def test_commit_wrong_expected_raises_conflict(self, store):
        store.commit("ns/k", make_record(1), expected=ABSENT)
        with pytest.raises(VersionConflict):
            store.commit("ns/k", make_record(2), expected=5)
        with pytest.raises(VersionConflict):
            store.commit("ns/k", make_record(2), expected=ABSENT)
        assert store.get("ns/k").version == 1

    def test_commit_expected_version_on_absent_key_conflicts(self, store):
        with pytest.raises(VersionConflict):
            store.commit("ns/k", make_record(2), expected=1)
        assert store.get("ns/k") is None

    def test_commit_many_reports_each_cas(self, store):
        store.commit("ns/a", make_record(1))
        results = store.commit_many([
            ("ns/a", make_record(2), 1),       # holds
            ("ns/b", make_record(1), 3),       # absent, expected 3: fails
            ("ns/c", make_record(1), ABSENT),  # holds
        ])
        assert results == [True, False, True]
        assert store.get("ns/a").version == 2
        assert store.get("ns/b") is None
        assert store.get("ns/c").version == 1

    def test_any_always_succeeds(self, store):
        assert store.commit_many([("ns/k", make_record(4), ANY)]) == [True]
        assert store.commit_many([("ns/k", make_record(9), ANY)]) == [True]
        store.commit("ns/k", make_record(11), expected=ANY)
        assert store.get("ns/k").version == 11

    def test_commit_many_later_item_sees_earlier(self, store):
        results = store.commit_many([
            ("ns/k", make_record(1), ABSENT),
            ("ns/k", make_record(2), 1),
            ("ns/k", make_record(3), 1),  # version is 2 by now
        ])
        assert results == [True, True, False]
        assert store.get("ns/k").version == 2

    def test_commit_many_empty(self, store):
        assert store.commit_many([]) == []

    # -- get_many ----------------------------------------------------------------------
    def test_get_many_preserves_order_with_nones(self, store):
        store.commit("ns/b", make_record(2))
        store.commit("ns/a", make_record(1))
        got = store.get_many(["ns/a", "ns/missing", "ns/b", "ns/a"])
        assert [r.version if r else None for r in got] == [1, None, 2, 1]
        assert store.get_many([]) == []

    # -- delete ----------------------------------------------------------------------
    def test_delete_returns_record_then_absent(self, store):
        rec = make_record(3)
        store.commit("ns/d", rec)
        assert_same(store.delete("ns/d"), rec)
        assert store.get("ns/d") is None
        assert store.delete("ns/d") is None

    def test_delete_with_expected(self, store):
        store.commit("ns/d", make_record(3))
        with pytest.raises(VersionConflict):
            store.delete("ns/d", expected=2)
        assert store.get("ns/d").version == 3
        assert store.delete("ns/d", expected=3).version == 3
        assert store.get("ns/d") is None

    def test_recommit_after_delete(self, store):
        store.commit("ns/d", make_record(1))
        store.delete("ns/d")
        store.commit("ns/d", make_record(1), expected=ABSENT)
        assert store.get("ns/d").version == 1

    # -- scan ------------------------------------------------------------------------
    KEYS = ["ns/a", "ns/a/1", "ns/a/2", "ns/ab", "ns/b/1", "ns/b/2", "nt/a", "other/x"]

    def _fill(self, store):
        store.commit_many([(k, make_record(i + 1), ABSENT) for i, k in enumerate(self.KEYS)])

    def test_scan_all_in_order(self, store):
        self._fill(store)
        assert [k for k, _ in store.scan()] == sorted(self.KEYS)

    def test_scan_prefix(self, store):
        self._fill(store)
        assert [k for k, _ in store.scan("ns/a")] == ["ns/a", "ns/a/1", "ns/a/2", "ns/ab"]
        assert [k for k, _ in store.scan("ns/a/")] == ["ns/a/1", "ns/a/2"]
        assert [k for k, _ in store.scan("ns/b")] == ["ns/b/1", "ns/b/2"]
        assert store.scan("zz") == []

    def test_scan_returns_records(self, store):
        self._fill(store)
        rows = dict(store.scan("ns/b"))
        assert rows["ns/b/1"].version == self.KEYS.index("ns/b/1") + 1

    def test_scan_pagination_walks_every_key_once(self, store):
        keys = [f"ns/p/{i:04d}" for i in range(57)]
        store.commit_many([(k, make_record(1, n_chunks=0), ABSENT) for k in keys])
        store.commit("ns/q", make_record(1, n_chunks=0))
        seen, after = [], None
        while True:
            page = store.scan("ns/p/", after=after, limit=10)
            assert len(page) <= 10
            if not page:
                break
            seen += [k for k, _ in page]
            after = page[-1][0]
        assert seen == keys

    def test_scan_limit(self, store):
        self._fill(store)
        assert [k for k, _ in store.scan("ns/", limit=2)] == ["ns/a", "ns/a/1"]

    def test_scan_after_before_prefix(self, store):
        self._fill(store)
        assert [k for k, _ in store.scan("ns/b", after="ns/a")] == ["ns/b/1", "ns/b/2"]

    # -- key rules -------------------------------------------------------------------
    @pytest.mark.parametrize("key", ["", "ns", "/ns/a", "ns//a", "ns/a/", "ns/./a", "ns/../a",
                                     "n s/a", "ns/a\x00b"])
    def test_invalid_keys_rejected(self, store, key):
        with pytest.raises(InvalidKey):
            store.get(key)
        with pytest.raises(InvalidKey):
            store.commit(key, make_record(1))
        with pytest.raises(InvalidKey):
            store.get_many(["ns/ok", key])
        with pytest.raises(InvalidKey):
            store.delete(key)

    def test_invalid_key_in_batch_writes_nothing(self, store):
        with pytest.raises(InvalidKey):
            store.commit_many([("ns/ok", make_record(1), ABSENT), ("bad", make_record(1), ABSENT)])
        assert store.get("ns/ok") is None
