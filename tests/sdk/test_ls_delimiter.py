"""``blobtier ls``, ``fs.ls`` and ``Client.iter_dir`` read one directory level through the
delimiter listing (issue 13 item 6): what a listing reads does not grow with the keys
below its subdirectories. Reads are counted where the store hands out rows, with 1k and
50k keys under one subdirectory, embedded and through a metadata service."""

from __future__ import annotations

import os

import pytest

import blobtier
from blobtier.cli import main
from blobtier.metadata.rocksdb_store import RocksDBStore
from blobtier.metadata.schema import BlobRecord
from blobtier.metadata.service import MetadataServer
from blobtier.metadata.store import ANY
from blobtier.sdk.fs import BlobtierFileSystem
from tests.chunk_servers import Cluster

OTHER = ["ns/big/a.txt", "ns/big/other/x", "ns/big/z.txt", "ns/top"]


@pytest.fixture(autouse=True)
def _fresh_instances():
    BlobtierFileSystem.clear_instance_cache()  # clients of one root would share one
    yield
    BlobtierFileSystem.clear_instance_cache()


@pytest.fixture
def rows_read(monkeypatch):
    """Rows every RocksDB store hands out (point reads, scans, directory pages)."""
    count = [0]
    scan, dir_raw = RocksDBStore._scan_raw, RocksDBStore._dir_raw
    get, get_many = RocksDBStore._get_raw, RocksDBStore._get_many_raw

    def counted_scan(self, *args):
        rows = scan(self, *args)
        count[0] += len(rows)
        return rows

    def counted_dir(self, *args):
        for row in dir_raw(self, *args):
            count[0] += 1
            yield row

    def counted_get(self, rkey):
        count[0] += 1
        return get(self, rkey)

    def counted_get_many(self, rkeys):
        count[0] += len(rkeys)
        return get_many(self, rkeys)

    monkeypatch.setattr(RocksDBStore, "_scan_raw", counted_scan)
    monkeypatch.setattr(RocksDBStore, "_dir_raw", counted_dir)
    monkeypatch.setattr(RocksDBStore, "_get_raw", counted_get)
    monkeypatch.setattr(RocksDBStore, "_get_many_raw", counted_get_many)
    return count


def fill(path: str, n: int) -> None:
    """``n`` keys under ns/big/sub/ and a few around them, written straight to the store."""
    rec = BlobRecord(bytes(16), 1, 10, 4096, [1], [(0, 1, 2)])
    with RocksDBStore(path, writable=True) as store:
        for start in range(0, n, 5000):
            keys = [f"ns/big/sub/k{i:06d}" for i in range(start, min(n, start + 5000))]
            store.commit_many([(k, rec, ANY) for k in keys])
        store.commit_many([(k, rec, ANY) for k in OTHER])


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    """Regions (by key count) whose metadata is filled once for the module: the tests
    only read them."""
    roots: dict[int, str] = {}

    def root_of(n: int) -> str:
        if n not in roots:
            roots[n] = str(tmp_path_factory.mktemp(f"r{n}"))
            fill(os.path.join(roots[n], "metadata"), n)
        return roots[n]

    return root_of


@pytest.fixture(params=["embedded", "service"])
def open_region(request, filled, tmp_path):
    """A function: a region with ``n`` keys below ns/big/sub/ -> its root and connect kwargs."""
    made = []

    def make(n: int) -> tuple[str, dict]:
        root = filled(n)
        if request.param == "embedded":
            return root, {}
        server = MetadataServer(RocksDBStore(os.path.join(root, "metadata"), writable=True))
        made.append(server)
        cluster = Cluster(str(tmp_path / "cs"), 3)
        made.append(cluster)
        return root, {"metadata": {"endpoints": [server.address], "record_ttl_s": 0},
                      "block": {"endpoints": cluster.addresses}}

    yield make
    for thing in made:
        thing.stop(0) if isinstance(thing, MetadataServer) else thing.close()


def reads_of(rows_read, list_it) -> tuple[int, object]:
    before = rows_read[0]
    out = list_it()
    return rows_read[0] - before, out


@pytest.mark.parametrize("n", [1000, 50_000])
def test_fs_ls_reads_the_directory_not_the_keys_below(open_region, rows_read, n):
    root, kw = open_region(n)
    with blobtier.connect(root, **kw) as c:
        fs = BlobtierFileSystem(client=c)
        reads, names = reads_of(rows_read, lambda: fs.ls("ns/big", detail=False))
        assert names == ["ns/big/a.txt", "ns/big/other", "ns/big/sub", "ns/big/z.txt"]
        assert reads == 4  # one per entry, whatever lies below ns/big/sub
        reads, entries = reads_of(rows_read, lambda: fs.ls("blobtier://ns", detail=True))
        assert [(e["name"], e["type"]) for e in entries] == [("ns/big", "directory"), ("ns/top", "file")]
        assert reads == 2


@pytest.mark.parametrize("n", [1000, 50_000])
def test_cli_ls_prints_a_directory_level(open_region, rows_read, n, capsys, monkeypatch):
    root, kw = open_region(n)
    args = ["--region", root]
    if kw:  # the service region: its endpoints through the environment overlay
        monkeypatch.setenv("BLOBTIER_METADATA_ENDPOINTS", kw["metadata"]["endpoints"][0])
        monkeypatch.setenv("BLOBTIER_BLOCK_ENDPOINTS", ",".join(kw["block"]["endpoints"]))
        monkeypatch.setenv("BLOBTIER_METADATA_RECORD_TTL_S", "0")
    reads, code = reads_of(rows_read, lambda: main([*args, "ls", "ns/big/"]))
    out = capsys.readouterr().out.splitlines()
    assert code == 0 and [line.split()[-1] for line in out] == [
        "ns/big/a.txt", "ns/big/other/", "ns/big/sub/", "ns/big/z.txt"]
    assert out[2].split() == ["dir", "ns/big/sub/"]
    assert reads == 4
    reads, code = reads_of(rows_read, lambda: main([*args, "ls", "-r", "ns/big/other/"]))
    assert code == 0 and capsys.readouterr().out.split()[-1] == "ns/big/other/x" and reads == 1


@pytest.mark.parametrize("n", [1000, 50_000])
def test_the_first_page_of_a_large_directory_reads_one_page(open_region, rows_read, n):
    root, kw = open_region(n)
    with blobtier.connect(root, **kw) as c:
        entries = c.iter_dir("ns/big/sub/", page=100)
        reads, first = reads_of(rows_read, lambda: next(entries))
        assert first.key == "ns/big/sub/k000000" and reads == 100
        reads, rest = reads_of(rows_read, lambda: [next(entries) for _ in range(199)])
        assert rest[-1].key == "ns/big/sub/k000199" and reads == 100  # the second page


def test_iter_dir_pages_through_a_directory(client):
    client.put_many({f"ns/d/{i:03d}": b"x" for i in range(25)} | {"ns/d/sub/deep/k": b"y", "ns/e": b"z"})
    got = list(client.iter_dir("ns/d/", page=7))
    assert [e if isinstance(e, str) else e.key for e in got] == \
        [f"ns/d/{i:03d}" for i in range(25)] + ["ns/d/sub/"]
    assert [e if isinstance(e, str) else e.key for e in client.iter_dir("ns/")] == ["ns/d/", "ns/e"]
    assert [e if isinstance(e, str) else e.key for e in client.iter_dir("ns/d/02", page=2)] == \
        [f"ns/d/{i:03d}" for i in range(20, 25)]
