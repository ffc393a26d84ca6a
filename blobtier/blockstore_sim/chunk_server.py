"""A simulated chunk server: one ``VolumeStore`` behind gRPC, with fault injection.

``ChunkServer(root)`` starts serving at once (loopback, a free port unless told) and runs
until ``stop()``. Besides ``ChunkService`` it serves ``ChunkAdmin`` (faults, changeable
while it runs) and the standard ``grpc.health.v1`` service, which says NOT_SERVING while
the server is down; optionally its Prometheus series (``metrics.py``) on
``127.0.0.1:metrics_port``. A bad request gets its status code and the server keeps serving.

With a grant key ring (``grants``) the server stores and serves a chunk only under a grant
the metadata service signed (``blobtier/grants.py``), each request naming the chunk's
version and index under the grant's blob id: Get and Stat need a read grant, Put a write
grant, Delete a write grant per chunk or, without grants, a token with the admin right
on every namespace (gc); List and Compact need that admin right too when tokens are
checked. A refusal is PERMISSION_DENIED.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack

import grpc

from blobtier.blockstore_sim import wire
from blobtier.blockstore_sim.faults import NO_FAULTS, FaultInjector, FaultProfile, flip_byte
from blobtier.blockstore_sim.metrics import ChunkServerMetrics
from blobtier.blockstore_sim.volume import VolumeStore
from blobtier.errors import BlobNotFound, BlobtierError, Forbidden, InvalidRequest, OutOfRange
from blobtier.grants import READ, WRITE, Grant, KeyRing, check_chunk
from blobtier.rpc import put_stream
from blobtier.rpc.auth import TokenTable, caller
from blobtier.rpc.gen import block_pb2 as pb
from blobtier.rpc.gen import block_pb2_grpc as pb_grpc
from blobtier.rpc.server import Service
from blobtier.rpc.status import answering
from blobtier.rpc.tls import Tls

log = logging.getLogger(__name__)
SERVICES = ("blobtier.block.v1.ChunkService", "blobtier.block.v1.ChunkAdmin")


def _answering(context: grpc.ServicerContext) -> AbstractContextManager[None]:
    # Not every OSError: a failing disk here is INTERNAL, and the client tries a replica.
    return answering(context, (BlobtierError, PermissionError))


def _digest(header: pb.PutHeader) -> bytes:
    return wire.check_digest(header.digest)


def _cancel_event(context: grpc.ServicerContext) -> threading.Event:
    """Set when the call ends for any reason, including the client cancelling it."""
    event = threading.Event()
    context.add_callback(event.set)
    return event


class ChunkServicer(pb_grpc.ChunkServiceServicer):
    def __init__(self, store: VolumeStore, faults: FaultInjector, metrics: ChunkServerMetrics,
                 grants: KeyRing | None = None, auth: TokenTable | None = None) -> None:
        self.store = store
        self.faults = faults
        self.metrics = metrics
        self.grants = grants
        self.auth = auth

    def _granted(self, context: grpc.ServicerContext, raw: bytes, digest: bytes, version: int,
                 index: int, right: int, seen: dict[bytes, Grant] | None = None) -> None:
        """Forbidden unless ``raw`` grants ``right`` on the chunk, or the caller is the
        region's operator (an admin token: gc, scrub's repairs)."""
        if self.grants is None:
            return
        bearer = caller(self.auth, context)
        try:
            check_chunk(self.grants, raw, digest, version, index, right, seen, bearer)
        except Forbidden:
            if not self._is_admin(context):
                raise

    def _is_admin(self, context: grpc.ServicerContext) -> bool:
        token = caller(self.auth, context)
        return token is not None and token.allows_every("admin")

    def _admin(self, context: grpc.ServicerContext, what: str) -> None:
        """Where grants are checked, calls over every chunk need an admin token."""
        if self.grants is None or self.auth is None:
            return
        if not self._is_admin(context):
            raise Forbidden(f"{what} needs the admin right on every namespace ('*')")

    def Put(self, request_iterator: Iterator[pb.PutRequest], context: grpc.ServicerContext) -> pb.PutReply:
        cancel = _cancel_event(context)
        with self.metrics.observe("Put"), _answering(context):
            if not self.faults.admit(cancel):
                return pb.PutReply()
            seen: dict[bytes, Grant] = {}
            items = []
            for digest, h, data in put_stream.receive(request_iterator, _digest,
                                                      pace=lambda n: self._receiving(n, cancel)):
                self._granted(context, h.grant, digest, h.version, h.index, WRITE, seen)
                items.append((digest, data, h.xxh3))
            if cancel.is_set():  # the client went away (the stream was cut): store nothing
                return pb.PutReply()
            self.store.put_many(items)
            return pb.PutReply(stored=len(items))

    def _receiving(self, nbytes: int, cancel: threading.Event) -> bool:
        """A data piece arrives: held as long as the link's faults say, then counted;
        False if the client went away meanwhile."""
        if not self.faults.pace(nbytes, cancel):
            return False
        self.faults.count("bytes_received", nbytes)
        return True

    def Get(self, request: pb.GetRequest, context: grpc.ServicerContext) -> Iterator[pb.GetReply]:
        cancel = _cancel_event(context)
        with self.metrics.observe("Get"), _answering(context):
            digest = wire.check_digest(request.digest)
            self._granted(context, request.grant, digest, request.version, request.index, READ)
            if not self.faults.admit(cancel):
                return
            size, h, _ = self.store.info(digest)
            length = request.length if request.HasField("length") else size - request.offset
            if request.offset < 0 or length < 0:
                raise OutOfRange(f"negative range {request.offset}+{length}")
            view = self.store.get(digest, request.offset, length)
            corrupt = self.faults.corrupt()
            # The lengths go first, alone: the client sees that the server started
            # answering (what a hedge waits for) before any byte is copied or sent.
            yield pb.GetReply(length=length, chunk_length=size, xxh3=h)
            for pos in range(0, length, wire.MAX_PIECE_BYTES):
                piece = bytes(view[pos:pos + wire.MAX_PIECE_BYTES])
                if not self.faults.pace(len(piece), cancel):
                    return
                if corrupt:
                    piece, corrupt = flip_byte(piece), False
                self.faults.count("bytes_sent", len(piece))
                yield pb.GetReply(data=piece)

    def Delete(self, request: pb.DeleteRequest, context: grpc.ServicerContext) -> pb.DeleteReply:
        cancel = _cancel_event(context)
        with self.metrics.observe("Delete"), _answering(context):
            if len(request.digests) > wire.MAX_DELETE:
                raise InvalidRequest(f"at most {wire.MAX_DELETE} digests per Delete")
            digests = [wire.check_digest(d) for d in request.digests]
            self._delete_allowed(request, digests, context)
            if not self.faults.admit(cancel):
                return pb.DeleteReply()
            present = [d for d in digests if self.store.exists(d)]
            self.store.delete_many(present)
            return pb.DeleteReply(deleted=len(present))

    def _delete_allowed(self, request: pb.DeleteRequest, digests: list[bytes],
                        context: grpc.ServicerContext) -> None:
        """A write grant per chunk (a writer's own), or none and an admin token (gc)."""
        if self.grants is None:
            return
        if not request.grants:
            self._admin(context, "Delete without grants")
            if self.auth is None:
                raise Forbidden("Delete needs a write grant for each chunk")
            return
        n = len(digests)
        if not len(request.grants) == len(request.versions) == len(request.indexes) == n:
            raise InvalidRequest(f"Delete: {len(request.grants)} grants, {len(request.versions)} "
                                 f"versions and {len(request.indexes)} indexes for {n} digests")
        seen: dict[bytes, Grant] = {}
        for d, raw, version, index in zip(digests, request.grants, request.versions, request.indexes):
            self._granted(context, raw, d, version, index, WRITE, seen)

    def Stat(self, request: pb.StatRequest, context: grpc.ServicerContext) -> pb.StatReply:
        cancel = _cancel_event(context)
        with self.metrics.observe("Stat"), _answering(context):
            digest = wire.check_digest(request.digest)
            self._granted(context, request.grant, digest, request.version, request.index, READ)
            if not self.faults.admit(cancel):
                return pb.StatReply()
            try:
                length, h, written = self.store.info(digest)
            except BlobNotFound:
                return pb.StatReply(exists=False)
            return pb.StatReply(exists=True, length=length, xxh3=h, written=written)

    def List(self, request: pb.ListRequest, context: grpc.ServicerContext) -> Iterator[pb.ListReply]:
        cancel = _cancel_event(context)
        with self.metrics.observe("List"), _answering(context):
            self._admin(context, "List")
            if not self.faults.admit(cancel):
                return
            entries = self.store.digests()
            for start in range(0, len(entries), wire.LIST_BATCH):
                yield pb.ListReply(entries=[pb.ChunkEntry(digest=d, written=w)
                                            for d, w in entries[start:start + wire.LIST_BATCH]])


    def Compact(self, request: pb.CompactRequest, context: grpc.ServicerContext) -> pb.CompactReply:
        cancel = _cancel_event(context)
        with self.metrics.observe("Compact"), _answering(context):
            self._admin(context, "Compact")
            if not self.faults.admit(cancel):
                return pb.CompactReply()
            r = self.store.compact(request.min_dead_ratio if request.HasField("min_dead_ratio") else None)
            log.info("chunk server compacted %d volumes: %d -> %d bytes", r.volumes,
                     r.bytes_before, r.bytes_after)
            return pb.CompactReply(volumes=r.volumes, bytes_before=r.bytes_before,
                                   bytes_after=r.bytes_after, moved_bytes=r.moved_bytes,
                                   skipped=r.skipped, dropped_corrupt=r.dropped_corrupt)


class AdminServicer(pb_grpc.ChunkAdminServicer):
    def __init__(self, server_id: int, faults: FaultInjector) -> None:
        self.server_id = server_id
        self.faults = faults

    def SetFaults(self, request: pb.FaultUpdate, context: grpc.ServicerContext) -> pb.FaultState:
        with _answering(context):
            if request.reset:
                self.faults.reset()
            changes = wire.changes_from_pb(request.set)
            if changes:
                log.info("chunk server %d: faults %s", self.server_id, changes)
                self.faults.update(**changes)
            return self.GetFaults(pb.GetFaultsRequest(), context)

    def GetFaults(self, request: pb.GetFaultsRequest, context: grpc.ServicerContext) -> pb.FaultState:
        return wire.state_to_pb(self.server_id, self.faults.profile, self.faults.counters())


class ChunkServer(Service):
    """A running chunk server over the volume directory ``root``.

    Args:
        root: the server's disk (created if missing).
        addr: where to listen; loopback and a free port by default.
        server_id: reported by the admin RPC and in logs.
        faults: the faults to start with.
        seed: seeds the fault draws.
        tls: serve TLS with these certificates.
        workers: requests served at once (each in-flight request holds a thread).
        metrics_port: serve Prometheus series on 127.0.0.1:PORT (0 picks one; None: off).
        auth: the tokens calls must present (None: none needed).
        grants: the region key ring: chunks are served only under its grants (None: no
            grants needed).

    Raises:
        TierUnavailable: ``addr`` cannot be listened on (nothing is left open or bound).
    """

    def __init__(self, root: str, *, addr: str = "127.0.0.1:0", server_id: int = 0,
                 faults: FaultProfile = NO_FAULTS, seed: int | None = None,
                 tls: Tls | None = None, workers: int = 64, metrics_port: int | None = None,
                 auth: TokenTable | None = None, grants: KeyRing | None = None) -> None:
        self.root = root
        self.server_id = server_id
        with ExitStack() as owned:
            self.store = VolumeStore(root, writable=True)
            owned.callback(self.store.close)  # the disk, once no call is left
            self.faults = FaultInjector(faults, seed=seed, on_change=self._set_health)
            self.metrics = ChunkServerMetrics(self.faults)
            self._start([(pb_grpc.add_ChunkServiceServicer_to_server,
                          ChunkServicer(self.store, self.faults, self.metrics, grants, auth)),
                         (pb_grpc.add_ChunkAdminServicer_to_server, AdminServicer(server_id, self.faults))],
                        addr, tls, workers=workers, auth=auth, metrics_port=metrics_port,
                        registry=self.metrics.registry, services=SERVICES, serving=not faults.down,
                        owned=owned.pop_all())

    def _set_health(self, profile: FaultProfile) -> None:
        self.set_serving(not profile.down)  # NOT_SERVING while down

    def __repr__(self) -> str:
        return f"<ChunkServer {self.server_id} {self.address} root={self.root!r}>"
