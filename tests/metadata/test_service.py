"""The metadata service on the wire: status codes and messages, the server serving on
after bad input, tokens, the resent-commit rule, its Prometheus series, and the CLI."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request

import grpc
import pytest

from blobtier.errors import Forbidden, MetadataCorrupt, TierUnavailable, VersionConflict
from blobtier.metadata import schema
from blobtier.metadata.remote import RemoteMetadataStore
from blobtier.metadata.rocksdb_store import RocksDBStore
from blobtier.metadata.service import MetadataServer
from blobtier.metadata.store import ABSENT, ANY
from blobtier.rpc.auth import TokenTable, digest
from blobtier.rpc.gen import meta_pb2 as pb
from blobtier.rpc.gen import meta_pb2_grpc as pb_grpc
from tests import redis_cluster
from tests.contracts.metadata_store import make_record

Code = grpc.StatusCode


@pytest.fixture
def server(tmp_path):
    s = MetadataServer(RocksDBStore(str(tmp_path / "db"), writable=True), metrics_port=0)
    yield s
    s.stop(0)


@pytest.fixture
def stub(server):
    channel = grpc.insecure_channel(server.address)
    yield pb_grpc.MetadataServiceStub(channel)
    channel.close()


def status_of(call, request) -> tuple[Code, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=10)
    return info.value.code(), info.value.details()


def good(key: str = "ns/ok") -> pb.CommitItem:
    return pb.CommitItem(key=key, expected=ABSENT, record=schema.encode(make_record(1)))


def test_bad_requests_get_their_codes_and_the_server_serves_on(stub, server):
    assert stub.Commit(pb.CommitRequest(items=[good()]), timeout=10).applied == [True]
    bad = [
        (stub.Get, pb.GetRequest(key="ns/missing"), Code.NOT_FOUND, ""),
        (stub.Get, pb.GetRequest(key="ns//x"), Code.INVALID_ARGUMENT, "'ns//x'"),
        (stub.GetMany, pb.GetManyRequest(keys=["ns/ok", "../etc"]), Code.INVALID_ARGUMENT, "'../etc'"),
        (stub.Commit, pb.CommitRequest(items=[good(), good("bad")]), Code.INVALID_ARGUMENT, "'bad'"),
        (stub.Commit, pb.CommitRequest(items=[pb.CommitItem(key="ns/r", record=b"garbage")]),
         Code.INVALID_ARGUMENT, "'ns/r' is not a valid blobtier record"),
        (stub.Commit, pb.CommitRequest(items=[pb.CommitItem(key="ns/r", expected=-2, record=b"x")]),
         Code.INVALID_ARGUMENT, "expected must be"),
        (stub.Commit, pb.CommitRequest(items=[pb.CommitItem(key="ns/r", delete=True, record=b"x")]),
         Code.INVALID_ARGUMENT, "a delete carries no record"),
        (stub.Delete, pb.DeleteRequest(key="ns/ok", expected=7), Code.ABORTED, "expected version 7"),
        (stub.Delete, pb.DeleteRequest(key="ns/missing"), Code.NOT_FOUND, ""),
        (stub.List, pb.ListRequest(prefix="ns/", delimiter=","), Code.INVALID_ARGUMENT, "delimiter"),
        (stub.List, pb.ListRequest(prefix="ns/", limit=10**6), Code.INVALID_ARGUMENT, "limit"),
        (stub.List, pb.ListRequest(prefix="/ns"), Code.INVALID_ARGUMENT, "'/ns'"),
        (stub.List, pb.ListRequest(prefix="ns/", page_token="a\x00b"), Code.INVALID_ARGUMENT, "page_token"),
        (stub.RegisterOrigins, pb.RegisterOriginsRequest(urls=["s3://b/a::file:///etc"]),
         Code.PERMISSION_DENIED, ""),
    ]
    for call, request, code, says in bad:
        got, details = status_of(call, request)
        assert got == code, (request, got, details)
        assert says in details
        assert stub.Get(pb.GetRequest(key="ns/ok"), timeout=10).record  # still serving
    assert server.store.get("ns/r") is None and server.store.get("ns/ok").version == 1
    assert server.store.origins() == []


def test_a_corrupt_stored_record_is_data_loss_and_never_sent(stub, server):
    server.store._cas_many([(schema.record_key("ns/bad"), ANY, b"\x00" * 60)])
    for call, request in [(stub.Get, pb.GetRequest(key="ns/bad")),
                          (stub.GetMany, pb.GetManyRequest(keys=["ns/bad"])),
                          (stub.List, pb.ListRequest(prefix="ns/"))]:
        code, details = status_of(call, request)
        assert code == Code.DATA_LOSS and "\x00" not in details
    client = RemoteMetadataStore(server.address)
    try:
        with pytest.raises(MetadataCorrupt, match="ns/bad"):
            client.get("ns/bad")
    finally:
        client.close()


def test_a_resent_commit_that_had_landed_counts_as_applied(stub, server):
    item = good("ns/once")
    assert stub.Commit(pb.CommitRequest(items=[item]), timeout=10).applied == [True]
    # the first answer was lost: sent again, its compare (ABSENT) no longer holds...
    assert stub.Commit(pb.CommitRequest(items=[item]), timeout=10).applied == [False]
    # ...but the key holds exactly its record: it had landed
    other = good("ns/other")
    assert stub.Commit(pb.CommitRequest(items=[item, other], resent=True), timeout=10).applied == [True, True]
    rival = pb.CommitItem(key="ns/once", expected=ABSENT, record=schema.encode(make_record(2)))
    assert stub.Commit(pb.CommitRequest(items=[rival], resent=True), timeout=10).applied == [False]
    gone = pb.CommitItem(key="ns/other", expected=1, delete=True)
    assert stub.Commit(pb.CommitRequest(items=[gone]), timeout=10).applied == [True]
    assert stub.Commit(pb.CommitRequest(items=[gone], resent=True), timeout=10).applied == [True]
    assert server.store.get("ns/once").version == 1 and server.store.get("ns/other") is None


def test_metrics_series_move(server):
    client = RemoteMetadataStore(server.address)
    try:
        client.commit_many([(f"ns/m/{i}", make_record(1), ABSENT) for i in range(5)])
        client.get("ns/m/0")
        assert client.get("ns/missing") is None
        assert len(client.get_many([f"ns/m/{i}" for i in range(5)])) == 5
        assert len(client.scan("ns/m/")) == 5
        with pytest.raises(VersionConflict):
            client.delete("ns/m/1", expected=9)
    finally:
        client.close()
    value = server.metrics.registry.get_sample_value
    assert value("blobtier_meta_requests_total", {"method": "Get"}) == 2
    assert value("blobtier_meta_errors_total", {"method": "Get"}) == 1  # the NOT_FOUND
    assert value("blobtier_meta_request_seconds_count", {"method": "GetMany"}) == 1
    assert value("blobtier_meta_errors_total", {"method": "Delete"}) == 1
    assert value("blobtier_meta_records_served_total") == 1 + 5 + 5
    assert value("blobtier_meta_records_committed_total") == 5
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    assert 'blobtier_meta_requests_total{method="Commit"} 1.0' in text


def test_tokens_guard_every_method(tmp_path):
    table = TokenTable.from_mapping({"token": [
        {"name": "reader", "sha256": digest("r-token"), "rights": ["read"]},
        {"name": "writer", "sha256": digest("w-token"), "rights": ["read", "write"]}]})
    with MetadataServer(RocksDBStore(str(tmp_path / "db"), writable=True), auth=table) as server:
        writer = RemoteMetadataStore(server.address, token="w-token")
        reader = RemoteMetadataStore(server.address, token="r-token")
        nobody = RemoteMetadataStore(server.address)
        try:
            writer.commit("ns/a", make_record(1))
            assert reader.get("ns/a").version == 1 and reader.get_many(["ns/a"])[0].version == 1
            assert [k for k, _ in reader.list_dir("ns/")] == ["ns/a"] and reader.origins() == []
            with pytest.raises(Forbidden):
                reader.commit("ns/b", make_record(1))
            with pytest.raises(Forbidden):
                reader.delete("ns/a")
            with pytest.raises(Forbidden):
                writer.register_origins([str(tmp_path)])  # admin only
            with pytest.raises(Forbidden):
                nobody.get("ns/a")
            assert writer.get("ns/a").version == 1 and writer.get("ns/b") is None
        finally:
            for c in (writer, reader, nobody):
                c.close()


def test_a_backend_that_is_down_is_unavailable(tmp_path):
    from blobtier.metadata.redis_store import RedisStore

    node = redis_cluster.RedisNode(str(tmp_path / "redis"))
    try:
        server = MetadataServer(RedisStore.from_url(node.url, retry_s=0.2, socket_timeout_s=1))
        client = RemoteMetadataStore(server.address)
        try:
            client.commit("ns/a", make_record(1))
            node.kill()
            with pytest.raises(TierUnavailable, match=server.address):
                client.get("ns/a")
        finally:
            client.close()
            server.stop(0)
    finally:
        node.stop()


def test_meta_serve_cli_prints_its_address_and_stops_on_sigterm(tmp_path):
    db = str(tmp_path / "db")
    proc = subprocess.Popen([sys.executable, "-m", "blobtier.cli", "meta", "serve", "--backend",
                             f"rocksdb:{db}", "--metrics-port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"metadata service serving metadata store {db} on 127.0.0.1:"), line
        addr = line.split(" on ")[1].split(",")[0].strip()
        client = RemoteMetadataStore(addr)
        try:
            client.commit("ns/a", make_record(3))
        finally:
            client.close()
        # the service is the database's one writer: no other process may open it for writing
        with pytest.raises(BlockingIOError):
            RocksDBStore(db, writable=True)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    with RocksDBStore(db, writable=True) as store:  # the lock went with the server
        assert store.get("ns/a").version == 3


def test_meta_serve_cli_refuses_a_bad_backend():
    proc = subprocess.run([sys.executable, "-m", "blobtier.cli", "meta", "serve", "--backend", "lmdb:/x"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "rocksdb:DIR or redis://" in proc.stderr and "Traceback" not in proc.stderr

