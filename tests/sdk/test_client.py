"""The user API of the embedded client: put/get, ranges, versions, listing, files."""

from __future__ import annotations

import io
import multiprocessing
import os
import pickle

import pytest

import blobtier
from blobtier import BlobNotFound, InvalidKey, InvalidRequest

CHUNK = 64 * 1024  # the ``client`` fixture's chunk size


def payload(n: int, seed: int = 0) -> bytes:
    return (bytes(range(256)) * (n // 256 + 1))[seed % 256:][:n] if n else b""


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, int(3.5 * CHUNK)])
def test_put_get_sizes(client, size):
    data = os.urandom(size)
    info = client.put("ns/blob", data)
    assert (info.size, info.version, info.chunks) == (size, 1, -(-size // CHUNK))
    got = client.get("ns/blob")
    assert got.readonly
    assert bytes(got) == data


def test_small_blob_is_one_chunk_of_its_own_size(client):
    client.put("ns/small", b"x" * 1000)
    rec = client._metadata.get("ns/small")
    assert rec.n_chunks == 1 and rec.chunk_range(0) == (0, 1000)


@pytest.mark.parametrize("offset,length", [
    (0, 10), (CHUNK - 5, 10), (CHUNK - 1, 2 * CHUNK + 2), (3 * CHUNK, 100),
    (int(3.5 * CHUNK) - 3, 100), (int(3.5 * CHUNK), 5), (7, 0)])
def test_read_range_across_chunk_boundaries(client, offset, length):
    data = os.urandom(int(3.5 * CHUNK))
    client.put("ns/r", data)
    assert bytes(client.read_range("ns/r", offset, length)) == data[offset:offset + length]


@pytest.mark.parametrize("offset,length", [(-1, 5), (0, -1), (1001, 1)])
def test_read_range_rejects_bad_ranges(client, offset, length):
    client.put("ns/r", b"a" * 1000)
    with pytest.raises(InvalidRequest, match="ns/r"):
        client.read_range("ns/r", offset, length)


def test_overwrite_makes_a_new_version_and_open_readers_keep_the_old(client):
    old, new = os.urandom(3 * CHUNK), os.urandom(2 * CHUNK + 7)
    client.put("ns/v", old)
    with client.open("ns/v") as reader:
        first = reader.read(CHUNK + 3)
        info = client.put("ns/v", new)
        assert info.version == 2
        rest = reader.read()
    assert first + rest == old
    assert bytes(client.get("ns/v")) == new
    assert client.stat("ns/v").version == 2


def test_stat_ls_exists_delete(client):
    for key in ["ns/b/2", "ns/a", "ns/b/1", "other/x", "ns2/y"]:
        client.put(key, key.encode(), attrs={"k": key})
    assert [i.key for i in client.ls("ns/")] == ["ns/a", "ns/b/1", "ns/b/2"]
    assert [i.key for i in client.ls("ns")] == ["ns/a", "ns/b/1", "ns/b/2", "ns2/y"]
    assert [i.key for i in client.ls("", limit=2)] == ["ns/a", "ns/b/1"]
    info = client.stat("ns/b/1")
    assert (info.size, info.version, info.attrs) == (6, 1, {"k": "ns/b/1"})
    assert info.created.tzinfo is not None and info.checksum.startswith("xxh3-")
    assert client.exists("ns/a") and not client.exists("ns/zzz")
    client.delete("ns/a")
    assert not client.exists("ns/a")
    with pytest.raises(BlobNotFound, match="ns/a"):
        client.get("ns/a")
    with pytest.raises(FileNotFoundError):
        client.delete("ns/a")


def test_checksum_fingerprint_follows_content(client):
    a = client.put("ns/a", b"same").checksum
    b = client.put("ns/b", b"same").checksum
    c = client.put("ns/c", b"different").checksum
    assert a == b != c


def test_ls_paginates_over_many_keys(client):
    client.put_many([(f"ns/k{i:05d}", b"x") for i in range(2500)])
    keys = [i.key for i in client.iter_ls("ns/", page=1000)]
    assert keys == [f"ns/k{i:05d}" for i in range(2500)]


def test_put_many_and_get_many(client):
    items = {f"ns/{i}": os.urandom(i * 1000) for i in range(20)}
    infos = client.put_many(items)
    assert [i.key for i in infos] == list(items)
    keys = list(reversed(items))
    assert [bytes(v) for v in client.get_many(keys)] == [items[k] for k in keys]
    with pytest.raises(BlobNotFound, match="ns/missing"):
        client.get_many(["ns/1", "ns/missing"])
    with pytest.raises(InvalidRequest):
        client.put_many([("ns/d", b"1"), ("ns/d", b"2")])


def test_put_from_file_object_streams_in_chunks(client):
    data = os.urandom(5 * CHUNK + 11)
    info = client.put("ns/f", io.BytesIO(data))
    assert info.size == len(data) and info.chunks == 6
    assert bytes(client.get("ns/f")) == data


def test_writer_commits_on_close_and_nothing_on_error(client):
    with client.open("ns/w", "wb", attrs={"a": "1"}) as f:
        f.write(b"hello ")
        f.write(memoryview(b"world" * CHUNK))
    assert bytes(client.get("ns/w")) == b"hello " + b"world" * CHUNK
    with pytest.raises(RuntimeError):
        with client.open("ns/w", "wb") as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    assert bytes(client.read_range("ns/w", 0, 6)) == b"hello "
    assert client.stat("ns/w").version == 1
    with pytest.raises(InvalidRequest):
        client.open("ns/w", "ab")


def test_stream_writer_loses_to_nobody_last_writer_wins(client):
    with client.open("ns/race", "wb") as f:
        f.write(b"streamed" * CHUNK)
        client.put("ns/race", b"put meanwhile")
    assert bytes(client.get("ns/race")) == b"streamed" * CHUNK
    assert client.stat("ns/race").version == 2


def test_reader_file_protocol(client):
    data = os.urandom(2 * CHUNK + 100)
    client.put("ns/io", data)
    with client.open("ns/io") as f:
        assert f.readable() and f.seekable()
        assert f.seek(-50, io.SEEK_END) == len(data) - 50
        assert f.read() == data[-50:]
        assert f.read() == b""
        f.seek(CHUNK - 2)
        buf = bytearray(10)
        assert f.readinto(buf) == 10 and bytes(buf) == data[CHUNK - 2:CHUNK + 8]
        assert f.tell() == CHUNK + 8
        f.seek(5, io.SEEK_CUR)
        assert f.read(3) == data[CHUNK + 13:CHUNK + 16]
        with pytest.raises(ValueError):
            f.seek(-1)
    with pytest.raises(ValueError):
        f.read()


@pytest.mark.parametrize("key", ["", "nopath", "/ns/x", "ns//x", "ns/../x", "ns/x\x00", "n s/x"])
def test_invalid_keys_get_a_clear_error(client, key):
    with pytest.raises(InvalidKey):
        client.put(key, b"x")
    with pytest.raises(ValueError):
        client.get(key)


def test_blob_size_limit(region):
    with blobtier.connect(region, client={"max_blob_bytes": 1000}) as c:
        with pytest.raises(InvalidRequest, match="limit"):
            c.put("ns/big", b"x" * 1001)
        with pytest.raises(InvalidRequest, match="limit"), c.open("ns/big", "wb") as f:
            f.write(b"x" * 1001)
        assert not c.exists("ns/big")


def test_data_survives_reopen(region):
    data = os.urandom(300_000)
    with blobtier.connect(region) as c:
        c.put("ns/p", data)
    with blobtier.connect(region) as c:
        assert bytes(c.get("ns/p")) == data


def test_l1_serves_repeat_reads(client):
    client.put("ns/h", os.urandom(3 * CHUNK))
    client.get("ns/h")
    before = client.stats()
    client.get("ns/h")
    after = client.stats()
    assert after["l1"]["hits"] - before["l1"]["hits"] == 3
    assert after["origin"]["hits"] == before["origin"]["hits"]


def _child_read(client, key, queue):
    queue.put(bytes(client.get(key)))


def test_client_survives_fork(client):
    data = os.urandom(CHUNK * 2)
    client.put("ns/fork", data)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_read, args=(client, "ns/fork", queue))
    proc.start()
    assert queue.get(timeout=60) == data
    proc.join(60)
    assert proc.exitcode == 0
    client.put("ns/after", b"parent still writes")
    assert bytes(client.get("ns/after")) == b"parent still writes"
    assert client.stats()["origin"]["hits"] >= 2  # the child's reads count here too


def test_client_pickles_to_a_fresh_connection(client):
    client.put("ns/pk", b"pickled")
    clone = pickle.loads(pickle.dumps(client))
    try:
        assert bytes(clone.get("ns/pk")) == b"pickled"
    finally:
        clone.close()


def test_closed_client_refuses(region):
    c = blobtier.connect(region)
    c.close()
    with pytest.raises(ValueError, match="closed"):
        c.get("ns/x")


def test_a_writer_dropped_unclosed_commits_nothing(client):
    import gc

    f = client.open("ns/dropped", "wb")
    f.write(b"half a blob")
    del f
    gc.collect()
    assert not client.exists("ns/dropped")
