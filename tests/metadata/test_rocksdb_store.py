from __future__ import annotations

import threading

import pytest

from blobtier.metadata.rocksdb_store import RocksDBStore
from blobtier.metadata.store import ABSENT
from tests.contracts.metadata_store import MetadataStoreContract, assert_same, make_record


@pytest.fixture
def db_path(tmp_path) -> str:
    return str(tmp_path / "db")


@pytest.fixture
def store(db_path):
    s = RocksDBStore(db_path, writable=True)
    yield s
    s.close()


@pytest.fixture
def reader(db_path, tmp_path):
    r = RocksDBStore(db_path, writable=False, scratch_dir=str(tmp_path / "scratch"), catch_up_s=60)
    yield r
    r.close()


class TestRocksDBStore(MetadataStoreContract):
    pass


def test_secondary_sees_commit_after_it_opened(store, reader):
    store.commit("ns/first", make_record(1))
    assert reader.get("ns/first").version == 1
    rec = make_record(2, n_chunks=3)
    store.commit("ns/later", rec)
    # catch_up_s is long: only the miss makes the secondary catch up
    assert_same(reader.get("ns/later"), rec)
    store.commit("ns/many", make_record(5))
    assert [r.version if r else None for r in reader.get_many(["ns/first", "ns/many", "ns/no"])] \
        == [1, 5, None]
    store.commit("ns/scanned", make_record(6))
    assert "ns/scanned" in [k for k, _ in reader.scan("ns/")]


def test_secondary_before_database_exists(db_path, tmp_path):
    reader = RocksDBStore(db_path, writable=False, scratch_dir=str(tmp_path / "scratch"))
    try:
        assert reader.get("ns/a") is None
        assert reader.get_many(["ns/a", "ns/b"]) == [None, None]
        assert reader.scan() == []
        with RocksDBStore(db_path, writable=True) as primary:
            primary.commit("ns/a", make_record(1))
            assert reader.get("ns/a").version == 1
            assert [k for k, _ in reader.scan()] == ["ns/a"]
    finally:
        reader.close()


def test_secondary_cannot_commit(store, reader):
    store.commit("ns/a", make_record(1))
    with pytest.raises(PermissionError):
        reader.commit("ns/b", make_record(1))
    with pytest.raises(PermissionError):
        reader.delete("ns/a")
    assert store.get("ns/b") is None


def test_second_writable_open_fails(store, db_path):
    with pytest.raises(Exception):  # noqa: B017 - rocksdict raises a bare Exception
        RocksDBStore(db_path, writable=True)
    store.commit("ns/still", make_record(1))
    assert store.get("ns/still").version == 1


def test_reopen_keeps_data(db_path):
    with RocksDBStore(db_path, writable=True) as s:
        s.commit("ns/a", make_record(4))
    with RocksDBStore(db_path, writable=True) as s:
        assert s.get("ns/a").version == 4


def _run_threads(n, target):
    barrier = threading.Barrier(n)
    results: list = [None] * n
    errors: list = []

    def run(i):
        barrier.wait()
        try:
            results[i] = target(i)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    return results


def test_concurrent_commits_on_distinct_keys(store):
    def work(i):
        out = []
        for v in range(1, 6):
            out += store.commit_many([(f"ns/t{i}", make_record(v), ABSENT if v == 1 else v - 1)])
        return out

    results = _run_threads(8, work)
    assert results == [[True] * 5] * 8
    assert [r.version for r in store.get_many([f"ns/t{i}" for i in range(8)])] == [5] * 8


def test_concurrent_cas_on_same_key_one_wins(store):
    results = _run_threads(8, lambda i: store.commit_many([("ns/race", make_record(i + 1),
                                                            ABSENT)])[0])
    assert sorted(results) == [False] * 7 + [True]
    winner = results.index(True)
    assert store.get("ns/race").version == winner + 1
