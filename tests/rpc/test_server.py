"""serve(): loopback by default, one server per port, TLS when given certificates."""

from __future__ import annotations

import shutil
import subprocess

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from blobtier.blockstore_sim.chunk_server import ChunkServer
from blobtier.blockstore_sim.remote import RemoteChunkStore
from blobtier.checksum import xxh3
from blobtier.errors import TierUnavailable, TlsRefused
from blobtier.rpc.server import health_servicer, serve
from blobtier.rpc.tls import Tls


def test_serves_health_on_loopback_by_default():
    _, servicer = health_servicer(["my.Service"])
    server, port = serve([servicer])
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(service="my.Service"), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(None)


def test_a_port_in_use_is_refused():
    server, port = serve([health_servicer([])[1]])
    try:
        with pytest.raises(TierUnavailable, match=str(port)):
            serve([health_servicer([])[1]], f"127.0.0.1:{port}")
    finally:
        server.stop(None)


@pytest.fixture
def certs(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return str(cert), str(key)


def test_tls_round_trip(tmp_path, certs):
    cert, key = certs
    with ChunkServer(str(tmp_path / "s"), tls=Tls(cert_file=cert, key_file=key)) as server:
        store = RemoteChunkStore(server.address, tls=Tls(ca_file=cert), timeout_s=10)
        plain = RemoteChunkStore(server.address, timeout_s=5)
        try:
            store.put_many([(b"d" * 16, b"secret bytes", xxh3(b"secret bytes"))])
            assert bytes(store.get(b"d" * 16)) == b"secret bytes"
            with pytest.raises(TlsRefused, match="speaks TLS"):
                plain.get(b"d" * 16)  # a plaintext client cannot talk to a TLS server
        finally:
            store.close()
            plain.close()
