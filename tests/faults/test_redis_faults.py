"""The Redis metadata store when Redis fails: a master killed mid-stream of commits, a
server that is down or killed, and what is left after a restart."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from blobtier.errors import TierUnavailable, VersionConflict
from blobtier.metadata.store import ABSENT
from tests.contracts.metadata_store import make_record
from tests.redis_cluster import LocalCluster, RedisNode, free_ports, require_redis


@pytest.fixture(autouse=True)
def _redis():
    require_redis()


def open_store(url: str, **kw):
    from blobtier.metadata.redis_store import RedisStore

    return RedisStore.from_url(url, **kw)


def record_for(i: int):
    """A record that says which commit it came from (its blob id)."""
    return make_record(1, n_chunks=4, blob_id=i.to_bytes(16, "little"))


class CommitStream:
    """Commits ``ns/s/<i>`` for i = 0, 1, ... in a thread; remembers what was acknowledged."""

    def __init__(self, store) -> None:
        self.store = store
        self.acked: list[int] = []
        self.failed: list[Exception] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            try:
                self.store.commit(f"ns/s/{i}", record_for(i), expected=ABSENT)
                self.acked.append(i)
            except (TierUnavailable, VersionConflict) as exc:
                self.failed.append(exc)
            i += 1

    def wait_for(self, n: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.acked) < n:
            assert time.monotonic() < deadline, f"only {len(self.acked)} commits: {self.failed[-3:]}"
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)


def assert_all_there(store, acked: list[int]) -> None:
    recs = store.get_many([f"ns/s/{i}" for i in acked])
    missing = [i for i, r in zip(acked, recs) if r is None]
    assert not missing, f"{len(missing)} acknowledged commits lost: {missing[:10]}"
    assert all(r.blob_id == i.to_bytes(16, "little") for i, r in zip(acked, recs))
    listed = {k for k, _ in store.scan("ns/s/", limit=1_000_000)}
    assert {f"ns/s/{i}" for i in acked} <= listed  # and every one of them is listed


def test_acknowledged_commits_survive_the_kill_of_a_master(tmp_path):
    """3 masters with a replica each, wait_replicas=1: kill -9 a master mid-stream; after
    the failover every acknowledged commit is there."""
    with LocalCluster(str(tmp_path), masters=3, replicas=1) as cluster:
        for master in cluster.masters():
            for replica in cluster.replicas_of(master):
                replica.wait_replicating()
        store = open_store(cluster.url, wait_replicas=1, wait_timeout_ms=2000, retry_s=20)
        stream = CommitStream(store)
        try:
            stream.wait_for(150)
            before = len(stream.acked)
            victim, _ = cluster.kill_master()  # returns once its replica took over
            # Until the old master is back as the new one's replica, WAIT 1 cannot be met
            # on that shard: those commits raise (they are not acknowledged).
            victim.start()
            victim.wait_replicating()
            stream.wait_for(before + 50)  # the stream goes on through the failover
        finally:
            stream.stop()
            store.close()
        # the promoted replica has no replica of its own: read without WAIT
        with open_store(cluster.url) as after:
            assert_all_there(after, stream.acked)
        assert len(stream.acked) > before


def test_unreachable_redis_is_a_clear_error_naming_the_endpoints():
    ports = free_ports(2)
    url = "redis://" + ",".join(f"127.0.0.1:{p}" for p in ports)
    with pytest.raises(TierUnavailable, match=f"127.0.0.1:{ports[0]}.*127.0.0.1:{ports[1]}"):
        open_store(url, retry_s=0.2)


def test_redis_going_down_is_a_clear_error_and_writes_nothing(tmp_path):
    node = RedisNode(str(tmp_path), aof=True)
    try:
        store = open_store(node.url, retry_s=0.2)
        store.commit("ns/before", make_record(1))
        node.kill()
        for op in (lambda: store.get("ns/before"), lambda: store.get_many(["ns/a", "ns/b"]),
                   lambda: store.commit("ns/during", make_record(1)), lambda: store.scan("ns/"),
                   lambda: store.list_dir("ns/"), lambda: store.delete("ns/before")):
            with pytest.raises(TierUnavailable, match=node.address):
                op()
        node.start()
        assert store.get("ns/before").version == 1  # the store reconnects on its own
        assert store.get("ns/during") is None
        assert [k for k, _ in store.scan("ns/")] == ["ns/before"]
        store.close()
    finally:
        node.stop()


def test_killed_mid_stream_leaves_whole_records_and_a_true_index(tmp_path):
    """appendfsync always, kill -9 during batches of commits, restart: every acknowledged
    batch is there, every stored record decodes whole, every record is listed."""
    node = RedisNode(str(tmp_path), aof=True)
    try:
        store = open_store(node.url, retry_s=0.2)
        acked: list[int] = []
        batches = threading.Event()

        def write() -> None:
            for b in range(10_000):
                keys = [(f"ns/s/{b * 16 + j}", record_for(b * 16 + j), ABSENT) for j in range(16)]
                try:
                    store.commit_many(keys)
                except TierUnavailable:
                    return
                acked.extend(range(b * 16, b * 16 + 16))
                if b == 20:
                    batches.set()

        t = threading.Thread(target=write)
        t.start()
        assert batches.wait(60)
        node.kill()
        t.join(60)
        node.start()
        assert_all_there(store, acked)
        rows = store.scan("ns/s/", limit=1_000_000)  # decodes every record found
        assert all(r.blob_id == int(k.rsplit("/", 1)[1]).to_bytes(16, "little") for k, r in rows)
        stored = store.get_many([f"ns/s/{i}" for i in range(len(acked) + 64)])
        assert {k for k, _ in rows} == {f"ns/s/{i}" for i, r in enumerate(stored) if r is not None}
        store.close()
    finally:
        node.stop()


class ReplyDropper:
    """A TCP proxy in front of one redis-server. Armed with a marker, it passes on the
    next request that holds the marker, then cuts that connection instead of passing on
    the reply: the command ran, its client never hears so."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.marker: bytes | None = None
        self.dropped = 0
        self._socks: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def arm(self, marker: bytes) -> None:
        self.marker = marker

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._socks += [client, upstream]
            cut = threading.Event()
            for args in ((client, upstream, cut, True), (upstream, client, cut, False)):
                t = threading.Thread(target=self._pump, args=args, daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket, cut: threading.Event, request: bool) -> None:
        try:
            while data := src.recv(65536):
                if request and self.marker and self.marker in data:
                    self.marker = None
                    cut.set()  # before the request goes on: its reply cannot overtake this
                elif not request and cut.is_set():
                    self.dropped += 1
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        except OSError:
            pass
        self.listener.close()
        for s in self._socks:
            s.close()
        for t in self._threads:
            t.join(5)


def test_a_commit_whose_reply_was_lost_is_recognised_when_resent(tmp_path):
    """A compare-and-set that ran but whose reply never came is resent; the resend finds
    its own bytes (or its delete) in place and reports success, not a VersionConflict."""
    from blobtier.metadata.redis_store import _CAS, _SHA

    node = RedisNode(str(tmp_path))
    proxy = ReplyDropper(node.port)
    try:
        with open_store(f"redis://127.0.0.1:{proxy.port}", retry_s=5) as store:
            cas = _SHA[_CAS].encode()
            store.commit("ns/a", record_for(1), expected=ABSENT)
            proxy.arm(cas)
            store.commit("ns/b", record_for(2), expected=ABSENT)
            assert proxy.dropped == 1
            assert store.get("ns/b").blob_id == record_for(2).blob_id
            proxy.arm(cas)
            store.commit("ns/b", make_record(2, blob_id=bytes(16)), expected=1)
            assert proxy.dropped == 2 and store.get("ns/b").version == 2
            proxy.arm(cas)
            assert store.delete("ns/a").blob_id == record_for(1).blob_id
            assert proxy.dropped == 3 and store.get("ns/a") is None
            assert [k for k, _ in store.scan("ns/")] == ["ns/b"]
            # a real conflict stays one
            with pytest.raises(VersionConflict):
                store.commit("ns/b", make_record(5), expected=1)
    finally:
        proxy.close()
        node.stop()
