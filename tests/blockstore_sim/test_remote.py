"""RemoteChunkStore: the ChunkStore contract over gRPC, errors, cancellation, admin."""

from __future__ import annotations

import os
import threading
import time

import pytest

from blobtier.blockstore_sim import remote
from blobtier.blockstore_sim.chunk_server import ChunkServer
from blobtier.blockstore_sim.remote import RemoteChunkStore
from blobtier.checksum import xxh3
from blobtier.chunks import ChunkStore
from blobtier.errors import BlobNotFound, InvalidRequest, OutOfRange, TierUnavailable, TimedOut


def eventually(check, timeout_s: float = 10.0) -> None:
    """Wait until ``check()`` holds (for effects that cross threads); fail after timeout."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition never held"
        threading.Event().wait(0.01)


@pytest.fixture
def server(tmp_path):
    s = ChunkServer(str(tmp_path / "s"), server_id=2)
    yield s
    s.stop(0)


@pytest.fixture
def store(server):
    r = RemoteChunkStore(server.address, timeout_s=10)
    yield r
    r.close()


def item(digest: bytes, data: bytes) -> tuple[bytes, bytes, int]:
    return digest, data, xxh3(data)


def test_is_a_chunk_store(store):
    assert isinstance(store, ChunkStore)  # the protocol VolumeStore implements too


def test_put_get_exists_stat_digests_delete(store):
    big, small = os.urandom(2_500_000), b"tiny"
    store.put_many([item(b"a" * 16, big), item(b"b" * 16, small), item(b"c" * 16, b"")])
    assert bytes(store.get(b"a" * 16)) == big
    assert store.get(b"a" * 16).readonly
    assert bytes(store.get(b"a" * 16, 1_000_000, 10)) == big[1_000_000:1_000_010]
    assert bytes(store.get(b"b" * 16)) == small and bytes(store.get(b"c" * 16)) == b""
    assert store.exists(b"a" * 16) and not store.exists(b"z" * 16)
    length, h, written = store.stat(b"a" * 16)
    assert (length, h) == (len(big), xxh3(big)) and written > 0
    assert sorted(d for d, _ in store.digests()) == [b"a" * 16, b"b" * 16, b"c" * 16]
    store.delete_many([b"a" * 16, b"z" * 16])
    assert not store.exists(b"a" * 16)


def test_large_batches_are_split_into_several_puts(store, server, monkeypatch):
    monkeypatch.setattr(remote, "_PUT_BATCH_BYTES", 100_000)
    before = server.faults.counters()["requests"]
    items = [item(bytes([i]) * 16, os.urandom(60_000)) for i in range(5)]
    store.put_many(items)
    assert server.faults.counters()["requests"] - before == 5
    assert all(bytes(store.get(d)) == data for d, data, _ in items)


def test_errors_map_to_blobtier_exceptions(store):
    store.put_many([item(b"a" * 16, b"0123456789")])
    with pytest.raises(BlobNotFound, match="NOT_FOUND"):
        store.get(b"q" * 16)
    with pytest.raises(OutOfRange):
        store.get(b"a" * 16, 5, 10)
    with pytest.raises(InvalidRequest):
        store.get(b"short")


def test_unreachable_server_is_unavailable(tmp_path):
    s = ChunkServer(str(tmp_path / "gone"))
    addr = s.address
    s.stop(0)
    r = RemoteChunkStore(addr, timeout_s=10)
    try:
        with pytest.raises(TierUnavailable, match=addr):
            r.get(b"a" * 16)
        with pytest.raises(TierUnavailable):
            r.put_many([item(b"a" * 16, b"x")])
    finally:
        r.close()


def test_deadline_raises_timed_out(store, server):
    store.put_many([item(b"a" * 16, b"slow")])
    server.faults.update(latency_ms=5000)
    with pytest.raises(TimedOut):
        store.start_get(b"a" * 16, timeout_s=0.2).result()


def test_cancel_stops_the_server_waiting(store, server):
    store.put_many([item(b"a" * 16, b"slow")])
    server.faults.update(latency_ms=60_000)
    pending = store.start_get(b"a" * 16)
    eventually(lambda: server.faults.counters()["delayed"] == 1)
    pending.cancel()
    with pytest.raises(TierUnavailable, match="CANCELLED"):
        pending.result()
    eventually(lambda: server.faults.counters()["cancelled"] == 1)


def test_admin_set_reset_and_state(store):
    state = store.set_faults(latency_ms=3, tail_p=0.5, tail_factor=10)
    assert state.server_id == 2 and state.profile.tail_factor == 10
    assert store.fault_state().profile.latency_ms == 3
    state = store.set_faults(reset=True, down=True)
    assert state.profile.latency_ms == 0 and state.profile.down
    assert store.health() == "NOT_SERVING"
    store.set_faults(down=False)
    assert store.health() == "SERVING"
    with pytest.raises(InvalidRequest):
        store.set_faults(error_rate=3)
    with pytest.raises(InvalidRequest):
        store.set_faults(latency="fast")
