"""Every RPC of every service x every way of asking without the right credentials.

Real servers on loopback: a metadata service (RocksDB), a chunk server, a flash node reading
through from it, and an L2 peer server (a daemon's arena). With tokens and a region grant
key, each cell of the matrix is refused (PERMISSION_DENIED or UNAUTHENTICATED) and carries
no data; the same requests with the right token and a grant from the metadata service
succeed, and so do they with auth switched off (no token table, no key): the matrix
would fail if the checks were not there, and if they refused everything.

Cells (a request that names a chunk carries the grant of the cell):
  no token                   the right grant, no token
  wrong token                the right grant, a token no server knows
  other namespace's token    namespace b's token with namespace a's (leaked) grant
  read-only token (writes)   a's read-only token, the right grant
  expired grant              a's token, a grant signed by the region key that has expired
  forged grant               a's token, a grant signed by another key
  grant for another blob     a's token, a valid grant for another blob of a
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import pytest

from blobtier.blockstore_sim.chunk_server import ChunkServer
from blobtier.blockstore_sim.remote import RemoteChunkStore
from blobtier.blockstore_sim.replicated import ReplicatedBlockStore
from blobtier.cache_l1_l2.owner import ArenaOwner
from blobtier.cache_l1_l2.peers import PeerServer
from blobtier.checksum import xxh3
from blobtier.config import ClientConfig, FlashNodeConfig
from blobtier.flash_l3.service import FlashNode
from blobtier.grants import ANY_VERSION, BOOK, READ, WRITE, KeyRing
from blobtier.metadata import schema
from blobtier.metadata.remote import RemoteMetadataStore
from blobtier.metadata.rocksdb_store import RocksDBStore
from blobtier.metadata.service import MetadataServer
from blobtier.records import ChunkKey
from blobtier.rpc import cache_wire
from blobtier.rpc.auth import TokenTable, digest, with_token
from blobtier.rpc.gen import block_pb2 as bpb
from blobtier.rpc.gen import block_pb2_grpc as bgrpc
from blobtier.rpc.gen import flash_pb2 as fpb
from blobtier.rpc.gen import flash_pb2_grpc as fgrpc
from blobtier.rpc.gen import meta_pb2 as mpb
from blobtier.rpc.gen import meta_pb2_grpc as mgrpc
from blobtier.sdk.writer import WritePath

A, RO, B, ADMIN, SVC, A_ADMIN = "tok-a", "tok-a-ro", "tok-b", "tok-admin", "tok-svc", "tok-a-admin"
TOKENS = {"token": [
    {"name": "a", "sha256": digest(A), "grants": [{"ns": "a", "rights": ["read", "write"]}]},
    {"name": "a-ro", "sha256": digest(RO), "grants": [{"ns": "a", "rights": ["read"]}]},
    {"name": "b", "sha256": digest(B), "grants": [{"ns": "b", "rights": ["read", "write"]}]},
    {"name": "admin", "sha256": digest(ADMIN), "rights": ["read", "write", "admin"]},
    {"name": "svc", "sha256": digest(SVC), "rights": ["read"]},  # the flash node's reads below
    {"name": "a-admin", "sha256": digest(A_ADMIN), "grants": [{"ns": "a", "rights": ["read", "admin"]}]},
]}
CHUNK = 64 << 10
DATA = bytes(range(256)) * (CHUNK // 256)  # one chunk per blob
REFUSED = {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED}


@dataclass
class Region:
    auth: bool
    meta: str
    chunk: str
    flash: str
    peer: str
    rec_x: object = None
    grants: dict[str, bytes] = field(default_factory=dict)  # name -> grant bytes
    new_blob: bytes = b""  # a blob id GrantWrite minted, for writes
    channels: dict = field(default_factory=dict)

    def channel(self, addr: str, token: str | None) -> grpc.Channel:
        if (addr, token) not in self.channels:
            self.channels[addr, token] = with_token(grpc.insecure_channel(addr), token)
        return self.channels[addr, token]


def _start(tmp_path, auth: bool):
    table = TokenTable.from_mapping(TOKENS) if auth else None
    key_file = str(tmp_path / "grant.key")
    KeyRing.create(key_file)
    ring = KeyRing.load(key_file) if auth else None
    servers = []
    meta = MetadataServer(RocksDBStore(str(tmp_path / "db"), writable=True), auth=table, grants=ring)
    servers.append(meta)
    chunk = ChunkServer(str(tmp_path / "chunks"), auth=table, grants=ring)
    servers.append(chunk)
    reader = RemoteChunkStore(chunk.address, token=SVC if auth else None)
    source = ReplicatedBlockStore({0: reader}, replicas=1)
    flash = FlashNode(FlashNodeConfig(str(tmp_path / "flash"), 8 << 20, region_bytes=1 << 20), source,
                      auth=table, grants=ring)
    servers.append(flash)
    owner = ArenaOwner(4 << 20, "lru")
    peer = PeerServer(owner, "127.0.0.1:0", auth=table, grants=ring)
    servers.append(peer)
    region = Region(auth, meta.address, chunk.address, flash.address, peer.address)
    return region, ring, key_file, servers, source, owner


def _write(region: Region, token: str | None, key: str) -> None:
    meta = RemoteMetadataStore(region.meta, token=token)
    blocks = ReplicatedBlockStore({0: RemoteChunkStore(region.chunk, token=token)}, replicas=1)
    try:
        WritePath(meta, blocks, ClientConfig(chunk_size=CHUNK)).put_many([(key, DATA, None)])
    finally:
        meta.close()
        blocks.close()


@pytest.fixture(scope="module", params=[True, False], ids=["auth-on", "auth-off"])
def region(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("auth-on" if request.param else "auth-off")
    region, ring, key_file, servers, source, owner = _start(tmp, request.param)
    try:
        a, b = (A, B) if region.auth else (None, None)
        for key, token in (("a/x", a), ("a/y", a), ("b/z", b)):
            _write(region, token, key)
        meta = RemoteMetadataStore(region.meta, token=a)
        region.rec_x = rec_x = meta.get("a/x")
        rec_y = meta.get("a/y")
        region.new_blob, other_new = meta.new_blob_ids(["a/new", "a/other"])
        g = region.grants
        g["read"] = BOOK.get(rec_x.blob_id) or b""  # what the metadata service signed
        g["write"] = BOOK.get(region.new_blob) or b""
        if region.auth:
            assert g["read"] and g["write"]
            g["read other blob"] = BOOK.get(rec_y.blob_id)
            g["write other blob"] = BOOK.get(other_new)
            past = time.time() - 1
            g["read expired"] = ring.sign(rec_x.blob_id, rec_x.version, "a", READ, expires=past)
            g["write expired"] = ring.sign(region.new_blob, ANY_VERSION, "a", READ | WRITE, expires=past)
            forger = str(tmp / "forger.key")
            KeyRing.create(forger)
            forged = KeyRing.load(forger)
            g["read forged"] = forged.sign(rec_x.blob_id, rec_x.version, "a", READ)
            g["write forged"] = forged.sign(region.new_blob, ANY_VERSION, "a", READ | WRITE)
        meta.close()
        yield region
    finally:
        for ch in region.channels.values():
            ch.close()
        for s in reversed(servers):
            s.stop(0)
        source.close()
        owner.close()


# -- the calls: each does one RPC with a token and a grant, and returns what came back ------
def _x_key(r: Region) -> ChunkKey:
    return r.rec_x.chunk_key(0)


def _new_key(r: Region) -> ChunkKey:
    return ChunkKey(r.new_blob, 1, 0)


def meta_stub(r, token):
    return mgrpc.MetadataServiceStub(r.channel(r.meta, token))


def chunk_stub(r, token):
    return bgrpc.ChunkServiceStub(r.channel(r.chunk, token))


def _meta_list(r, t, g):
    return [e.key for e in meta_stub(r, t).List(mpb.ListRequest(prefix="a/")).entries]


def _meta_origins(r, t, g):
    return list(meta_stub(r, t).ListOrigins(mpb.ListOriginsRequest()).urls) or [""]


META = {
    "Get": ("read", lambda r, t, g: meta_stub(r, t).Get(mpb.GetRequest(key="a/x")).record),
    "GetMany": ("read", lambda r, t, g: meta_stub(r, t).GetMany(mpb.GetManyRequest(keys=["a/x"])).records[0]),
    "List": ("read", _meta_list),
    "ListOrigins": ("any", _meta_origins),
    "GrantWrite": ("write", lambda r, t, g: meta_stub(r, t).GrantWrite(
        mpb.GrantWriteRequest(keys=["a/w"])).grants),
    # A commit of a record under the grant of the cell (the record of a/x written to a/c).
    "Commit": ("write", lambda r, t, g: [x for x in meta_stub(r, t).Commit(mpb.CommitRequest(items=[
        mpb.CommitItem(key="a/c", expected=-1, record=schema.encode(r.rec_x), grant=g)])).applied if x]),
    "Delete": ("write", lambda r, t, g: meta_stub(r, t).Delete(mpb.DeleteRequest(key="a/c")).record),
    "RegisterOrigins": ("admin", lambda r, t, g: [meta_stub(r, t).RegisterOrigins(
        mpb.RegisterOriginsRequest(urls=["file:///nowhere/"]))]),
    "ListNamespaces": ("read", lambda r, t, g: list(meta_stub(r, t).ListNamespaces(
        mpb.ListNamespacesRequest(names=["a"])).entries)),
    "PutNamespace": ("admin", lambda r, t, g: meta_stub(r, t).PutNamespace(mpb.PutNamespaceRequest(
        name="a", changes='{"quota_bytes": 1000000000}', create=True)).spec),
    "MaintainNamespaces": ("admin", lambda r, t, g: [meta_stub(r, t).MaintainNamespaces(
        mpb.MaintainNamespacesRequest())]),
}


def _chunk_get(r, t, g):
    k = _x_key(r)
    req = bpb.GetRequest(digest=k.digest(), grant=g, version=k.version, index=k.index)
    return b"".join(m.data for m in chunk_stub(r, t).Get(req))


def _chunk_put(r, t, g):
    k = _new_key(r)
    head = bpb.PutHeader(digest=k.digest(), length=len(DATA), xxh3=xxh3(DATA), grant=g,
                         version=k.version, index=k.index)
    return chunk_stub(r, t).Put(iter([bpb.PutRequest(header=head), bpb.PutRequest(data=DATA)])).stored


def _chunk_delete(r, t, g):
    k = _new_key(r)
    req = bpb.DeleteRequest(digests=[k.digest()], grants=[g], versions=[k.version], indexes=[k.index])
    return [chunk_stub(r, t).Delete(req)]


def _chunk_stat(r, t, g):
    k = _x_key(r)
    return chunk_stub(r, t).Stat(bpb.StatRequest(digest=k.digest(), grant=g, version=k.version,
                                                  index=k.index)).exists


CHUNKS = {
    "Get": ("read", _chunk_get),
    "Stat": ("read", _chunk_stat),
    "Put": ("write", _chunk_put),
    "Delete": ("write", _chunk_delete),
    "List": ("admin", lambda r, t, g: list(chunk_stub(r, t).List(bpb.ListRequest()))),
    "Compact": ("admin", lambda r, t, g: [chunk_stub(r, t).Compact(bpb.CompactRequest())]),
    "SetFaults": ("admin", lambda r, t, g: [bgrpc.ChunkAdminStub(r.channel(r.chunk, t)).SetFaults(
        bpb.FaultUpdate())]),
    "GetFaults": ("admin", lambda r, t, g: [bgrpc.ChunkAdminStub(r.channel(r.chunk, t)).GetFaults(
        bpb.GetFaultsRequest())]),
}


def _cache_get(addr_of: Callable[[Region], str], with_record: bool):
    def call(r, t, g):
        k = _x_key(r)
        item = fpb.GetItem(key=cache_wire.key_to_pb(k))
        req = fpb.GetRequest(items=[item], grants=[g])
        if with_record:
            item.record = 0
            req.records.append(schema.encode(r.rec_x))
        replies = cache_wire.get_call(r.channel(addr_of(r), t))(req)
        out = [rep for m in replies for rep in fpb.GetReplies.FromString(m).replies]
        return b"".join(rep.data for rep in out) if any(rep.outcome in (fpb.HIT, fpb.FILLED)
                                                        for rep in out) else b""
    return call


def _cache_put(addr_of: Callable[[Region], str]):
    def call(r, t, g):
        k = _x_key(r)
        head = fpb.PutHeader(key=cache_wire.key_to_pb(k), length=len(DATA), xxh3=xxh3(DATA), grant=g)
        stub = fgrpc.CacheServiceStub(r.channel(addr_of(r), t))
        reply = stub.Put(iter([fpb.PutRequest(header=head), fpb.PutRequest(data=DATA)]))
        return [reply.admitted + reply.rejected]
    return call


def _flash_prefetch(r, t, g):
    req = fpb.PrefetchRequest(items=[fpb.PrefetchItem(record=0, index=0)],
                              records=[schema.encode(r.rec_x)], grants=[g])
    reply = fgrpc.CacheServiceStub(r.channel(r.flash, t)).Prefetch(req)
    return [reply.cached + reply.fetched]


def _flash_locate(r, t, g):
    req = fpb.LocateRequest(keys=[cache_wire.key_to_pb(_x_key(r))], grants=[g])
    return [loc for loc in fgrpc.CacheServiceStub(r.channel(r.flash, t)).Locate(req).locations if loc.found]


def _admin(addr_of, method, request):
    return lambda r, t, g: [getattr(fgrpc.CacheAdminStub(r.channel(addr_of(r), t)), method)(request)]


def _flash(r):
    return r.flash


def _peer(r):
    return r.peer


# Order matters where a call needs what an earlier one did (a cache Get after its Put).
FLASH = {
    "Prefetch": ("write", _flash_prefetch),  # the Prefetch right is write (rpc/auth.py)
    "Get": ("read", _cache_get(_flash, with_record=True)),
    "Locate": ("read", _flash_locate),
    "Put": ("write", _cache_put(_flash)),
    "Stats": ("admin", _admin(_flash, "Stats", fpb.StatsRequest())),
    "Resize": ("admin", _admin(_flash, "Resize", fpb.ResizeRequest(capacity_bytes=8 << 20))),
    "Drop": ("admin", _admin(_flash, "Drop", fpb.DropRequest(keys=[]))),
}
PEER = {
    "Put": ("write", _cache_put(_peer)),
    "Get": ("read", _cache_get(_peer, with_record=False)),
    "Stats": ("admin", _admin(_peer, "Stats", fpb.StatsRequest())),
    "Drop": ("admin", _admin(_peer, "Drop", fpb.DropRequest(all=True))),
}
SERVICES = {"metadata": META, "chunk server": CHUNKS, "flash node": FLASH, "L2 peer": PEER}
CASES = [(svc, name) for svc, calls in SERVICES.items() for name in calls]


def _grant_kind(service: str, rpc: str, need: str) -> str:
    """Which grant a call carries: a write grant of a new blob to store or delete its
    chunks, else the read grant of a/x (a commit rewrites a/x's record under it, a cache
    is offered or prefetches a/x's chunk under it)."""
    return "write" if (service, rpc) in {("chunk server", "Put"), ("chunk server", "Delete")} else "read"


def _cells(r: Region, service: str, rpc: str, need: str) -> dict[str, tuple[str | None, bytes]]:
    """cell -> (token, grant) for one RPC: the cells that apply to what it needs."""
    kind = _grant_kind(service, rpc, need)
    g = r.grants
    cells = {"no token": (None, g[kind]), "wrong token": ("not-a-token", g[kind])}
    if need != "any":  # ListOrigins is region-wide: any known token reads it
        cells["other namespace's token"] = (B, g[kind])
    if need in ("write", "admin"):
        cells["read-only token"] = (RO, g[kind])
    if need == "admin":
        cells["namespace token on an admin call"] = (A, g[kind])
    elif service != "metadata" or rpc == "Commit":  # the calls that carry a grant
        cells.update({"expired grant": (A, g[f"{kind} expired"]),
                      "forged grant": (A, g[f"{kind} forged"]),
                      "grant for another blob": (A, g[f"{kind} other blob"])})
    return cells


def _allowed(r: Region, service: str, rpc: str, need: str) -> tuple[str | None, bytes]:
    if not r.auth:
        return None, b""  # auth off: no token, no grant
    return (ADMIN if need == "admin" else A), r.grants[_grant_kind(service, rpc, need)]


@pytest.mark.parametrize("service, rpc", CASES, ids=[f"{s}.{n}" for s, n in CASES])
def test_every_cell_is_refused_and_the_right_credentials_succeed(region, service, rpc):
    need, call = SERVICES[service][rpc]
    if region.auth:
        cells = _cells(region, service, rpc, need)
        for cell, (token, grant) in cells.items():
            with pytest.raises(grpc.RpcError) as err:
                got = call(region, token, grant)
                pytest.fail(f"{service}.{rpc} [{cell}] was answered: {got!r:.80}")
            assert err.value.code() in REFUSED, f"{service}.{rpc} [{cell}]: {err.value.code()}"
            details = err.value.details() or ""
            assert grant.hex() not in details and (token or "tok-") not in details  # no secret echoed
    token, grant = _allowed(region, service, rpc, need)
    got = call(region, token, grant)
    assert got, f"{service}.{rpc} with the right credentials answered nothing"
    if rpc == "Get" and service != "metadata":
        assert got == DATA


def test_namespace_objects_are_guarded_per_namespace(region):
    """An admin of namespace a manages a's object, not b's nor every namespace's, and a
    listing of namespace objects shows only those the token reads."""
    if not region.auth:
        pytest.skip("tokens only")
    admin, a_admin, a = meta_stub(region, ADMIN), meta_stub(region, A_ADMIN), meta_stub(region, A)
    for name in ("a", "b"):
        admin.PutNamespace(mpb.PutNamespaceRequest(name=f"{name}-q", changes="{}", create=True))
    exists = bool(a.ListNamespaces(mpb.ListNamespacesRequest(names=["a"])).entries[0].spec)
    a_admin.PutNamespace(mpb.PutNamespaceRequest(name="a", changes='{"quota_blobs": 100}',
                                                 create=not exists))  # its own: allowed
    for call in (lambda: a_admin.PutNamespace(mpb.PutNamespaceRequest(name="b", changes="{}", create=True)),
                 lambda: a_admin.MaintainNamespaces(mpb.MaintainNamespacesRequest()),
                 lambda: a.ListNamespaces(mpb.ListNamespacesRequest(names=["b-q"]))):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    names = {e.name for e in a.ListNamespaces(mpb.ListNamespacesRequest()).entries}
    assert "a" in names and not names & {"b", "a-q", "b-q"}
