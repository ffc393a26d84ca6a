"""Faults around the metadata service: a server killed under a stream of calls, every
server down, an answer lost after a commit landed, and 4 writer processes committing
through one service over RocksDB at once (no region lock)."""

from __future__ import annotations

import functools
import itertools
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from prometheus_client import CollectorRegistry

from blobtier.errors import TierUnavailable
from blobtier.metadata.remote import RemoteMetadataStore
from blobtier.metadata.rocksdb_store import RocksDBStore
from blobtier.metadata.service import MetadataServicer, MetaMetrics
from blobtier.metadata.store import ABSENT
from blobtier.rpc.gen import meta_pb2_grpc as pb_grpc
from tests import redis_cluster
from tests.contracts.metadata_store import make_record, run_race

redis_node = redis_cluster.redis_node  # the session's Redis node
_prefixes = itertools.count()


class Served:
    """A ``blobtier meta serve`` process."""

    def __init__(self, backend: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "blobtier.cli", "meta", "serve",
                                      "--backend", backend], stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("metadata service serving"), line
        self.address = line.rsplit(" on ", 1)[1].strip()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def two_servers(redis_node):
    """Two metadata servers over one Redis (stateless: the same region)."""
    url = f"{redis_node.url}?prefix=faults{next(_prefixes)}:&retry_s=2"
    servers = []
    try:
        servers = [Served(url), Served(url)]
        yield servers
    finally:
        for s in servers:
            s.stop()


def test_a_killed_server_costs_no_call(two_servers):
    client = RemoteMetadataStore([s.address for s in two_servers], timeout_s=5)
    acked, errors, stop = [], [], threading.Event()

    def writer(w: int) -> None:
        for i in itertools.count():
            if stop.is_set():
                return
            key = f"ns/w{w}/{i}"
            try:
                client.commit(key, make_record(1), expected=ABSENT)
                acked.append(key)
                assert client.get(key).version == 1
            except Exception as exc:  # noqa: BLE001 - every failure fails the test
                errors.append(repr(exc))
                return

    try:
        with ThreadPoolExecutor(3) as pool:
            for w in range(3):
                pool.submit(writer, w)
            while len(acked) < 60 and not errors:
                threading.Event().wait(0.01)
            two_servers[0].kill()  # SIGKILL mid-stream
            killed_at = len(acked)
            while len(acked) < killed_at + 120 and not errors:
                threading.Event().wait(0.01)
            stop.set()
        assert errors == []
        assert client.health.benched() == [0]  # the dead one is skipped, not asked each call
        assert all(r is not None and r.version == 1 for r in client.get_many(acked))
    finally:
        client.close()


def test_every_server_down_names_every_endpoint(two_servers):
    client = RemoteMetadataStore([s.address for s in two_servers], timeout_s=5)
    try:
        client.commit("ns/a", make_record(1))
        for s in two_servers:
            s.kill()
        for call in (lambda: client.get("ns/a"), lambda: client.commit("ns/b", make_record(1)),
                     lambda: client.scan("ns/")):
            with pytest.raises(TierUnavailable) as info:
                call()
            assert all(s.address in str(info.value) for s in two_servers)
    finally:
        client.close()


class _LoseCommitAnswers(grpc.ServerInterceptor):
    """The first ``n`` Commits are applied, then answered UNAVAILABLE: a server that died
    after its store took a commit and before the client heard of it."""

    def __init__(self, n: int) -> None:
        self.left = n

    def intercept_service(self, continuation, details):  # noqa: ANN001 - grpc's API
        handler = continuation(details)
        if handler is None or not details.method.endswith("/Commit"):
            return handler

        def commit(request, context):  # noqa: ANN001
            reply = handler.unary_unary(request, context)
            if self.left > 0:
                self.left -= 1
                context.abort(grpc.StatusCode.UNAVAILABLE, "connection lost after the commit")
            return reply

        return grpc.unary_unary_rpc_method_handler(commit, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)


def _server(store, interceptors=()) -> tuple[grpc.Server, str]:
    server = grpc.server(ThreadPoolExecutor(4), interceptors=list(interceptors))
    pb_grpc.add_MetadataServiceServicer_to_server(MetadataServicer(store, MetaMetrics(CollectorRegistry())),
                                                  server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


def test_a_commit_whose_answer_was_lost_is_not_a_conflict(tmp_path):
    store = RocksDBStore(str(tmp_path / "db"), writable=True)
    lossy, a = _server(store, [_LoseCommitAnswers(1)])
    plain, b = _server(store)
    client = RemoteMetadataStore([a, b])  # the first call goes to a
    try:
        client.commit("ns/k", make_record(1, blob_id=b"\x01" * 16), expected=ABSENT)  # no VersionConflict
        assert client.get("ns/k").blob_id == b"\x01" * 16
        assert client.commit_many([("ns/k", make_record(2), 1)]) == [True]
    finally:
        client.close()
        lossy.stop(0)
        plain.stop(0)
        store.close()


def test_four_writer_processes_through_one_service_over_rocksdb(tmp_path):
    db = str(tmp_path / "db")
    server = Served(f"rocksdb:{db}")
    try:
        keys = ["ns/race/a", "ns/race/b", "ns/race/c"]
        opener = functools.partial(RemoteMetadataStore, [server.address])
        with opener() as client:
            results = run_race(client, opener, writers=4, rounds=60, keys=keys)
        server.stop()
        assert server.proc.returncode == 0
    finally:
        server.kill()
    acked = [a for log, _ in results for a in log]
    assert len(acked) + sum(c for _, c in results) == 4 * 60  # each commit landed or raised
    assert {w for _, _, w, _ in acked} == {0, 1, 2, 3}  # all four wrote, at once
    with RocksDBStore(db, writable=True) as store:  # what the service left on disk
        for key in keys:
            final = store.get(key)
            assert sorted(v for k, v, _, _ in acked if k == key) == list(range(1, final.version + 1))
            _, _, writer, r = next(a for a in acked if a[0] == key and a[1] == final.version)
            assert final.blob_id == bytes([writer, r]) + bytes(14)
