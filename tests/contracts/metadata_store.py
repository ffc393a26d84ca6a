"""The contract every ``MetadataStore`` backend passes.

A backend's test module subclasses ``MetadataStoreContract`` and provides a ``store``
fixture: a fresh, empty, writable store. A backend that lets several processes write one
store also overrides ``store_opener`` (the compare-and-set race then runs in processes).
"""

from __future__ import annotations

import errno
import multiprocessing
import threading
import time
from collections.abc import Callable

import pytest

from blobtier.errors import (
    BlobNotFound,
    InvalidKey,
    InvalidRequest,
    MetadataCorrupt,
    QuotaExceeded,
    VersionConflict,
)
from blobtier.metadata import schema
from blobtier.metadata.namespaces import NamespaceSpec
from blobtier.metadata.schema import BlobRecord
from blobtier.metadata.store import ABSENT, ANY, MetadataStore


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


def sized(size: int, version: int = 1, **kw) -> BlobRecord:
    """A record of a blob of ``size`` bytes (as many chunks of 4 KiB as that takes)."""
    return make_record(version, n_chunks=schema.chunk_count(size, 4096), size=size, **kw)


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


def _race(handle: MetadataStore, writer: int, rounds: int, keys: list[str]) -> tuple[list, int]:
    """Read-then-CAS ``rounds`` times over ``keys``: (acknowledged (key, version, writer,
    round), conflicts)."""
    acked, conflicts = [], 0
    for r in range(rounds):
        key = keys[r % len(keys)]
        cur = handle.get(key)
        version = cur.version if cur else 0
        rec = make_record(version + 1, blob_id=bytes([writer, r]) + bytes(14))
        try:
            handle.commit(key, rec, expected=version or ABSENT)
        except VersionConflict:
            conflicts += 1
        else:
            acked.append((key, version + 1, writer, r))
    return acked, conflicts


def _race_process(opener: Callable[[], MetadataStore], writer: int, rounds: int, keys: list[str],
                  barrier, results) -> None:
    try:
        with opener() as handle:
            barrier.wait(30)
            results.put((writer, _race(handle, writer, rounds, keys)))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the test
        results.put((writer, repr(exc)))


def run_race(store: MetadataStore, opener: Callable[[], MetadataStore] | None, writers: int,
             rounds: int, keys: list[str]) -> list[tuple[list, int]]:
    """The race in ``writers`` processes (threads on ``store`` when ``opener`` is None)."""
    if opener is None:
        barrier, out = threading.Barrier(writers), [None] * writers

        def run(i: int) -> None:
            barrier.wait(30)
            out[i] = _race(store, i, rounds, keys)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert None not in out
        return out
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(writers), ctx.Queue()
    procs = [ctx.Process(target=_race_process, args=(opener, i, rounds, keys, barrier, results))
             for i in range(writers)]
    for p in procs:
        p.start()
    got = dict(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)
    bad = {i: r for i, r in got.items() if isinstance(r, str)}
    assert not bad, f"writer processes failed: {bad}"
    return [got[i] for i in range(writers)]


class FakeClock:
    """Unix seconds that move only when a test says so."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class NamespaceContract:
    """Namespace objects (``metadata/namespaces.py``): every backend stores them, counts
    usage, refuses writes over quota and hides blobs past their TTL. Mixed into
    ``MetadataStoreContract``."""

    def set_clock(self, store: MetadataStore, clock: FakeClock) -> None:
        """The clock of ``store`` and of whatever it stands on (a cache's store, the
        store behind a service)."""
        for s in (store, getattr(store, "store", None), getattr(self, "backend", None)):
            if s is not None:
                s.clock = clock

    def test_namespace_objects_round_trip(self, store):
        assert store.namespaces() == [] and store.namespace("a") is None
        store.create_namespace(NamespaceSpec("a", quota_bytes=10, ttl_s=60.0, l1_share=0.3, policy="lru"))
        store.create_namespace(NamespaceSpec("b", l3_share=0.5))
        assert [s.name for s in store.namespaces()] == ["a", "b"]
        assert store.namespace("a") == NamespaceSpec("a", quota_bytes=10, ttl_s=60.0, l1_share=0.3,
                                                     policy="lru")
        with pytest.raises(VersionConflict):
            store.create_namespace(NamespaceSpec("a"))
        changed = store.update_namespace("a", {"quota_bytes": 20, "ttl_s": None})
        assert changed == NamespaceSpec("a", quota_bytes=20, l1_share=0.3, policy="lru")
        assert store.namespace("a") == changed
        with pytest.raises(BlobNotFound):
            store.update_namespace("zz", {"quota_bytes": 1})

    @pytest.mark.parametrize("field,value", [("quota_bytes", -1), ("ttl_s", 0), ("l1_share", 1.5),
                                             ("l3_share", 0), ("policy", "fifo"), ("bogus", 1)])
    def test_bad_namespace_fields_are_refused_by_name(self, store, field, value):
        store.create_namespace(NamespaceSpec("a"))
        with pytest.raises(InvalidRequest, match=field):
            store.update_namespace("a", {field: value})
        assert store.namespace("a") == NamespaceSpec("a")

    def test_shares_of_all_namespaces_sum_to_at_most_one(self, store):
        store.create_namespace(NamespaceSpec("a", l1_share=0.6))
        with pytest.raises(InvalidRequest, match="l1_share"):
            store.create_namespace(NamespaceSpec("b", l1_share=0.5))
        store.create_namespace(NamespaceSpec("b", l1_share=0.4))
        with pytest.raises(InvalidRequest, match="l1_share"):
            store.update_namespace("b", {"l1_share": 0.41})

    def test_quota_bytes_refuses_at_the_byte_boundary(self, store):
        store.create_namespace(NamespaceSpec("q", quota_bytes=1000))
        store.commit("q/a", sized(600, 1))
        store.commit("q/b", sized(400, 1))  # exactly the quota
        with pytest.raises(QuotaExceeded) as err:
            store.commit("q/c", sized(1, 1))
        assert err.value.errno == errno.EDQUOT and "q" in str(err.value)
        assert store.get("q/c") is None  # nothing half-written
        with pytest.raises(QuotaExceeded):  # growing a blob past it, too
            store.commit("q/b", sized(401, 2), expected=1)
        assert store.get("q/b").version == 1
        assert store.namespace_usage(["q"])["q"].bytes == 1000
        store.commit("q/b", sized(100, 2), expected=1)  # shrinking makes room
        store.commit("q/c", sized(300, 1))
        store.delete("q/a")
        usage = store.namespace_usage(["q"])["q"]
        assert (usage.bytes, usage.blobs, usage.pending) == (400, 2, {})
        store.commit("other/x", sized(10_000, 1))  # no object: no quota

    def test_quota_blobs_and_a_batch_refused_whole(self, store):
        store.create_namespace(NamespaceSpec("q", quota_blobs=2))
        both = [("q/a", make_record(1), ABSENT), ("q/b", make_record(1), ABSENT)]
        assert store.commit_many(both) == [True, True]
        with pytest.raises(QuotaExceeded):
            store.commit_many([("q/b", make_record(2), 1), ("q/c", make_record(1), ABSENT)])
        assert store.get("q/b").version == 1 and store.get("q/c") is None
        store.commit("q/b", make_record(2), expected=1)  # a new version is not a new blob
        assert store.namespace_usage(["q"])["q"].blobs == 2

    def test_a_batch_naming_a_key_twice_counts_its_last_value(self, store):
        store.create_namespace(NamespaceSpec("q", quota_bytes=1000))
        twice = [("q/a", sized(300, 1), ABSENT), ("q/a", sized(700, 2), 1), ("q/b", sized(100, 1), ANY)]
        assert store.commit_many(twice) == [True, True, True]
        usage = store.namespace_usage(["q"])["q"]
        assert (usage.bytes, usage.blobs) == (800, 2)
        assert store.commit_many([("q/b", sized(50, 2), ANY), ("q/b", sized(10, 3), ANY)]) == [True, True]
        assert store.namespace_usage(["q"])["q"].bytes == 710

    def test_a_lost_compare_and_set_counts_nothing(self, store):
        store.create_namespace(NamespaceSpec("q", quota_bytes=1000))
        store.commit("q/a", sized(500, 1))
        assert store.commit_many([("q/a", sized(900, 2), 7)]) == [False]
        assert store.namespace_usage(["q"])["q"].bytes == 500

    def test_creating_a_namespace_counts_what_it_holds(self, store):
        store.commit("old/a", sized(700, 1))
        store.commit("old/b", sized(300, 1))
        store.create_namespace(NamespaceSpec("old", quota_bytes=1000))
        usage = store.namespace_usage(["old"])["old"]
        assert (usage.bytes, usage.blobs) == (1000, 2)
        with pytest.raises(QuotaExceeded):
            store.commit("old/c", sized(1, 1))

    def test_ttl_hides_expired_blobs_and_maintenance_deletes_them(self, store):
        clock = FakeClock(time.time())
        self.set_clock(store, clock)
        store.create_namespace(NamespaceSpec("t", ttl_s=3600.0))
        born = int(clock.now * 1e9)
        store.commit("t/old", sized(10, 1, created_ns=born))
        store.commit("t/d/new", sized(20, 1, created_ns=born + 1800 * 10**9))
        store.commit("keep/x", make_record(1, created_ns=born))  # no TTL there
        clock.now += 3599
        assert store.get("t/old") is not None
        clock.now += 1  # the old one's expiry, to the second
        assert store.get("t/old") is None
        assert [r is None for r in store.get_many(["t/old", "t/d/new"])] == [True, False]
        assert [k for k, _ in store.scan("t/")] == ["t/d/new"]
        assert [k for k, _ in store.listing("t/")] == ["t/d/new"]
        assert [k for k, _ in store.list_dir("t/")] == ["t/d/"]
        assert store.get("keep/x") is not None
        done = store.maintain_namespaces()
        assert done.expired == 1 and done.reconciled == ["t"] and done.busy == []
        usage = store.namespace_usage(["t"])["t"]
        assert (usage.bytes, usage.blobs) == (20, 1)
        clock.now += 1800
        assert store.get("t/d/new") is None
        assert store.maintain_namespaces().expired == 1
        assert store.namespace_usage(["t"])["t"].blobs == 0


class MetadataStoreContract(NamespaceContract):
    """Tests every backend must pass (``NamespaceContract`` included, below); needs a
    ``store`` fixture."""

    @pytest.fixture
    def store_opener(self, store) -> Callable[[], MetadataStore] | None:
        """A picklable callable opening another handle on ``store``'s data in a child
        process; None where one process writes (the race then runs in its threads)."""
        return None

    def write_raw(self, store: MetadataStore, key: str, raw: bytes) -> None:
        """Store ``raw`` as ``key``'s value past the codec (the corruption tests). A backend
        whose writes check records (the metadata service) overrides it to write behind."""
        store._cas_many([(schema.record_key(key), ANY, raw)])

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

    # -- delimiter listing -------------------------------------------------------------
    def test_list_dir_returns_blobs_and_subdirectories_in_order(self, store):
        self._fill(store)
        store.commit("ns/b/c/2", make_record(1))
        assert store.list_dir("") == [("ns/", None), ("nt/", None), ("other/", None)]
        rows = store.list_dir("ns/")
        assert [k for k, _ in rows] == ["ns/a", "ns/a/", "ns/ab", "ns/b/"]
        assert rows[0][1].version == 1 and rows[0][1].key == "ns/a" and rows[1][1] is None
        assert [k for k, _ in store.list_dir("ns/a")] == ["ns/a", "ns/a/", "ns/ab"]  # a name prefix
        assert [k for k, _ in store.list_dir("ns/b/")] == ["ns/b/1", "ns/b/2", "ns/b/c/"]
        assert store.list_dir("ns/zz") == [] and store.list_dir("none/") == []

    def test_list_dir_pages(self, store):
        self._fill(store)
        pages, after = [], None
        while page := store.list_dir("ns/", after=after, limit=1):
            pages.append([k for k, _ in page])
            after = page[-1][0]
        assert pages == [["ns/a"], ["ns/a/"], ["ns/ab"], ["ns/b/"]]
        # a key inside a listed subdirectory resumes after that subdirectory
        assert [k for k, _ in store.list_dir("ns/", after="ns/a/2")] == ["ns/ab", "ns/b/"]
        assert store.list_dir("ns/", after="ns/zzz") == []
        assert [k for k, _ in store.list_dir("ns/", after="a")] == ["ns/a", "ns/a/", "ns/ab", "ns/b/"]
        with pytest.raises(InvalidRequest):
            store.list_dir("ns/", limit=0)

    # -- concurrency -----------------------------------------------------------------
    def test_cas_race_from_4_writers_loses_no_commit(self, store, store_opener):
        keys = ["ns/race/a", "ns/race/b"]
        results = run_race(store, store_opener, writers=4, rounds=30, keys=keys)
        acked = [a for log, _ in results for a in log]
        assert len(acked) + sum(c for _, c in results) == 4 * 30  # every commit returned or raised
        for key in keys:
            versions = sorted(v for k, v, _, _ in acked if k == key)
            final = store.get(key)
            # each version acknowledged once (no lost update), none missing (no commit
            # that landed yet raised)
            assert versions == list(range(1, final.version + 1))
            _, _, writer, r = next(a for a in acked if a[0] == key and a[1] == final.version)
            assert final.blob_id == bytes([writer, r]) + bytes(14)

    def test_paging_under_concurrent_inserts_and_deletes(self, store):
        stable = [f"ns/live/{i:03d}" for i in range(0, 120, 2)]
        store.commit_many([(k, make_record(1, n_chunks=0), ABSENT) for k in stable])
        stop = threading.Event()
        churned = [0]

        def churn() -> None:
            i = 0
            while not stop.is_set():
                keys = [f"ns/live/{j:03d}" for j in range(i % 120 | 1, 120, 38)]  # odd: never stable
                store.commit_many([(k, make_record(1, n_chunks=0), ANY) for k in keys])
                for k in keys[::2]:
                    store.delete(k)
                churned[0] += len(keys)
                i += 2

        t = threading.Thread(target=churn)
        t.start()
        try:
            for _ in range(3):
                seen, after = [], None
                while page := store.scan("ns/live/", after=after, limit=7):
                    seen += [k for k, _ in page]
                    after = page[-1][0]
                assert seen == sorted(set(seen))  # in order, none twice
                assert [k for k in seen if k in set(stable)] == stable
        finally:
            stop.set()
            t.join(30)
        assert churned[0] > 0

    # -- keys ------------------------------------------------------------------------
    def test_unicode_and_maximal_keys(self, store):
        longest = "ns/" + "é" * 510 + "x"                    # exactly MAX_KEY_BYTES bytes
        deepest = "ns/" + "d/" * 510 + "x"                   # as many levels as fit
        keys = [longest, deepest, "ns/日本/語", "ns/\U0001F600", "ns/z", "ns/é", "ns/e\u0301",
                "ns/{tag}", "ns/a b"]
        assert {len(k.encode()) for k in (longest, deepest)} == {schema.MAX_KEY_BYTES}
        store.commit_many([(k, make_record(i + 1), ABSENT) for i, k in enumerate(keys)])
        for i, k in enumerate(keys):
            assert store.get(k).version == i + 1
        assert [r.version for r in store.get_many(keys)] == list(range(1, len(keys) + 1))
        in_order = sorted(keys, key=str.encode)  # bytewise, as the contract orders keys
        assert [k for k, _ in store.scan("ns/")] == in_order
        seen, after = [], None
        while page := store.scan("ns/", after=after, limit=1):
            seen.append(page[0][0])
            after = page[0][0]
        assert seen == in_order
        assert [k for k, _ in store.scan("ns/d/d/")] == [deepest]
        assert store.delete(deepest).version == 2
        assert store.scan("ns/d/") == []
        with pytest.raises(InvalidKey):
            store.commit(longest + "y", make_record(1))

    # -- corruption ------------------------------------------------------------------
    @pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
    def test_corrupt_record_raises(self, store, damage):
        raw = schema.encode(make_record(3))
        raw = {"flip": raw[:40] + bytes([raw[40] ^ 1]) + raw[41:], "truncate": raw[:20],
               "garbage": b"not a record"}[damage]
        store.commit("ns/ok", make_record(1))
        self.write_raw(store, "ns/bad", raw)  # a stored value the codec rejects
        with pytest.raises(MetadataCorrupt):
            store.get("ns/bad")
        with pytest.raises(MetadataCorrupt):
            store.get_many(["ns/ok", "ns/bad"])
        with pytest.raises(MetadataCorrupt):
            store.scan("ns/")
        with pytest.raises(MetadataCorrupt):
            list(store.listing("ns/"))
        with pytest.raises(MetadataCorrupt):
            store.list_dir("ns/")
        assert store.get("ns/ok").version == 1
        assert [k for k, _ in store.list_dir("ns/", after="ns/bad")] == ["ns/ok"]

