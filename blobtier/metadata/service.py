"""The metadata service: any ``MetadataStore`` behind gRPC (``blobtier meta serve``).

Over Redis it is stateless: run several, each a client of the same Redis, and clients
spread their calls over them and skip a dead one (``remote.RemoteMetadataStore``). Over
RocksDB it is the database's one primary, so processes on one host share a region without
the embedded store's single-writer lock: their commits reach the store's group commit,
which checks every compare-and-set and writes them in one synced batch.

Records travel as their encoded bytes (``meta.proto``). The server decodes every record
it is sent before storing it (a malformed one is INVALID_ARGUMENT and never stored) and
every record it serves (a corrupt stored one is DATA_LOSS, never sent). Status codes come
from ``rpc/status.py``; a bad request gets its code and the server keeps serving. Replies
stay under the transport's message limit: a page or a multi-get whose records would not
fit is cut short, and the client asks again for the rest.

Prometheus series (``metrics_port``): per method (``method`` label)
``blobtier_meta_requests_total``, ``blobtier_meta_errors_total`` (answered with an error
status, NOT_FOUND included) and the histogram ``blobtier_meta_request_seconds``; and
``blobtier_meta_records_served_total`` (records sent in replies) and
``blobtier_meta_records_committed_total`` (records written or removed).

With a token table (``auth``) every call is checked on the namespace (first path
component) of each key it names: Get and GetMany need ``read`` there, Commit, Delete and
GrantWrite ``write``; a refusal is PERMISSION_DENIED at once, before the store is read. A
listing leaves out the keys and subdirectories of namespaces the token cannot read, so
they are never revealed (a page may then hold fewer entries than asked, or none, with a
``next_page_token``); a listing inside one namespace (a prefix with a '/') the token cannot
read is refused. ListNamespaces shows the namespaces the token reads, PutNamespace needs
``admin`` on the namespace; RegisterOrigins and MaintainNamespaces ``admin`` on ``*``. With a grant key ring
(``grants``) each record served carries a read grant for its blob version, and GrantWrite
mints blob ids with write grants (``blobtier/grants.py``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import grpc
from prometheus_client import CollectorRegistry, Counter

from blobtier.errors import BlobNotFound, CorruptRecord, Forbidden, InvalidRequest
from blobtier.grants import ANY_VERSION, READ, WRITE, KeyRing
from blobtier.metadata import schema
from blobtier.metadata.namespaces import NamespaceSpec
from blobtier.metadata.schema import BlobRecord
from blobtier.metadata.store import ANY, MetadataStore
from blobtier.metrics import RpcMetrics
from blobtier.rpc.auth import TokenTable, caller
from blobtier.rpc.gen import meta_pb2 as pb
from blobtier.rpc.gen import meta_pb2_grpc as pb_grpc
from blobtier.rpc.server import MAX_MESSAGE_BYTES, Service, health_servicer
from blobtier.rpc.status import answering
from blobtier.rpc.tls import Tls

log = logging.getLogger(__name__)
SERVICES = ("blobtier.meta.v1.MetadataService",)
METHODS = ("Get", "GetMany", "Commit", "Delete", "List", "RegisterOrigins", "ListOrigins", "GrantWrite",
           "ListNamespaces", "PutNamespace", "MaintainNamespaces")

MAX_RECORD_BYTES = MAX_MESSAGE_BYTES - (64 << 10)
"""The largest encoded record the service carries (a blob of ~290k chunks at 3 replicas):
one record and its key fit in one message."""
REPLY_BUDGET_BYTES = MAX_RECORD_BYTES
"""Bytes of records and keys in one reply; a reply holds at least one record."""
MAX_ITEMS = 65536
"""Most keys of one GetMany, items of one Commit, URLs of one RegisterOrigins."""
DEFAULT_PAGE, MAX_PAGE = 1000, 10000
"""Entries of a List page when the request says 0, and the most it may ask for."""
_ENTRY_OVERHEAD = 16  # bytes of framing per entry of a reply, besides its key and record


class MetaMetrics(RpcMetrics):
    """Every series of one metadata server, on ``registry`` (see the module docstring)."""

    def __init__(self, registry: CollectorRegistry, namespace: str = "blobtier") -> None:
        self.registry = registry
        super().__init__("meta", METHODS, registry, namespace)
        self.served = Counter(f"{namespace}_meta_records_served", "Records sent in replies",
                              registry=registry)
        self.committed = Counter(f"{namespace}_meta_records_committed",
                                 "Records written or removed by commits and deletes", registry=registry)


class MetadataServicer(pb_grpc.MetadataServiceServicer):
    """The RPCs of ``meta.proto`` over ``store``."""

    def __init__(self, store: MetadataStore, metrics: MetaMetrics, auth: TokenTable | None = None,
                 grants: KeyRing | None = None) -> None:
        self.store = store
        self.metrics = metrics
        self.auth = auth
        self.grants = grants

    # -- namespaces and grants -------------------------------------------------------------
    def _need(self, context: grpc.ServicerContext, keys: Sequence[str], right: str) -> None:
        """Raise ``Forbidden`` unless the caller's token has ``right`` on the namespace of
        every key (no token table: everyone may)."""
        if self.auth is None:
            return
        token = caller(self.auth, context)
        for ns in dict.fromkeys(_namespace(k) for k in keys):
            if token is None or not token.allows(ns, right):
                name = token.name if token is not None else "(none)"
                raise Forbidden(f"token {name!r} has no {right} right on namespace {ns!r}")

    def _need_every(self, context: grpc.ServicerContext, right: str, what: str) -> None:
        """Raise ``Forbidden`` unless the caller's token has ``right`` on every namespace
        (``*``): for calls that act on all of them."""
        token = caller(self.auth, context)
        if self.auth is not None and (token is None or not token.allows_every(right)):
            raise Forbidden(f"{what} needs the {right} right on every namespace ('*')")

    def _readable(self, context: grpc.ServicerContext):  # noqa: ANN202 - key -> bool
        """A test of whether the caller may read a key (a listing's filter)."""
        if self.auth is None:
            return lambda key: True
        token = caller(self.auth, context)
        return lambda key: token is not None and token.allows(_namespace(key), "read")

    def _grant(self, key: str, rec: BlobRecord | None) -> bytes:
        if self.grants is None or rec is None:
            return b""
        return self.grants.sign(rec.blob_id, rec.version, _namespace(key), READ)

    def _check_owned(self, item: pb.CommitItem, value: bytes) -> None:
        """A committed record must name a blob of the key's own namespace: its item carries
        a grant this service signed for that blob id in that namespace (a write grant
        from GrantWrite, or the read grant of a record being rewritten). Otherwise a
        writer of one namespace could point a key at another namespace's chunks."""
        rec = schema.decode(value)
        ns = _namespace(item.key)
        if item.grant:
            grant = self.grants.verify(item.grant)
            if grant.namespace == ns and grant.covers(rec.blob_id, rec.version, 0):
                return
        raise Forbidden(f"the record of {item.key!r} names a blob id no grant of namespace "
                        f"{ns!r} covers (get one with GrantWrite)")

    def Get(self, request: pb.GetRequest, context: grpc.ServicerContext) -> pb.GetReply:
        with self.metrics.observe("Get"), answering(context):
            self._need(context, [request.key], "read")
            rec = self.store.get(request.key)
            if rec is None:
                raise BlobNotFound(f"{request.key!r} has no record")
            self.metrics.served.inc()
            return pb.GetReply(record=schema.encoded(rec), grant=self._grant(request.key, rec))

    def GetMany(self, request: pb.GetManyRequest, context: grpc.ServicerContext) -> pb.GetManyReply:
        with self.metrics.observe("GetMany"), answering(context):
            keys = request.keys
            _check_count(len(keys), "keys")
            self._need(context, keys, "read")
            recs = self.store.get_many(keys)
            raws = [b"" if rec is None else schema.encoded(rec) for rec in recs]
            raws = _fitting(raws, lambda raw: len(raw))
            self.metrics.served.inc(sum(1 for raw in raws if raw))
            grants = [self._grant(k, r) for k, r, _ in zip(keys, recs, raws)]
            return pb.GetManyReply(records=raws, grants=grants)

    def GrantWrite(self, request: pb.GrantWriteRequest, context: grpc.ServicerContext) -> pb.GrantWriteReply:
        with self.metrics.observe("GrantWrite"), answering(context):
            _check_count(len(request.keys), "keys")
            keys = [schema.validate_key(k) for k in request.keys]
            self._need(context, keys, "write")
            reply = pb.GrantWriteReply()
            for key in keys:
                blob_id = schema.new_blob_id()
                grant = (b"" if self.grants is None else
                         self.grants.sign(blob_id, ANY_VERSION, _namespace(key), READ | WRITE))
                reply.grants.add(blob_id=blob_id, grant=grant)
            return reply

    def Commit(self, request: pb.CommitRequest, context: grpc.ServicerContext) -> pb.CommitReply:
        with self.metrics.observe("Commit"), answering(context):
            _check_count(len(request.items), "items")
            self._need(context, [item.key for item in request.items], "write")
            batch = [_commit_item(item) for item in request.items]
            if self.grants is not None:
                for item, (_, _, value) in zip(request.items, batch):
                    if value is not None:
                        self._check_owned(item, value)
            # The stores' raw surface: records arrive encoded and checked, so going through
            # commit_many would only decode and encode them once more.
            applied = self._resent(batch) if request.resent else self.store._commit_raw(batch)
            self.metrics.committed.inc(sum(applied))
            return pb.CommitReply(applied=applied)

    def _resent(self, batch: list[tuple[bytes, int, bytes | None]]) -> list[bool]:
        """A commit sent again after its first attempt's outcome was lost: an item whose key
        already holds exactly its bytes landed then (``blob_id`` is random per write, so
        nobody else wrote the same bytes); the others are compare-and-set as usual."""
        current = self.store._get_many_raw([rkey for rkey, _, _ in batch])
        landed = [cur == value for (_, _, value), cur in zip(batch, current)]
        todo = [item for item, done in zip(batch, landed) if not done]
        results = iter(self.store._commit_raw(todo) if todo else ())
        return [True if done else next(results) for done in landed]

    def Delete(self, request: pb.DeleteRequest, context: grpc.ServicerContext) -> pb.DeleteReply:
        with self.metrics.observe("Delete"), answering(context):
            self._need(context, [request.key], "write")
            expected = request.expected if request.HasField("expected") else ANY
            _check_expected(request.key, expected)
            rec = self.store.delete(request.key, expected)
            if rec is None:
                raise BlobNotFound(f"{request.key!r} has no record")
            self.metrics.committed.inc()
            return pb.DeleteReply(record=schema.encoded(rec))

    def List(self, request: pb.ListRequest, context: grpc.ServicerContext) -> pb.ListReply:
        with self.metrics.observe("List"), answering(context):
            limit = request.limit or DEFAULT_PAGE
            if limit > MAX_PAGE:
                raise InvalidRequest(f"limit must be at most {MAX_PAGE}, got {limit}")
            if "/" in request.prefix:  # inside one namespace: refused outright, as a Get is
                self._need(context, [request.prefix], "read")
            rows = self._rows(request.prefix, request.delimiter, _page_token(request.page_token), limit)
            readable = self._readable(context)
            entries = [pb.ListEntry(key=key, record=b"" if rec is None else schema.encoded(rec),
                                    common_prefix=rec is None, grant=self._grant(key, rec))
                       for key, rec in rows if readable(key)]
            fitting = _fitting(entries, lambda e: len(e.record) + len(e.key) + len(e.grant))
            self.metrics.served.inc(sum(1 for e in fitting if not e.common_prefix))
            if len(fitting) < len(entries):
                after = fitting[-1].key  # cut by the message limit: resume after the last sent
            else:  # the page's last row, sent or left out: a filtered page still moves on
                after = rows[-1][0] if len(rows) == limit and rows else ""
            return pb.ListReply(entries=fitting, next_page_token=after)

    def _rows(self, prefix: str, delimiter: str, after: str | None,
              limit: int) -> Sequence[tuple[str, BlobRecord | None]]:
        if delimiter == "":
            return self.store.scan(prefix, after, limit)
        if delimiter == "/":
            return self.store.list_dir(prefix, after, limit)
        raise InvalidRequest(f"delimiter must be '' (every key) or '/', got {delimiter!r}")

    def RegisterOrigins(self, request: pb.RegisterOriginsRequest,
                        context: grpc.ServicerContext) -> pb.RegisterOriginsReply:
        with self.metrics.observe("RegisterOrigins"), answering(context):
            _check_count(len(request.urls), "urls")
            self._need_every(context, "admin", "registering origins")
            self.store.register_origins(list(request.urls))
            return pb.RegisterOriginsReply()

    def ListOrigins(self, request: pb.ListOriginsRequest,
                    context: grpc.ServicerContext) -> pb.ListOriginsReply:
        with self.metrics.observe("ListOrigins"), answering(context):
            return pb.ListOriginsReply(urls=self.store.origins())

    # -- namespace objects (metadata/namespaces.py) -------------------------------------------
    def ListNamespaces(self, request: pb.ListNamespacesRequest,
                       context: grpc.ServicerContext) -> pb.ListNamespacesReply:
        with self.metrics.observe("ListNamespaces"), answering(context):
            _check_count(len(request.names), "names")
            if request.names:
                self._need(context, list(request.names), "read")
                specs = {n: self.store.namespace(n) for n in request.names}
            else:  # every namespace the token reads, and no other's name
                readable = self._readable(context)
                specs = {s.name: s for s in self.store.namespaces() if readable(s.name)}
            usage = self.store.namespace_usage(list(specs)) if request.usage else {}
            return pb.ListNamespacesReply(entries=[
                pb.NamespaceEntry(name=n, spec=b"" if spec is None else spec.encode(0),
                                  usage=usage[n].encode(0) if n in usage else b"")
                for n, spec in specs.items()])

    def PutNamespace(self, request: pb.PutNamespaceRequest,
                     context: grpc.ServicerContext) -> pb.PutNamespaceReply:
        with self.metrics.observe("PutNamespace"), answering(context):
            self._need(context, [request.name], "admin")
            try:
                changes = json.loads(request.changes or "{}")
            except ValueError:
                raise InvalidRequest("changes must be a JSON object") from None
            if not isinstance(changes, dict) or "name" in changes:
                raise InvalidRequest("changes must be a JSON object of namespace fields (not name)")
            if request.create:
                spec = self.store.create_namespace(_new_spec(request.name, changes))
            else:
                spec = self.store.update_namespace(request.name, changes)
            return pb.PutNamespaceReply(spec=spec.encode(0))

    def MaintainNamespaces(self, request: pb.MaintainNamespacesRequest,
                           context: grpc.ServicerContext) -> pb.MaintainNamespacesReply:
        with self.metrics.observe("MaintainNamespaces"), answering(context):
            self._need_every(context, "admin", "maintaining namespaces (TTL deletes, recounts)")
            done = self.store.maintain_namespaces()
            return pb.MaintainNamespacesReply(expired=done.expired, reconciled=done.reconciled,
                                              busy=done.busy)


def _new_spec(name: str, changes: dict) -> NamespaceSpec:
    try:
        return NamespaceSpec(name, **changes)
    except TypeError as exc:
        raise InvalidRequest(f"namespace fields: {exc}") from None


def _namespace(key: str) -> str:
    """The namespace of a key, or of a listed subdirectory ('ns/...')."""
    return key.split("/", 1)[0]


def _check_count(n: int, field: str) -> None:
    if n > MAX_ITEMS:
        raise InvalidRequest(f"{field}: at most {MAX_ITEMS} in one call, got {n}")


def _check_expected(key: str, expected: int) -> None:
    if expected < ANY:
        raise InvalidRequest(f"{key!r}: expected must be a version, 0 (absent) or -1 (any), "
                             f"got {expected}")


def _commit_item(item: pb.CommitItem) -> tuple[bytes, int, bytes | None]:
    """(raw key, expected, value or None to delete), checked: a reader must be able to
    decode whatever the service stores."""
    key = schema.validate_key(item.key)
    _check_expected(key, item.expected)
    if item.delete:
        if item.record:
            raise InvalidRequest(f"{key!r}: a delete carries no record")
        return schema.record_key(key), item.expected, None
    if len(item.record) > MAX_RECORD_BYTES:
        raise InvalidRequest(f"the record of {key!r} is {len(item.record)} bytes; the metadata "
                             f"service carries records of at most {MAX_RECORD_BYTES}")
    try:
        _ = schema.decode(item.record).attrs  # the body too: decode parses it lazily
    except CorruptRecord as exc:
        raise InvalidRequest(f"the record of {key!r} is not a valid blobtier record: {exc}") from None
    return schema.record_key(key), item.expected, item.record


def _page_token(token: str) -> str | None:
    """The key a page resumes after (tokens are keys: any server of a region takes any
    other's)."""
    if not token:
        return None
    if "\x00" in token or len(token.encode()) > schema.MAX_KEY_BYTES:
        raise InvalidRequest("page_token is not one a metadata service gave out")
    return token


def _fitting(items: list, size) -> list:  # noqa: ANN001 - size: item -> bytes it takes
    """The longest head of ``items`` whose sizes fit in one reply (at least one item)."""
    total = 0
    for i, item in enumerate(items):
        total += size(item) + _ENTRY_OVERHEAD
        if total > REPLY_BUDGET_BYTES and i:
            return items[:i]
    return items


def open_backend(spec: str) -> MetadataStore:
    """The store a service serves: ``rocksdb:DIR`` (opened as its one writer) or
    ``redis://HOST:PORT[,HOST:PORT...][?...]`` (``RedisStore.from_url``).

    Raises: ``InvalidRequest`` for another spec; the store's own errors (``RegionLocked``
    when another process has the RocksDB open for writing, ``TierUnavailable`` when Redis
    does not answer).
    """
    if spec.startswith("rocksdb:"):
        path = spec[len("rocksdb:"):]
        if not path:
            raise InvalidRequest("--backend rocksdb:DIR needs the database directory")
        from blobtier.metadata.rocksdb_store import RocksDBStore

        return RocksDBStore(path, writable=True)
    if spec.startswith("redis://"):
        from blobtier.metadata.redis_store import RedisStore

        return RedisStore.from_url(spec)
    raise InvalidRequest(f"metadata backend {spec!r} must be rocksdb:DIR or "
                         "redis://HOST:PORT[,HOST:PORT...]")


class MetadataServer(Service):
    """A running metadata service over ``store``, serving at once until ``stop()``.

    Args:
        store: what it serves; closed by ``stop()``.
        addr: where to listen; loopback and a free port by default.
        tls: serve TLS with these certificates.
        workers: requests served at once.
        metrics_port: serve Prometheus series on 127.0.0.1:PORT (0 picks one; None: off).
        registry: where the series go (default: a registry of this server's own).
        auth: the tokens calls must present (None: none needed; ``rpc/auth.py``), checked
            on each key's namespace.
        grants: the region key ring that signs grants (None: records carry none).
    """

    def __init__(self, store: MetadataStore, *, addr: str = "127.0.0.1:0", tls: Tls | None = None,
                 workers: int = 32, metrics_port: int | None = None,
                 registry: CollectorRegistry | None = None, auth: TokenTable | None = None,
                 grants: KeyRing | None = None) -> None:
        self.store = store
        self.metrics = MetaMetrics(registry if registry is not None else CollectorRegistry())
        _, health = health_servicer(SERVICES)
        servicer = MetadataServicer(store, self.metrics, auth, grants)
        self._start([(pb_grpc.add_MetadataServiceServicer_to_server, servicer),
                     health], addr, tls, workers=workers, auth=auth, metrics_port=metrics_port,
                    registry=self.metrics.registry)

    def _close(self) -> None:
        self.store.close()  # over RocksDB: the writer lock goes with it

    def __repr__(self) -> str:
        return f"<MetadataServer {self.address} over {self.store.where}>"
