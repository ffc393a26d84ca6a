"""A chunk server's Prometheus endpoint: the documented series, moving with requests."""

from __future__ import annotations

import os

import pytest

from blobtier.blockstore_sim.chunk_server import ChunkServer
from blobtier.blockstore_sim.remote import RemoteChunkStore
from blobtier.checksum import xxh3
from blobtier.errors import BlobNotFound, TierUnavailable
from blobtier.region.top import fetch

D1, D2 = b"\x01" * 16, b"\x02" * 16


@pytest.fixture
def server(tmp_path):
    s = ChunkServer(str(tmp_path / "server"), server_id=1, metrics_port=0)
    yield s
    s.stop(0)


def test_series_move_with_requests(server):
    m = fetch(server.metrics_port)
    for method in ("Get", "Put", "Delete", "Stat", "List"):  # present before any request
        assert m[("blobtier_chunkserver_requests_total", (("method", method),))] == 0
    assert m[("blobtier_chunkserver_sent_bytes_total", ())] == 0
    assert m[("blobtier_chunkserver_faults_total", (("kind", "refused"),))] == 0
    assert m[("blobtier_chunkserver_down", ())] == 0
    data = os.urandom(300_000)
    store = RemoteChunkStore(server.address, timeout_s=10)
    try:
        store.put_many([(D1, data, xxh3(data))])
        assert bytes(store.get(D1)) == data
        with pytest.raises(BlobNotFound):
            store.get(D2)
        server.faults.update(down=True)
        with pytest.raises(TierUnavailable):
            store.get(D1)
    finally:
        store.close()
    m = fetch(server.metrics_port)
    get = (("method", "Get"),)
    assert m[("blobtier_chunkserver_requests_total", get)] >= 3
    assert m[("blobtier_chunkserver_errors_total", get)] >= 2  # not found, then down
    assert m[("blobtier_chunkserver_request_seconds_count", get)] >= 3
    assert m[("blobtier_chunkserver_request_seconds_bucket", (("le", "+Inf"), ("method", "Get")))] >= 3
    assert m[("blobtier_chunkserver_sent_bytes_total", ())] == len(data)
    assert m[("blobtier_chunkserver_received_bytes_total", ())] == len(data)
    assert m[("blobtier_chunkserver_faults_total", (("kind", "refused"),))] >= 1
    assert m[("blobtier_chunkserver_down", ())] == 1


def test_stop_frees_the_metrics_port(tmp_path):
    import socket

    s = ChunkServer(str(tmp_path / "s"), metrics_port=0)
    port = s.metrics_port
    s.stop(0)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # nothing left listening
