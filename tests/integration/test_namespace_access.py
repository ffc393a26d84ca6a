"""A token for namespace ``a`` cannot read namespace ``b``: not through the SDK, fsspec
(``blobtier://``) or the DataLoader; it gets ``PermissionError`` and not one byte leaves
a chunk server. Real metadata service and chunk servers with tokens and a grant key.
Grants signed with a rotated-out key keep working until the key is retired."""

from __future__ import annotations

import time

import pytest

import blobtier
from blobtier.blockstore_sim.chunk_server import ChunkServer
from blobtier.errors import Forbidden
from blobtier.grants import BOOK, READ, KeyRing
from blobtier.metadata.remote import RemoteMetadataStore
from blobtier.metadata.rocksdb_store import RocksDBStore
from blobtier.metadata.service import MetadataServer
from blobtier.rpc.auth import TokenTable, digest
from blobtier.sdk.fs import BlobtierFileSystem

A, B = "secret-a", "secret-b"
TOKENS = {"token": [
    {"name": "a", "sha256": digest(A), "grants": [{"ns": "a", "rights": ["read", "write"]}]},
    {"name": "b", "sha256": digest(B), "grants": [{"ns": "b*", "rights": ["read", "write"]}]},
]}
SECRET = b"namespace b only " * 5000


@pytest.fixture
def services(tmp_path):
    key_file = str(tmp_path / "grant.key")
    KeyRing.create(key_file)
    table = TokenTable.from_mapping(TOKENS)
    meta = MetadataServer(RocksDBStore(str(tmp_path / "db"), writable=True), auth=table,
                          grants=KeyRing.load(key_file))
    chunks = [ChunkServer(str(tmp_path / f"c{i}"), auth=table, grants=KeyRing.load(key_file))
              for i in range(2)]
    yield meta, chunks, key_file
    for s in (meta, *chunks):
        s.stop(0)


def connect(tmp_path, meta, chunks, token):
    return blobtier.connect(str(tmp_path / "client"), metadata={"endpoints": [meta.address]},
                            block={"endpoints": [c.address for c in chunks], "replicas": 2},
                            client={"chunk_size": "64KiB"}, cache={"l1_bytes": 0}, auth={"token": token})


def sent(chunks) -> int:
    return sum(c.faults.counters()["bytes_sent"] for c in chunks)


def test_a_token_for_a_reads_nothing_of_b(tmp_path, services):
    meta, chunks, _ = services
    with connect(tmp_path, meta, chunks, B) as b:
        b.put("b/secret", SECRET)
        b.put("b-two/x", b"also b's")
        assert bytes(b.get("b/secret")) == SECRET
    BOOK.clear()  # b's grants were this process's: a must get none from the book
    with connect(tmp_path, meta, chunks, A) as a:
        a.put("a/mine", b"a's own")
        fs = BlobtierFileSystem(client=a)
        before = sent(chunks)
        for read in (lambda: a.get("b/secret"), lambda: a.stat("b/secret"),
                     lambda: a.get_many(["a/mine", "b/secret"]), lambda: a.open("b/secret", "rb"),
                     lambda: a.read_range("b/secret", 0, 10), lambda: a.ls("b/"),
                     lambda: a.delete("b/secret"), lambda: a.put("b/evil", b"x"),
                     lambda: fs.cat("blobtier://b/secret"), lambda: fs.open("blobtier://b/secret", "rb"),
                     lambda: fs.ls("blobtier://b/")):
            with pytest.raises(PermissionError):
                read()
        assert sent(chunks) == before  # not one byte of b left a chunk server
        assert [i.key for i in a.iter_ls("")] == ["a/mine"]  # b's keys and namespaces never listed
        assert bytes(a.get("a/mine")) == b"a's own"
    with connect(tmp_path, meta, chunks, B) as b:
        assert bytes(b.get("b/secret")) == SECRET  # b still reads it: nothing was changed


def test_the_dataloader_of_a_gets_permission_error_for_b(tmp_path, services):
    torch = pytest.importorskip("torch")
    from blobtier.dataloader import BlobDataset

    meta, chunks, _ = services
    with connect(tmp_path, meta, chunks, B) as b:
        b.put_many({f"b/s{i}": SECRET for i in range(4)})
    BOOK.clear()
    with connect(tmp_path, meta, chunks, A) as a:
        before = sent(chunks)
        with pytest.raises(PermissionError):
            BlobDataset("b/", client=a)  # its listing is refused outright
        dataset = BlobDataset([f"b/s{i}" for i in range(4)], client=a)
        loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=list)
        with pytest.raises(PermissionError):
            next(iter(loader))
        assert sent(chunks) == before


def _restart(chunks, key_file):
    """Each chunk server again on its port, with the key file as it is now (a restart)."""
    table = TokenTable.from_mapping(TOKENS)
    for i, c in enumerate(chunks):
        c.stop(0)
        chunks[i] = ChunkServer(c.root, addr=c.address, auth=table, grants=KeyRing.load(key_file))


def test_grants_of_a_rotated_key_work_until_it_is_retired(tmp_path, services):
    meta, chunks, key_file = services
    with connect(tmp_path, meta, chunks, A) as a:
        a.put("a/x", b"x" * 100_000)
        assert bytes(a.get("a/x")) == b"x" * 100_000
        KeyRing.rotate(key_file)
        _restart(chunks, key_file)
        assert bytes(a.get("a/x")) == b"x" * 100_000  # under the grant the old key signed
        KeyRing.retire(key_file)
        _restart(chunks, key_file)
        with pytest.raises(Forbidden):
            a.get("a/x")
        # Refused at once: one request per chunk, no failover to the other replica and no
        # retry rounds (a refusal is not a server that cannot answer).
        assert sum(c.faults.counters()["requests"] for c in chunks) <= 2


def test_an_expired_grant_is_refreshed_by_fetching_the_record_again(tmp_path, services):
    meta, chunks, key_file = services
    ring = KeyRing.load(key_file)
    with connect(tmp_path, meta, chunks, A) as a:
        a.put("a/x", b"x" * 100_000)
        store = RemoteMetadataStore(meta.address, token=A)  # the record's fetcher, kept open
        try:
            rec = store.get("a/x")
            gets = _meta_gets(meta)
            # The grant the client holds expires; the book keeps its way to fetch a new one.
            BOOK.add(ring.sign(rec.blob_id, rec.version, "a", READ, expires=time.time() - 1))
            assert bytes(a.get("a/x")) == b"x" * 100_000
            assert _meta_gets(meta) == gets + 1  # the record fetched once, then the chunks read
        finally:
            store.close()


def _meta_gets(meta) -> float:
    return meta.metrics.registry.get_sample_value("blobtier_meta_requests_total", {"method": "Get"}) or 0


def test_a_grant_the_book_dropped_is_fetched_again_for_a_cached_record(tmp_path, services):
    meta, chunks, _ = services
    with connect(tmp_path, meta, chunks, A) as a:
        a.put("a/x", b"y" * 100_000)
        assert bytes(a.get("a/x")) == b"y" * 100_000
        gets = _meta_gets(meta)
        BOOK.clear()  # evicted (a bounded book), while the read-plan cache keeps the record
        assert bytes(a.get("a/x")) == b"y" * 100_000
        assert _meta_gets(meta) == gets + 1


def test_embedded_mode_needs_no_token_and_no_grant(tmp_path):
    """No services: the Unix user owning the region files is the boundary; nothing asks
    for a token or carries a grant."""
    BOOK.clear()
    with blobtier.connect(str(tmp_path / "embedded"), client={"chunk_size": "64KiB"}) as c:
        c.put("b/secret", SECRET)
        assert bytes(c.get("b/secret")) == SECRET
        assert [i.key for i in c.iter_ls("")] == ["b/secret"]
    assert BOOK.many([b"\0" * 16]) == [] and not BOOK._grants
