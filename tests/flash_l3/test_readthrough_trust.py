"""A flash node reads through only from where the region reads: never what a request names.

A real node on loopback, with tokens, over a real embedded region that registered a local
tree by reference. Forged records point at a root-only file outside the region; whatever
the caller (no token, a read-only token, a writer's Prefetch), the answer must say nothing
of that file: not its bytes, not its size, not its checksum, tag or path.
"""

from __future__ import annotations

import argparse
import os

import fsspec
import grpc
import pytest

import blobtier
from blobtier import cli
from blobtier.blockstore_sim.origin import object_tag
from blobtier.checksum import xxh3
from blobtier.config import FlashNodeConfig
from blobtier.errors import Forbidden
from blobtier.flash_l3.service import FlashNode
from blobtier.metadata.schema import BlobRecord, encode, new_blob_id
from blobtier.origins import OriginAllowList, canonical, covers
from blobtier.rpc import cache_wire as wire
from blobtier.rpc.auth import AUTHORIZATION, TokenTable, digest
from blobtier.rpc.gen import flash_pb2 as pb
from blobtier.rpc.gen import flash_pb2_grpc as pb_grpc
from blobtier.rpc.remote_cache import RemoteChunkCache
from blobtier.sdk.ingest import register

CHUNK = 64 * 1024
SECRET = os.urandom(150_000)
TOKENS = {"reader": ["read"], "writer": ["read", "write"]}


def secret_chunks() -> list[bytes]:
    return [SECRET[i:i + CHUNK] for i in range(0, len(SECRET), CHUNK)]


@pytest.fixture
def world(tmp_path, region):
    """(region, registered tree, secret file path, sibling dir); the region registered
    ``tree`` by reference and stored one blob in its block layer."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    secret = private / "shadow"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    tree = tmp_path / "data"
    tree.mkdir()
    (tree / "a.bin").write_bytes(os.urandom(200_000))
    sibling = tmp_path / "data-private"  # shares the registered prefix as a string only
    sibling.mkdir()
    (sibling / "shadow").write_bytes(SECRET)
    with blobtier.connect(region, client={"chunk_size": "64KiB"}, cache={"daemon": "off"}) as c:
        register(c, f"file://{tree}", "ds/ref")
        c.put("ds/stored", os.urandom(100_000))
    (tree / "link").symlink_to(secret)  # planted after registration, inside the tree
    return region, tree, secret, sibling


@pytest.fixture
def node(tmp_path, world):
    """A node wired as ``blobtier flash serve --region REGION --token-file ...`` wires it."""
    region = world[0]
    tokens = tmp_path / "tokens.toml"
    tokens.write_text("".join(f'[[token]]\nname = "{n}"\nsha256 = "{digest(n + "-secret")}"\n'
                              f'rights = [{", ".join(repr(r).replace(chr(39), chr(34)) for r in rights)}]\n'
                              for n, rights in TOKENS.items()))
    args = argparse.Namespace(flash_region=region, region=None, block_endpoints=None,
                              hedge_after_ms=0.0, origin=[], token_file=str(tokens))
    source = cli._flash_source(args)
    origins, metadata = cli._flash_origins(args)
    n = FlashNode(FlashNodeConfig(str(tmp_path / "flash"), 8 << 20, region_bytes=1 << 20), source,
                  auth=TokenTable.load(str(tokens)), origins=origins)
    yield n
    n.stop(0)
    source.close()
    metadata.close()


def forged(url: str, right_checksums: bool = True) -> BlobRecord:
    """A record of the secret's size whose origin is ``url``: with the secret's own
    checksums (an attacker who guessed them), or wrong ones."""
    sums = [xxh3(c) ^ (0 if right_checksums else 1) for c in secret_chunks()]
    tag = object_tag(fsspec.filesystem("file").info(url.split("://", 1)[1].split("::")[0]))
    return BlobRecord(new_blob_id(), 1, len(SECRET), CHUNK, sums, origin=f"{url}\n{tag}")


def get(node: FlashNode, recs: list[BlobRecord], token: str | None) -> tuple[list[wire.Reply], bytes]:
    """A raw Get of every chunk of ``recs``: (replies, the bytes of every reply)."""
    request = pb.GetRequest(records=[encode(r) for r in recs])
    for at, rec in enumerate(recs):
        request.items.extend(pb.GetItem(key=wire.key_to_pb(rec.chunk_key(i)), record=at)
                             for i in range(rec.n_chunks))
    metadata = [(AUTHORIZATION, f"Bearer {token}-secret")] if token else []
    with grpc.insecure_channel(node.address) as channel:
        raws = list(wire.get_call(channel)(request, metadata=metadata, timeout=20))
    replies = [r for raw in raws for r in wire.decode_replies(raw)]
    return replies, b"".join(bytes(r.data) for r in replies)


def reveals(text: str, secret_path: str) -> list[str]:
    """The facts about the secret file that ``text`` gives away."""
    facts = [str(len(SECRET)), os.path.basename(secret_path), os.path.dirname(secret_path),
             object_tag(fsspec.filesystem("file").info(secret_path))]
    for c in secret_chunks():
        facts += [f"{xxh3(c):#x}", f"{xxh3(c):x}", str(xxh3(c)), str(len(c))]
    return [f for f in facts if f in text]


def urls(tree, secret, sibling) -> list[str]:
    return [f"file://{secret}", f"local://{secret}", f"file://{tree}/../private/shadow",
            f"file://{tree}/link", f"file://{sibling}/shadow", f"simplecache::file://{secret}"]


@pytest.mark.parametrize("right_checksums", [True, False])
@pytest.mark.parametrize("token", [None, "reader"])
def test_forged_origin_reveals_nothing_about_a_root_only_file(world, node, token, right_checksums):
    _, tree, secret, sibling = world
    expected = grpc.StatusCode.UNAUTHENTICATED if token is None else grpc.StatusCode.PERMISSION_DENIED
    for url in urls(tree, secret, sibling):
        rec = forged(url.replace("simplecache::", ""), right_checksums)
        if "::" in url:  # the record names a chained URL; its tag was taken from the file
            rec = BlobRecord(rec.blob_id, 1, rec.size, CHUNK, rec.checksums,
                             origin=rec.origin.replace("file://", "simplecache::file://", 1))
        with pytest.raises(grpc.RpcError) as err:
            get(node, [rec], token)
        assert err.value.code() == expected, url
        assert reveals(err.value.details() or "", str(secret)) == [], url
    assert node.cache.stats()["entries"] == 0  # nothing of it was read into the cache
    if token is not None:
        assert node.readthrough.counters["refused"] == len(urls(tree, secret, sibling))
        assert node.readthrough.counters["fills"] == 0


def test_a_forged_record_in_a_batch_refuses_the_whole_call(world, node):
    region, tree, secret, _ = world
    with blobtier.connect(region, cache={"daemon": "off"}) as c:
        good = c._metadata.get("ds/ref/a.bin")
    with pytest.raises(grpc.RpcError) as err:
        get(node, [good, forged(f"file://{secret}")], "reader")
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert node.readthrough.counters["fills"] == 0  # refused before the good one was read


def test_prefetch_of_a_forged_record_is_refused(world, node):
    _, _, secret, _ = world
    rec = forged(f"file://{secret}")
    request = pb.PrefetchRequest(records=[encode(rec)],
                                 items=[pb.PrefetchItem(record=0, index=i) for i in range(rec.n_chunks)])
    with grpc.insecure_channel(node.address) as channel, pytest.raises(grpc.RpcError) as err:
        pb_grpc.CacheServiceStub(channel).Prefetch(
            request, metadata=[(AUTHORIZATION, "Bearer writer-secret")], timeout=20)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reveals(err.value.details(), str(secret)) == []
    assert node.cache.stats()["entries"] == 0


def test_chunk_servers_the_node_was_not_given_are_refused(world, node):
    region = world[0]
    with blobtier.connect(region, cache={"daemon": "off"}) as c:
        stored = c._metadata.get("ds/stored")
    elsewhere = BlobRecord(stored.blob_id, stored.version, stored.size, stored.chunk_size,
                           stored.checksums, [(7,)] * stored.n_chunks)
    with pytest.raises(grpc.RpcError) as err:
        get(node, [elsewhere], "reader")
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_failed_read_through_says_only_what_kind_of_failure(world, node):
    """A record under the registered tree with wrong checksums: FAILED, and the detail
    names neither the object's checksums nor its tag nor its size."""
    _, tree, _, _ = world
    target = tree / "a.bin"
    data = target.read_bytes()
    sums = [xxh3(data[i:i + CHUNK]) ^ 1 for i in range(0, len(data), CHUNK)]
    rec = BlobRecord(new_blob_id(), 1, len(data), CHUNK, sums,
                     origin=f"file://{target}\nmtime:0:size:1")  # a stale tag: OriginChanged
    replies, got = get(node, [rec], "reader")
    heads = [r for r in replies if r.item is not None]
    assert [r.outcome for r in heads] == [pb.FAILED] * rec.n_chunks and got == b""
    facts = [str(len(data)), object_tag(fsspec.filesystem("file").info(str(target))), str(target)]
    facts += [f"{xxh3(data[i:i + CHUNK]):#x}" for i in range(0, len(data), CHUNK)]
    for r in heads:
        assert r.detail in ("ChecksumError", "OriginChanged")
        assert [f for f in facts if f in r.detail] == []


def test_registered_origins_and_the_block_layer_still_read_through(world, node):
    region, tree, _, _ = world
    with blobtier.connect(region, cache={"daemon": "off"}) as c:
        ref, stored = c._metadata.get("ds/ref/a.bin"), c._metadata.get("ds/stored")
    remote = RemoteChunkCache(node.address, timeout_s=20, token="reader-secret")
    try:
        for rec, want in ((ref, (tree / "a.bin").read_bytes()), (stored, None)):
            keys = [rec.chunk_key(i) for i in range(rec.n_chunks)]
            got = remote.read_through(keys, [(rec, i) for i in range(rec.n_chunks)]).found
            assert sorted(got) == sorted(keys)
            if want is not None:
                assert b"".join(bytes(got[k]) for k in keys) == want
        assert node.readthrough.counters["refused"] == 0 and node.readthrough.counters["fills"] >= 2
    finally:
        remote.close()


def test_a_node_without_origins_refuses_every_origin_record(tmp_path, world):
    """No --region and no --origin: a node reads the block layer only."""
    region, _, secret, _ = world
    args = argparse.Namespace(flash_region=None, region=None, block_endpoints=None,
                              hedge_after_ms=0.0, origin=[], token_file=None)
    origins, metadata = cli._flash_origins(args)
    assert metadata is None
    with blobtier.connect(region, cache={"daemon": "off"}) as c:
        ref = c._metadata.get("ds/ref/a.bin")
    args.flash_region = region
    source = cli._flash_source(args)
    node = FlashNode(FlashNodeConfig(str(tmp_path / "bare"), 8 << 20, region_bytes=1 << 20), source,
                     origins=origins)
    try:
        for rec in (ref, forged(f"file://{secret}")):
            with pytest.raises(grpc.RpcError) as err:
                get(node, [rec], None)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        node.stop(0)
        source.close()


def test_canonical_urls_and_prefixes(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "up").symlink_to(tmp_path)
    assert canonical(f"local://{tmp_path}/d/") == f"file://{tmp_path}/d"
    assert canonical(f"file://{tmp_path}/d/up/x") == f"file://{tmp_path}/x"
    assert canonical("memory://bucket/k") == "memory:///bucket/k"
    for bad in ("simplecache::file:///etc/passwd", "memory:///b/../etc", "nosuchproto://x", "",
                "file:///a\nb"):
        with pytest.raises(Forbidden):
            canonical(bad)
    assert covers("s3://b/ds", "s3://b/ds/x") and covers("s3://b/ds", "s3://b/ds")
    assert not covers("s3://b/ds", "s3://b/ds-private/x")
    allowed = OriginAllowList([f"file://{tmp_path}/d"])
    assert allowed.allows(f"file://{tmp_path}/d/x") and not allowed.allows(f"file://{tmp_path}/d/up/x")


def test_registrations_are_reread_when_a_url_is_not_covered(tmp_path):
    registered: list[str] = []
    calls = []

    def origins() -> list[str]:
        calls.append(1)
        return list(registered)

    allowed = OriginAllowList(registered=origins, refresh_s=0.0)
    url = f"file://{tmp_path}/ds/a.bin"
    assert not allowed.allows(url)
    registered.append(f"file://{tmp_path}/ds")
    assert allowed.allows(url) and allowed.allows(url)
    assert len(calls) == 2  # a covered URL needs no new scan
    slow = OriginAllowList(registered=origins, refresh_s=3600.0)
    assert slow.allows(url) and not slow.allows("memory://elsewhere/x")
    assert len(calls) == 3  # a flood of refusals does not become a flood of metadata scans
