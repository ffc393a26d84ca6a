"""The chunk server over gRPC: the service contract, bad requests, health, restarts."""

from __future__ import annotations

import os

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from blobtier.blockstore_sim import wire
from blobtier.blockstore_sim.chunk_server import ChunkServer
from blobtier.checksum import xxh3
from blobtier.rpc.gen import block_pb2 as pb
from blobtier.rpc.gen import block_pb2_grpc as pb_grpc

Code = grpc.StatusCode
D = b"\x01" * 16
DATA = os.urandom(3 * wire.MAX_PIECE_BYTES + 12345)  # streams as four pieces


@pytest.fixture
def server(tmp_path):
    s = ChunkServer(str(tmp_path / "server"), server_id=4)
    yield s
    s.stop(0)


@pytest.fixture
def channel(server):
    with grpc.insecure_channel(server.address, [("grpc.max_send_message_length", 8 << 20)]) as ch:
        yield ch


@pytest.fixture
def stub(channel):
    return pb_grpc.ChunkServiceStub(channel)


def put_stream(digest: bytes, data: bytes, h: int | None = None, piece: int = wire.MAX_PIECE_BYTES):
    yield pb.PutRequest(header=pb.PutHeader(digest=digest, length=len(data),
                                            xxh3=xxh3(data) if h is None else h))
    for pos in range(0, len(data), piece):
        yield pb.PutRequest(data=data[pos:pos + piece])


def test_put_get_stat_list_delete(stub):
    assert stub.Put(put_stream(D, DATA), timeout=10).stored == 1
    head, *pieces = stub.Get(pb.GetRequest(digest=D), timeout=10)
    assert (head.data, head.length, head.chunk_length, head.xxh3) == (b"", len(DATA), len(DATA), xxh3(DATA))
    assert len(pieces) == 4 and all(len(r.data) <= wire.MAX_PIECE_BYTES for r in pieces)
    assert b"".join(r.data for r in pieces) == DATA
    ranged = list(stub.Get(pb.GetRequest(digest=D, offset=10, length=5), timeout=10))
    assert [(r.data, r.length) for r in ranged] == [(b"", 5), (DATA[10:15], 0)]
    empty = list(stub.Get(pb.GetRequest(digest=D, offset=len(DATA), length=0), timeout=10))
    assert [(r.data, r.length) for r in empty] == [(b"", 0)]
    st = stub.Stat(pb.StatRequest(digest=D), timeout=10)
    assert (st.exists, st.length, st.xxh3) == (True, len(DATA), xxh3(DATA)) and st.written > 0
    assert not stub.Stat(pb.StatRequest(digest=b"\x02" * 16), timeout=10).exists
    listed = [e.digest for r in stub.List(pb.ListRequest(), timeout=10) for e in r.entries]
    assert listed == [D]
    assert stub.Delete(pb.DeleteRequest(digests=[D, b"\x02" * 16]), timeout=10).deleted == 1
    assert not stub.Stat(pb.StatRequest(digest=D), timeout=10).exists


def test_one_put_carries_several_chunks(stub):
    chunks = {bytes([i]) * 16: os.urandom(1000 * i) for i in range(1, 6)}

    def stream():
        for d, data in chunks.items():
            yield from put_stream(d, data)

    assert stub.Put(stream(), timeout=10).stored == 5
    for d, data in chunks.items():
        assert b"".join(r.data for r in stub.Get(pb.GetRequest(digest=d), timeout=10)) == data


def _oversized():
    yield pb.PutRequest(header=pb.PutHeader(digest=D, length=5 << 20, xxh3=0))
    yield pb.PutRequest(data=b"x" * (5 << 20))  # over the 4 MiB transport limit


BAD_GETS = [
    (pb.GetRequest(digest=b"\x09" * 16), Code.NOT_FOUND),
    (pb.GetRequest(digest=D, offset=-1), Code.OUT_OF_RANGE),
    (pb.GetRequest(digest=D, offset=0, length=-5), Code.OUT_OF_RANGE),
    (pb.GetRequest(digest=D, offset=len(DATA) + 1), Code.OUT_OF_RANGE),
    (pb.GetRequest(digest=D, offset=10, length=len(DATA)), Code.OUT_OF_RANGE),
    (pb.GetRequest(digest=b"short"), Code.INVALID_ARGUMENT),
    (pb.GetRequest(), Code.INVALID_ARGUMENT),
]

BAD_PUTS = [
    ("data before header", lambda: iter([pb.PutRequest(data=b"abc")]), Code.INVALID_ARGUMENT),
    ("bad digest", lambda: put_stream(b"\x01" * 3, b"abc"), Code.INVALID_ARGUMENT),
    ("empty message", lambda: iter([pb.PutRequest()]), Code.INVALID_ARGUMENT),
    ("piece too large", lambda: put_stream(D, b"y" * (wire.MAX_PIECE_BYTES + 1),
                                           piece=wire.MAX_PIECE_BYTES + 1), Code.INVALID_ARGUMENT),
    ("chunk too large", lambda: iter([pb.PutRequest(header=pb.PutHeader(
        digest=D, length=wire.MAX_CHUNK_BYTES + 1))]), Code.INVALID_ARGUMENT),
    ("more than announced", lambda: iter([*put_stream(D, b"abc"), pb.PutRequest(data=b"d")]),
     Code.INVALID_ARGUMENT),
    ("stream cut short", lambda: iter(list(put_stream(D, DATA))[:-1]), Code.INVALID_ARGUMENT),
    ("wrong checksum", lambda: put_stream(D, b"abc", h=12345), Code.DATA_LOSS),
    ("over the transport limit", _oversized, Code.RESOURCE_EXHAUSTED),
]


def test_bad_requests_get_their_code_and_the_server_keeps_serving(stub):
    stub.Put(put_stream(D, DATA), timeout=10)
    for request, code in BAD_GETS:
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Get(request, timeout=10))
        assert info.value.code() == code, request
    for name, stream, code in BAD_PUTS:
        with pytest.raises(grpc.RpcError) as info:
            stub.Put(stream(), timeout=10)
        assert info.value.code() == code, name
    for bad in ([b"x"], [D] * (wire.MAX_DELETE + 1)):
        with pytest.raises(grpc.RpcError) as info:
            stub.Delete(pb.DeleteRequest(digests=bad), timeout=10)
        assert info.value.code() == Code.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as info:
        stub.Stat(pb.StatRequest(digest=b""), timeout=10)
    assert info.value.code() == Code.INVALID_ARGUMENT
    # Nothing bad was stored, and good requests are still served.
    assert b"".join(r.data for r in stub.Get(pb.GetRequest(digest=D), timeout=10)) == DATA
    listed = [e.digest for r in stub.List(pb.ListRequest(), timeout=10) for e in r.entries]
    assert listed == [D]


def test_health_follows_down_and_up(server, channel):
    health = health_pb2_grpc.HealthStub(channel)
    admin = pb_grpc.ChunkAdminStub(channel)

    def status(service: str = "") -> int:
        return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status

    assert status() == health_pb2.HealthCheckResponse.SERVING
    state = admin.SetFaults(pb.FaultUpdate(set=pb.FaultProfile(down=True)), timeout=10)
    assert state.server_id == 4 and state.profile.down
    assert status("blobtier.block.v1.ChunkService") == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.RpcError) as info:
        pb_grpc.ChunkServiceStub(channel).Stat(pb.StatRequest(digest=D), timeout=10)
    assert info.value.code() == Code.UNAVAILABLE
    admin.SetFaults(pb.FaultUpdate(set=pb.FaultProfile(down=False)), timeout=10)
    assert status() == health_pb2.HealthCheckResponse.SERVING
    assert admin.GetFaults(pb.GetFaultsRequest(), timeout=10).counters.refused == 1


def test_admin_rejects_bad_faults(channel):
    admin = pb_grpc.ChunkAdminStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        admin.SetFaults(pb.FaultUpdate(set=pb.FaultProfile(error_rate=2.0)), timeout=10)
    assert info.value.code() == Code.INVALID_ARGUMENT
    assert admin.GetFaults(pb.GetFaultsRequest(), timeout=10).profile.error_rate == 0


def test_chunks_survive_a_restart(tmp_path):
    root = str(tmp_path / "s")
    with ChunkServer(root) as s, grpc.insecure_channel(s.address) as ch:
        pb_grpc.ChunkServiceStub(ch).Put(put_stream(D, b"durable"), timeout=10)
    with ChunkServer(root) as s, grpc.insecure_channel(s.address) as ch:
        replies = pb_grpc.ChunkServiceStub(ch).Get(pb.GetRequest(digest=D), timeout=10)
        assert b"".join(r.data for r in replies) == b"durable"
