"""A flash node over gRPC, read by RemoteChunkCache: streamed ranged Get, Put, Prefetch, admin."""

from __future__ import annotations

import os
import urllib.request

import grpc
import pytest

from blobtier.checksum import xxh3
from blobtier.chunks import ChunkCache, ChunkKey, ReadThroughCache, ReportsCorrupt
from blobtier.config import FlashNodeConfig
from blobtier.errors import TierUnavailable
from blobtier.flash_l3.service import FlashNode
from blobtier.metadata.schema import encode, new_blob_id
from blobtier.rpc import cache_wire as wire
from blobtier.rpc.gen import flash_pb2 as pb
from blobtier.rpc.gen import flash_pb2_grpc as pb_grpc
from blobtier.rpc.remote_cache import RemoteChunkCache
from tests.flash_l3.helpers import MemorySource, chunk_of

REGION = 4 << 20


@pytest.fixture
def source():
    return MemorySource()


@pytest.fixture
def node(tmp_path, source):
    n = FlashNode(FlashNodeConfig(str(tmp_path / "flash"), 8 * REGION, region_bytes=REGION), source)
    yield n
    n.stop(0)


@pytest.fixture
def remote(node):
    r = RemoteChunkCache(node.address, timeout_s=10)
    yield r
    r.close()


def test_remote_cache_is_an_untrusted_read_through_chunk_cache(remote):
    assert isinstance(remote, ChunkCache)
    assert isinstance(remote, ReadThroughCache) and isinstance(remote, ReportsCorrupt)
    assert remote.trusted is False and remote.name == "l3"
    assert RemoteChunkCache("127.0.0.1:1", name="l2").name == "l2"


def test_read_through_then_hits_with_multi_piece_chunks(remote, source, node):
    rec, data = source.add(5 << 20, chunk=2 << 20)  # chunks of 2 MiB travel in 1 MiB pieces
    refs = [(rec, i) for i in range(rec.n_chunks)]
    keys = [rec.chunk_key(i) for i in range(rec.n_chunks)]
    assert remote.get_many(keys) == {}  # no records: a miss is a miss
    first = remote.read_through(keys, refs).found
    assert b"".join(bytes(first[k]) for k in keys) == data
    assert remote.counters["filled"] == 3
    second = remote.read_through(keys, refs, touch=False).found
    assert b"".join(bytes(second[k]) for k in keys) == data
    assert remote.counters["hits"] == 3 and source.total_reads() == 3
    assert node.cache.stats()["entries"] == 3


def test_large_batches_become_parallel_calls(remote, source):
    rec, data = source.add(40 << 20, chunk=1 << 20)
    refs = [(rec, i) for i in range(rec.n_chunks)]
    got = remote.read_through([rec.chunk_key(i) for i in range(rec.n_chunks)], refs).found
    assert b"".join(bytes(got[rec.chunk_key(i)]) for i in range(rec.n_chunks)) == data


def test_ranged_get(remote, source):
    rec, data = source.add(3 << 20, chunk=3 << 20)
    remote.read_through([rec.chunk_key(0)], [(rec, 0)])
    assert bytes(remote.get_range(rec.chunk_key(0), 1_500_000, 1_200_000)) == data[1_500_000:2_700_000]
    assert bytes(remote.get_range(rec.chunk_key(0), 10, 0)) == b""
    assert remote.get_range(ChunkKey(new_blob_id(), 1, 0), 0, 10) is None
    with pytest.raises(TierUnavailable, match="OUT_OF_RANGE"):  # a cache tier's errors are never fatal
        remote.get_range(rec.chunk_key(0), 3 << 20, 1)


def test_put_contains_and_admission_counts(remote, node):
    key = ChunkKey(new_blob_id(), 1, 0)
    data = os.urandom(300_000)
    assert not remote.contains(key)
    assert remote.put_many([(key, data), (ChunkKey(new_blob_id(), 1, 0), bytes(REGION))]) == (1, 1)
    assert remote.contains(key)
    assert bytes(remote.get_many([key])[key]) == data
    remote.put(key, data)  # already cached: a no-op


def test_a_put_damaged_on_the_way_is_refused(node):
    key = ChunkKey(new_blob_id(), 1, 0)
    stream = iter([pb.PutRequest(header=pb.PutHeader(key=wire.key_to_pb(key), length=3, xxh3=xxh3(b"abd"))),
                   pb.PutRequest(data=b"abc")])
    with grpc.insecure_channel(node.address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.CacheServiceStub(channel).Put(stream, timeout=10)
    assert err.value.code() == grpc.StatusCode.DATA_LOSS
    assert not node.cache.contains(key)


def test_failed_read_through_is_a_miss_for_that_chunk_only(remote, source):
    rec, data = source.add(200_000)
    source.broken.add(rec.chunk_key(1))
    keys = [rec.chunk_key(i) for i in range(rec.n_chunks)]
    got = remote.read_through(keys, [(rec, i) for i in range(rec.n_chunks)]).found
    assert sorted(k.index for k in got) == [0, 2, 3]
    assert bytes(got[keys[2]]) == chunk_of(rec, data, 2)
    assert remote.counters["failed"] == 1


def test_prefetch_fetches_once_and_reports(remote, source, node):
    rec, _ = source.add(400_000)
    source.broken.add(rec.chunk_key(6))
    refs = [(rec, i) for i in range(rec.n_chunks)]
    assert remote.prefetch(refs) == {"cached": 0, "fetched": 6, "rejected": 0, "failed": 1}
    assert set(source.reads) == {rec.chunk_key(i) for i in range(6)}
    before = source.total_reads()
    assert remote.prefetch(refs[:3]) == {"cached": 3, "fetched": 0, "rejected": 0, "failed": 0}
    assert source.total_reads() == before


def test_bad_requests_get_clear_codes_and_the_node_keeps_serving(node, remote, source):
    rec, data = source.add(100_000)
    other, _ = source.add(100_000)
    with grpc.insecure_channel(node.address) as channel:
        stub = pb_grpc.CacheServiceStub(channel)
        bad = [pb.GetRequest(items=[pb.GetItem(key=pb.ChunkId(blob_id=b"short"))]),
               pb.GetRequest(items=[pb.GetItem(key=wire.key_to_pb(rec.chunk_key(0)), record=0)],
                             records=[b"not a record"]),
               pb.GetRequest(items=[pb.GetItem(key=wire.key_to_pb(rec.chunk_key(0)), record=0)],
                             records=[encode(other)])]
        for request in bad:
            with pytest.raises(grpc.RpcError) as err:
                list(stub.Get(request, timeout=10))
            assert err.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.DATA_LOSS)
    assert bytes(remote.read_through([rec.chunk_key(0)], [(rec, 0)]).found[rec.chunk_key(0)]) == data[:65536]


def test_admin_stats_drop_resize_and_health(remote, source, node):
    rec, _ = source.add(300_000)
    keys = [rec.chunk_key(i) for i in range(rec.n_chunks)]
    remote.read_through(keys, [(rec, i) for i in range(rec.n_chunks)])
    stats = remote.stats()
    assert stats["entries"] == 5 and stats["fills"] == 5 and stats["capacity"] == 8 * REGION
    assert remote.drop(keys[:2]) == 2
    assert remote.drop(everything=True) == 3
    assert remote.resize(2 * REGION)["capacity"] == 2 * REGION
    with pytest.raises(TierUnavailable, match="two regions"):
        remote.resize(REGION)
    assert remote.health() == "SERVING"


def test_metrics_endpoint_serves_the_flash_series(tmp_path, source):
    rec, _ = source.add(100_000)
    with FlashNode(FlashNodeConfig(str(tmp_path / "m"), 2 * REGION, region_bytes=REGION, metrics_port=0),
                   source) as node:
        remote = RemoteChunkCache(node.address, timeout_s=10)
        remote.read_through([rec.chunk_key(0)], [(rec, 0)])
        remote.get_many([rec.chunk_key(0)])
        remote.close()
        with urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    for line in ("blobtier_flash_hits_total 1.0", "blobtier_flash_misses_total 1.0",
                 "blobtier_flash_fills_total 1.0", "blobtier_flash_entries 1.0",
                 "blobtier_flash_fill_seconds_count 1.0"):
        assert line in text


def test_an_unreachable_node_is_tier_unavailable():
    remote = RemoteChunkCache("127.0.0.1:1", timeout_s=2)
    with pytest.raises(TierUnavailable):
        remote.get_many([ChunkKey(new_blob_id(), 1, 0)])
    assert remote.counters["errors"] == 1
    remote.close()


def test_the_node_imports_without_torch():
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None\n"
            "import blobtier.flash_l3.service, blobtier.rpc.sharded_cache\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def _read_in_child(cache, keys, refs, out) -> None:
    got = cache.read_through(keys, refs).found
    out.send(b"".join(bytes(got[k]) for k in keys))


def test_a_forked_child_reads_through_the_parents_sharded_cache(node, source):
    import multiprocessing

    from blobtier.rpc.sharded_cache import ShardedChunkCache

    rec, data = source.add(300_000)
    keys = [rec.chunk_key(i) for i in range(rec.n_chunks)]
    refs = [(rec, i) for i in range(rec.n_chunks)]
    cache = ShardedChunkCache.connect([(node.address, 1.0)])
    try:
        assert len(cache.read_through(keys[:2], refs[:2]).found) == 2  # channel and pool open here
        ctx = multiprocessing.get_context("fork")
        recv, send = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_read_in_child, args=(cache, keys, refs, send))
        child.start()
        assert recv.poll(30), "the child hung on what it inherited"
        assert recv.recv() == data
        child.join(30)
        assert child.exitcode == 0
        assert len(cache.read_through(keys, refs).found) == rec.n_chunks  # the parent's still work
    finally:
        cache.close()


def test_flash_serve_refuses_bad_flags_with_one_line(tmp_path, capsys):
    from blobtier import cli

    base = ["flash", "serve", "--dir", str(tmp_path / "f"), "--capacity", "1GiB"]
    assert cli.main(base) == 1
    assert "--block-endpoints or --region" in capsys.readouterr().err
    assert cli.main([*base, "--region", str(tmp_path / "nowhere")]) == 1
    assert "no blocks/ directory" in capsys.readouterr().err
    assert cli.main([*base, "--block-endpoints", "127.0.0.1:1", "--admission", "lru"]) == 1
    assert "unknown admission policy 'lru'" in capsys.readouterr().err
    assert cli.main([*base[:-1], "1MiB", "--block-endpoints", "127.0.0.1:1"]) == 1
    assert "at least two regions" in capsys.readouterr().err
