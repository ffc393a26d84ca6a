"""``RemoteMetadataStore``: the ``MetadataStore`` interface over metadata services.

A client of one or more ``blobtier meta serve`` servers of one region (several only over
Redis, where the servers are stateless). Each call goes to the next server in turn;
one that cannot answer (down, timed out, its store unreachable) is benched for a backoff
(``backoff.ReplicaHealth``) and the call goes on to the next, so a dead server costs one
failed attempt, not one per call. When none answers the call raises ``TierUnavailable``
naming every server. An answer that is an error about the request raises the exception
the store itself would: ``InvalidKey`` naming the key, ``VersionConflict``,
``MetadataCorrupt``, ``Forbidden``.

A commit whose server died before answering may have landed: it is sent to the next
server marked as resent, which counts an item whose key already holds exactly its record
as applied (``meta.proto``), so a commit is never reported lost when it landed, nor
applied twice. Channels open lazily in each process (``rpc/channel.py``): a forked
DataLoader worker uses its own.

Grants (``blobtier/grants.py``) travel with the records: each one a server signed goes
into this process's ``grants.BOOK``, with a way to fetch the record again once it nears
its expiry, where the data clients find it; a commit carries the grant of its record's
blob (``new_blob_ids`` asks the service for fresh blob ids and their write grants). A
token refused on a namespace is ``Forbidden`` at once, from the first server: no other
server is tried.

Batches larger than one message (``service.REPLY_BUDGET_BYTES``) are split: a large
``commit_many`` is then several commits in order, each atomic on its own.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import grpc

from blobtier import forks
from blobtier.backoff import ReplicaHealth
from blobtier.errors import BlobNotFound, InvalidRequest, TierUnavailable
from blobtier.grants import BOOK, refresher
from blobtier.metadata import schema
from blobtier.metadata.namespaces import NamespaceSpec, Usage
from blobtier.metadata.schema import BlobRecord
from blobtier.metadata.service import MAX_ITEMS, MAX_RECORD_BYTES, REPLY_BUDGET_BYTES
from blobtier.metadata.store import ANY, Maintenance, MetadataStore
from blobtier.rpc import status
from blobtier.rpc.channel import LazyChannel
from blobtier.rpc.gen import meta_pb2 as pb
from blobtier.rpc.gen import meta_pb2_grpc as pb_grpc
from blobtier.rpc.tls import Tls

_PAGE = 1000  # entries asked for per List call


class RemoteMetadataStore(MetadataStore):
    """A ``MetadataStore`` served by the metadata services at ``endpoints``.

    Args:
        endpoints: "host:port" of each server (a list, or one comma-separated string).
        tls: connect with TLS.
        token: presented on every call to servers that check tokens (``rpc/auth.py``).
        timeout_s: deadline of one call to one server; past it the next server is tried.

    Raises (from any method): ``TierUnavailable`` when no server answers;
    ``InvalidRequest`` for a bad endpoint (at construction).
    """

    def __init__(self, endpoints: Sequence[str] | str, *, tls: Tls | None = None,
                 token: str | None = None, timeout_s: float = 10.0) -> None:
        self.endpoints = _parse_endpoints(endpoints)
        self.where = "metadata service " + ",".join(self.endpoints)
        self.timeout_s = timeout_s
        self.health = ReplicaHealth()
        self._channels = [LazyChannel(ep, tls, token) for ep in self.endpoints]
        self._stubs: list[tuple[grpc.Channel, pb_grpc.MetadataServiceStub] | None] = \
            [None] * len(self.endpoints)
        self._turn = itertools.count()
        forks.register(self)
        BOOK.add_fetcher(self._fetch_grant)

    def _after_fork_in_child(self) -> None:
        """The child's calls go through channels of its own (``LazyChannel`` resets them);
        the bench's lock may have been held by a parent thread at the fork."""
        self.health = ReplicaHealth()
        self._stubs = [None] * len(self.endpoints)

    def _stub(self, i: int) -> pb_grpc.MetadataServiceStub:
        channel = self._channels[i].get()
        stubs = self._stubs[i]
        if stubs is None or stubs[0] is not channel:
            stubs = self._stubs[i] = (channel, pb_grpc.MetadataServiceStub(channel))
        return stubs[1]

    # -- calls ---------------------------------------------------------------------------
    def _call(self, method: str, request: Any, keys: Sequence[str] = ()) -> Any:
        """``method(request)`` on one server after another (the next in turn first, benched
        ones last) until one answers. ``keys``: the keys the request names, for errors."""
        n = len(self.endpoints)
        first = next(self._turn) % n
        failures = []
        for i in self.health.order((first + j) % n for j in range(n)):
            try:
                reply = getattr(self._stub(i), method)(request, timeout=self.timeout_s)
            except grpc.RpcError as exc:
                err = status.error_of(exc, self.endpoints[i], status.METADATA_FROM_CODE)
                if not isinstance(err, TierUnavailable):  # an answer about the request
                    self.health.ok(i)
                    raise _about(err, keys) from None
                self.health.failed(i)
                failures.append(str(err))
                if isinstance(request, pb.CommitRequest):
                    request.resent = True  # it may have landed before the server died
                continue
            self.health.ok(i)
            return reply
        raise TierUnavailable(f"metadata service unavailable: none of {', '.join(self.endpoints)} "
                              f"answered ({'; '.join(failures)})")

    # -- the backend surface ---------------------------------------------------------------
    def _get_raw(self, rkey: bytes) -> bytes | None:
        key = _key_of(rkey)
        try:
            reply = self._call("Get", pb.GetRequest(key=key), (key,))
        except BlobNotFound:
            return None
        self._keep_grant(key, reply.grant)
        return reply.record

    def _fetch_grant(self, key: str) -> None:
        """Fetch ``key``'s record, for its grant (``GrantBook.ensure``)."""
        self._get_raw(schema.record_key(key))

    def _keep_grant(self, key: str, grant: bytes) -> None:
        if grant:
            BOOK.add(grant, refresher(self._get_raw, schema.record_key(key)))

    def new_blob_ids(self, keys: Sequence[str]) -> list[bytes]:
        """Blob ids the service minted for new versions of ``keys``, their write grants
        kept in ``grants.BOOK`` (``Forbidden`` without the write right on a namespace)."""
        out: list[bytes] = []
        for batch in _batches(list(keys), len):
            reply = self._call("GrantWrite", pb.GrantWriteRequest(keys=batch), batch)
            if len(reply.grants) != len(batch):
                raise TierUnavailable(f"{self.where} answered {len(reply.grants)} of {len(batch)} blob ids")
            for g in reply.grants:
                BOOK.add(g.grant)
                out.append(g.blob_id)
        return out

    def _get_many_raw(self, rkeys: Sequence[bytes]) -> list[bytes | None]:
        keys = [_key_of(k) for k in rkeys]
        out: list[bytes | None] = []
        for batch in _batches(keys, lambda k: len(k)):
            while batch:  # a reply cut short by the message limit: ask for the rest
                reply = self._call("GetMany", pb.GetManyRequest(keys=batch), batch)
                raws = reply.records
                if not raws:
                    raise TierUnavailable(f"{self.where} answered no record of {len(batch)} keys")
                for key, grant in zip(batch, reply.grants):
                    self._keep_grant(key, grant)
                out += [raw or None for raw in raws]
                batch = batch[len(raws):]
        return out

    def _cas_many(self, items: Sequence[tuple[bytes, int, bytes | None]]) -> list[bool]:
        commits = [_commit_item(rkey, expected, value) for rkey, expected, value in items]
        applied: list[bool] = []
        for batch in _batches(commits, lambda c: len(c.key) + len(c.record)):
            keys = [c.key for c in batch]
            got = self._call("Commit", pb.CommitRequest(items=batch), keys).applied
            if len(got) != len(batch):
                raise TierUnavailable(f"{self.where} answered {len(got)} of {len(batch)} commits")
            applied += got
        return applied

    def _scan_raw(self, prefix: bytes, start: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        """Rows from ``start`` as ``scan`` and the base listing ask: the prefix itself, or
        just after a key (the key and a NUL, which no key holds)."""
        if start == prefix:
            after = None
        elif start.endswith(b"\x00") and start > prefix:
            after = _key_of(start[:-1])
        else:
            raise InvalidRequest("a remote scan starts at its prefix or just after a key")
        return [(schema.RECORD_PREFIX + key.encode(), raw)
                for key, raw in self._list(_key_of(prefix), "", after, limit)]

    def _list(self, prefix: str, delimiter: str, after: str | None,
              limit: int) -> Iterator[tuple[str, bytes | None]]:
        """Up to ``limit`` (key, record bytes or None for a common prefix), page by page."""
        n = 0
        while n < limit:
            request = pb.ListRequest(prefix=prefix, delimiter=delimiter, page_token=after or "",
                                     limit=min(limit - n, _PAGE))
            reply = self._call("List", request)
            for e in reply.entries:
                self._keep_grant(e.key, e.grant)
                yield e.key, None if e.common_prefix else e.record
            n += len(reply.entries)
            # A page may be empty but not the last: its keys were of namespaces the
            # token cannot read.
            if not reply.next_page_token or reply.next_page_token == after:
                return
            after = reply.next_page_token

    # -- MetadataStore -------------------------------------------------------------------
    def delete(self, key: str, expected: int = ANY) -> BlobRecord | None:
        """One call: the server compares and removes (``MetadataStore.delete``)."""
        schema.validate_key(key)
        try:
            raw = self._call("Delete", pb.DeleteRequest(key=key, expected=expected), (key,)).record
        except BlobNotFound:
            return None
        return self._decode(key, raw)

    def scan(self, prefix: str = "", after: str | None = None,
             limit: int = 1000) -> list[tuple[str, BlobRecord]]:
        schema.validate_prefix(prefix)
        return [(key, self._decode(key, raw)) for key, raw in self._list(prefix, "", after, limit)]

    def list_dir(self, prefix: str = "", after: str | None = None,
                 limit: int = 1000) -> list[tuple[str, BlobRecord | None]]:
        """``MetadataStore.list_dir``, answered by the server's store (a Redis directory
        index; RocksDB seeks past each subdirectory)."""
        schema.validate_prefix(prefix)
        if after is not None:
            schema.validate_prefix(after)
        if limit < 1:
            raise InvalidRequest(f"list_dir limit must be at least 1, got {limit}")
        out: list[tuple[str, BlobRecord | None]] = []
        for key, raw in self._list(prefix, "/", after, limit):
            rec = None if raw is None else self._decode(key, raw)
            if rec is not None:
                rec.key = key
            out.append((key, rec))
        return out

    def register_origins(self, urls: Sequence[str]) -> None:
        """``MetadataStore.register_origins`` through the service (needs the admin right).
        URLs are put in canonical form here, where the caller named them."""
        from blobtier.origins import canonical

        for batch in _batches(sorted({canonical(u) for u in urls}), len):
            self._call("RegisterOrigins", pb.RegisterOriginsRequest(urls=batch))

    def origins(self) -> list[str]:
        return list(self._call("ListOrigins", pb.ListOriginsRequest()).urls)

    # -- namespaces: the server's store keeps them, counts usage, leaves expired blobs out -----
    def _ttls(self) -> dict[str, float]:
        return {}  # the server's store applies them to every answer: no call here

    def _commit_raw(self, batch: Sequence[tuple[bytes, int, bytes | None]]) -> list[bool]:
        return self._cas_many(batch)  # the server's store checks quotas and counts usage

    def namespaces(self) -> list[NamespaceSpec]:
        reply = self._call("ListNamespaces", pb.ListNamespacesRequest())
        return [NamespaceSpec.decode(e.spec) for e in reply.entries]

    def namespace(self, name: str) -> NamespaceSpec | None:
        entries = self._call("ListNamespaces", pb.ListNamespacesRequest(names=[name])).entries
        return NamespaceSpec.decode(entries[0].spec) if entries and entries[0].spec else None

    def namespace_usage(self, names: Sequence[str]) -> dict[str, Usage]:
        reply = self._call("ListNamespaces", pb.ListNamespacesRequest(names=list(names), usage=True))
        return {e.name: Usage.decode(e.usage) if e.usage else Usage() for e in reply.entries}

    def create_namespace(self, spec: NamespaceSpec) -> NamespaceSpec:
        fields = {k: v for k, v in asdict(spec.validate()).items() if k != "name" and v is not None}
        return self._put_namespace(spec.name, fields, create=True)

    def update_namespace(self, name: str, changes: Mapping[str, Any]) -> NamespaceSpec:
        return self._put_namespace(name, dict(changes), create=False)

    def _put_namespace(self, name: str, changes: dict[str, Any], create: bool) -> NamespaceSpec:
        request = pb.PutNamespaceRequest(name=name, changes=json.dumps(changes), create=create)
        self._ttl_cache = None
        return NamespaceSpec.decode(self._call("PutNamespace", request).spec)

    def maintain_namespaces(self) -> Maintenance:
        reply = self._call("MaintainNamespaces", pb.MaintainNamespacesRequest())
        return Maintenance(reply.expired, list(reply.reconciled), list(reply.busy))

    def close(self) -> None:
        self._stubs = [None] * len(self.endpoints)
        for channel in self._channels:
            channel.close()

    def __repr__(self) -> str:
        return f"<RemoteMetadataStore {','.join(self.endpoints)}>"


def _about(err: Exception, keys: Sequence[str]) -> Exception:
    """A server's error answer about a request naming ``keys``. INVALID_ARGUMENT carries no
    exception class: a bad key among them is found again here, so it raises ``InvalidKey``
    naming it as a local store would. Other errors say which keys were asked (a server
    names only the kind of a corruption)."""
    if isinstance(err, InvalidRequest):
        for key in keys:
            schema.validate_key(key)
    elif keys:
        shown = ", ".join(repr(k) for k in keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
        err = type(err)(*err.args[:-1], f"{err.args[-1]} [asked for {shown}]")
    return err


def _key_of(rkey: bytes) -> str:
    if not rkey.startswith(schema.RECORD_PREFIX):
        raise InvalidRequest("a remote metadata store reads and writes records only")
    return rkey[1:].decode()


def _commit_item(rkey: bytes, expected: int, value: bytes | None) -> pb.CommitItem:
    key = _key_of(rkey)
    if value is None:
        return pb.CommitItem(key=key, expected=expected, delete=True)
    if len(value) > MAX_RECORD_BYTES:
        raise InvalidRequest(f"the record of {key!r} is {len(value)} bytes; the metadata service "
                             f"carries records of at most {MAX_RECORD_BYTES} (fewer chunks: a "
                             "larger chunk size)")
    return pb.CommitItem(key=key, expected=expected, record=value,
                         grant=BOOK.get(schema.decode(value).blob_id) or b"")


def _batches(items: Sequence, size: Callable[[Any], int]) -> Iterator[list]:
    """``items`` in runs that fit one message and ``MAX_ITEMS``."""
    batch: list = []
    total = 0
    for item in items:
        n = size(item) + 16
        if batch and (total + n > REPLY_BUDGET_BYTES or len(batch) == MAX_ITEMS):
            yield batch
            batch, total = [], 0
        batch.append(item)
        total += n
    if batch:
        yield batch


def _parse_endpoints(endpoints: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(endpoints, str):
        endpoints = endpoints.split(",")
    out = tuple(ep.strip() for ep in endpoints if ep.strip())
    for ep in out:
        host, _, port = ep.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidRequest(f"metadata endpoint {ep!r} must be host:port")
    if not out:
        raise InvalidRequest("no metadata service endpoint given")
    return out
