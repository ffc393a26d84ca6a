"""Bearer tokens with rights on every RPC: chunk servers, flash nodes, L2 peers, the SDK."""

from __future__ import annotations

import os

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import blobtier
from blobtier.blockstore_sim.chunk_server import ChunkServer
from blobtier.blockstore_sim.faults import FaultProfile
from blobtier.blockstore_sim.remote import RemoteChunkStore
from blobtier.checksum import xxh3
from blobtier.config import FlashNodeConfig
from blobtier.errors import Forbidden, InvalidRequest
from blobtier.flash_l3.local_reads import RegionReader
from blobtier.flash_l3.service import FlashNode
from blobtier.rpc.auth import TokenTable, digest, right_of
from blobtier.rpc.remote_cache import RemoteChunkCache
from tests.flash_l3.helpers import MemorySource, keys_and_data

TOKENS = {"reader": ["read"], "writer": ["read", "write"], "operator": ["read", "write", "admin"]}


def table_file(tmp_path) -> str:
    path = tmp_path / "tokens.toml"
    path.write_text("".join(f'[[token]]\nname = "{n}"\nsha256 = "{digest(n + "-secret")}"\n'
                            f"rights = {rights!r}\n".replace("'", '"') for n, rights in TOKENS.items()))
    return str(path)


def token(name: str) -> str:
    return name + "-secret"


@pytest.fixture
def server(tmp_path):
    s = ChunkServer(str(tmp_path / "s"), auth=TokenTable.load(table_file(tmp_path)))
    yield s
    s.stop(0)


def test_rights_per_method():
    assert right_of("/blobtier.block.v1.ChunkService/Get") == "read"
    assert right_of("/blobtier.flash.v1.CacheService/Locate") == "read"
    assert right_of("/blobtier.block.v1.ChunkService/Put") == "write"
    assert right_of("/blobtier.flash.v1.CacheService/Prefetch") == "write"
    assert right_of("/blobtier.block.v1.ChunkAdmin/GetFaults") == "admin"
    assert right_of("/blobtier.flash.v1.CacheAdmin/Stats") == "admin"
    assert right_of("/blobtier.block.v1.ChunkService/Unknown") == "admin"  # unknown: the strictest
    assert right_of("/grpc.health.v1.Health/Check") is None


@pytest.mark.parametrize("text, why", [
    ("", "one or more"),
    ('[[token]]\nname = "x"\nsha256 = "abc"\nrights = ["read"]\n', "64 hex"),
    (f'[[token]]\nname = "x"\nsha256 = "{"a" * 64}"\nrights = ["fly"]\n', "rights"),
    ("[[token", "not valid TOML"),
])
def test_bad_token_files_are_refused_with_the_reason(tmp_path, text, why):
    path = tmp_path / "t.toml"
    path.write_text(text)
    with pytest.raises(InvalidRequest, match=why):
        TokenTable.load(str(path))


def test_chunk_server_checks_the_right_of_every_call(server):
    data = b"guarded bytes"
    item = [(b"k" * 16, data, xxh3(data))]

    def store(name: str | None) -> RemoteChunkStore:
        return RemoteChunkStore(server.address, timeout_s=10, token=token(name) if name else None)

    nobody, reader, writer, operator = store(None), store("reader"), store("writer"), store("operator")
    try:
        with pytest.raises(Forbidden):
            nobody.put_many(item)
        with pytest.raises(Forbidden, match="write"):
            reader.put_many(item)
        writer.put_many(item)
        assert bytes(reader.get(b"k" * 16)) == data
        with pytest.raises(Forbidden):
            nobody.get(b"k" * 16)
        with pytest.raises(Forbidden):
            RemoteChunkStore(server.address, token="forged").get(b"k" * 16)
        with pytest.raises(Forbidden, match="admin"):
            writer.set_faults(latency_ms=1.0)
        assert operator.set_faults(latency_ms=0.0).profile == FaultProfile()
        with grpc.insecure_channel(server.address) as ch:  # probes need no token
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert bytes(reader.get(b"k" * 16)) == data  # refusals left it serving
    finally:
        for s in (nobody, reader, writer, operator):
            s.close()


def test_flash_node_checks_tokens(tmp_path):
    node = FlashNode(FlashNodeConfig(str(tmp_path / "f"), 8 << 20, region_bytes=1 << 20), MemorySource(),
                     auth=TokenTable.load(table_file(tmp_path)))
    chunks = keys_and_data(3)
    for key, data in chunks.items():
        node.cache.put(key, data)
    good = RemoteChunkCache(node.address, timeout_s=10, token=token("reader"), local_reads=RegionReader)
    bad = RemoteChunkCache(node.address, timeout_s=10, local_reads=RegionReader)
    try:
        assert {k: bytes(v) for k, v in good.get_many(list(chunks)).items()} == chunks
        with pytest.raises(blobtier.TierUnavailable, match="token"):  # a cache that refuses is skipped
            bad.get_many(list(chunks))
        with pytest.raises(blobtier.TierUnavailable):
            good.stats()  # admin
    finally:
        good.close()
        bad.close()
        node.stop(0)


def test_sdk_presents_the_configured_token(tmp_path):
    tokens = TokenTable.load(table_file(tmp_path))
    servers = [ChunkServer(str(tmp_path / f"c{i}"), server_id=i, auth=tokens) for i in range(3)]
    try:
        endpoints = [s.address for s in servers]
        region = str(tmp_path / "region")
        opts = {"block": {"endpoints": endpoints}, "cache": {"daemon": "off"}}
        with blobtier.connect(region, auth={"token": token("writer")}, **opts) as c:
            data = os.urandom(300_000)
            c.put("ds/x", data)
            assert bytes(c.get("ds/x")) == data
        with blobtier.connect(region, auth={"token": token("reader")}, **opts) as c:
            assert bytes(c.get("ds/x")) == data
            with pytest.raises(Forbidden):
                c.put("ds/y", b"no")
        os.environ["BLOBTIER_AUTH_TOKEN"] = token("reader")  # the environment works too
        try:
            with blobtier.connect(region, **opts) as c:
                assert bytes(c.get("ds/x")) == data
        finally:
            del os.environ["BLOBTIER_AUTH_TOKEN"]
    finally:
        for s in servers:
            s.stop(0)


def test_fsspec_token_reaches_the_services(tmp_path):
    from blobtier.config import from_mapping
    from blobtier.sdk.fs import BlobtierFileSystem

    tokens = TokenTable.load(table_file(tmp_path))
    servers = [ChunkServer(str(tmp_path / f"c{i}"), server_id=i, auth=tokens) for i in range(3)]
    try:
        config = from_mapping({"root": str(tmp_path / "region"),
                               "block": {"endpoints": [s.address for s in servers]},
                               "cache": {"daemon": "off"}}, env={})
        fs = BlobtierFileSystem(config, token=token("writer"), skip_instance_cache=True)
        fs.pipe_file("ds/a", b"through fsspec")
        assert fs.cat_file("ds/a") == b"through fsspec"
        BlobtierFileSystem.clear_instance_cache()
        denied = BlobtierFileSystem(config, skip_instance_cache=True)
        with pytest.raises(PermissionError):
            denied.pipe_file("ds/b", b"no token")
    finally:
        BlobtierFileSystem.clear_instance_cache()
        for s in servers:
            s.stop(0)
