"""``RemoteChunkStore``: the ``ChunkStore`` protocol over a gRPC chunk server.

The block store reads and writes through it exactly as through a local ``VolumeStore``;
``start_get`` additionally starts a read that can be cancelled, which is what a hedged
read needs: the loser of a race is cancelled and its server stops sending at once.
Failed calls raise the exception ``rpc/status.py`` maps their status code to.

Given the ``ChunkKey`` of a chunk (``key=``), a call carries the grant this process holds
for its blob (``grants.BOOK``) and the chunk's version and index, which a server with a
grant key checks (``chunk_server.py``); without one it carries none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from blobtier.blockstore_sim import wire
from blobtier.blockstore_sim.faults import FaultState
from blobtier.blockstore_sim.volume import CompactReport
from blobtier.chunks import Buffer, ChunkKey
from blobtier.errors import InvalidRequest
from blobtier.grants import BOOK
from blobtier.rpc import put_stream, status
from blobtier.rpc.channel import LazyChannel
from blobtier.rpc.gen import block_pb2 as pb
from blobtier.rpc.gen import block_pb2_grpc as pb_grpc
from blobtier.rpc.tls import Tls

_PUT_BATCH_BYTES = 32 << 20  # chunk bytes per Put call: the server buffers a call until synced
COMPACT_TIMEOUT_S = 3600.0  # a compaction copies up to a disk's live bytes


def _granted(msg: Any, key: ChunkKey | None) -> Any:
    """``msg`` (a request or a put header) naming ``key``'s grant, version and index."""
    if key is not None:
        msg.grant = BOOK.get(key.blob_id) or b""
        msg.version, msg.index = key.version, key.index
    return msg


@contextmanager
def _calling(where: str) -> Iterator[None]:
    try:
        yield
    except grpc.RpcError as exc:
        raise status.error_of(exc, where) from None


class RemoteGet:
    """A read in flight: ``result()`` collects it, ``cancel()`` abandons it."""

    def __init__(self, call: grpc.Call, where: str) -> None:
        self._call = call
        self._where = where
        self.cancelled = False

    def result(self, on_first: Callable[[], None] | None = None) -> memoryview:
        """The answer's bytes; ``on_first`` is called when the server starts answering
        (its first message, which carries the lengths)."""
        with _calling(self._where):
            head = next(self._call)
            if on_first is not None:
                on_first()
            length = head.length
            piece = next(self._call, None)
            if piece is None or len(piece.data) == length:  # one piece: no copy
                data = piece.data if piece is not None else b""
                if len(data) == length and next(self._call, None) is None:
                    return memoryview(data)
                raise self._mismatch(len(data), length)
            buf = bytearray(length)
            filled = 0
            while piece is not None:
                end = filled + len(piece.data)
                if end > length:
                    raise self._mismatch(end, length)
                buf[filled:end] = piece.data
                filled = end
                piece = next(self._call, None)
        if filled != length:
            raise self._mismatch(filled, length)
        return memoryview(buf).toreadonly()

    def _mismatch(self, got: int, announced: int) -> Exception:
        self._call.cancel()
        return status.exception_for(grpc.StatusCode.INTERNAL)(
            f"{self._where}: answer of {got} bytes where {announced} were announced")

    def cancel(self) -> None:
        self.cancelled = True
        self._call.cancel()


class RemoteChunkStore:
    """A ``ChunkStore`` served by the chunk server at ``addr`` (``host:port``).

    Args:
        addr: the server.
        tls: connect with TLS.
        timeout_s: deadline of each call; a call past it raises ``TimedOut``.
        token: presented on every call to a server that checks tokens (``rpc/auth.py``).
    """

    def __init__(self, addr: str, *, tls: Tls | None = None, timeout_s: float = 30.0,
                 token: str | None = None) -> None:
        self.addr = addr
        self.timeout_s = timeout_s
        self.where = f"chunk server {addr}"
        self._channel = LazyChannel(addr, tls, token)
        self._stubs: tuple[grpc.Channel, pb_grpc.ChunkServiceStub] | None = None

    def _stub(self) -> pb_grpc.ChunkServiceStub:
        channel = self._channel.get()
        stubs = self._stubs
        if stubs is None or stubs[0] is not channel:
            stubs = self._stubs = (channel, pb_grpc.ChunkServiceStub(channel))
        return stubs[1]

    # -- ChunkStore ------------------------------------------------------------------
    def put_many(self, items: Sequence[tuple[bytes, Buffer, int]],
                 keys: Sequence[ChunkKey] | None = None) -> None:
        """Store (digest, bytes, xxh3) items; ``keys``: their chunk keys, for grants."""
        named = list(zip(items, keys)) if keys is not None else [(item, None) for item in items]
        for batch in put_stream.batches(named, _PUT_BATCH_BYTES, size=lambda e: len(e[0][1])):
            chunks = [(_granted(pb.PutHeader(digest=digest, xxh3=h), key), data)
                      for (digest, data, h), key in batch]
            with _calling(self.where):
                self._stub().Put(put_stream.requests(pb.PutRequest, chunks), timeout=self.timeout_s)

    def start_get(self, digest: bytes, offset: int = 0, length: int = -1,
                  timeout_s: float | None = None, key: ChunkKey | None = None) -> RemoteGet:
        request = _granted(pb.GetRequest(digest=digest, offset=offset), key)
        if length >= 0:
            request.length = length
        with _calling(self.where):
            call = self._stub().Get(request, timeout=timeout_s or self.timeout_s)
        return RemoteGet(call, self.where)

    def get(self, digest: bytes, offset: int = 0, length: int = -1,
            key: ChunkKey | None = None) -> memoryview:
        return self.start_get(digest, offset, length, key=key).result()

    def delete_many(self, digests: Iterable[bytes], keys: Sequence[ChunkKey] | None = None) -> None:
        """Delete chunks; ``keys`` (theirs, in order): under this process's write grants,
        else the caller's token must have the admin right (gc)."""
        digests = list(digests)
        for start in range(0, len(digests), wire.MAX_DELETE):
            request = pb.DeleteRequest(digests=digests[start:start + wire.MAX_DELETE])
            if keys is not None:
                part = keys[start:start + wire.MAX_DELETE]
                request.grants.extend(BOOK.get(k.blob_id) or b"" for k in part)
                request.versions.extend(k.version for k in part)
                request.indexes.extend(k.index for k in part)
            with _calling(self.where):
                self._stub().Delete(request, timeout=self.timeout_s)

    def exists(self, digest: bytes) -> bool:
        return self.stat(digest) is not None

    def stat(self, digest: bytes, key: ChunkKey | None = None) -> tuple[int, int, int] | None:
        """(length, xxh3, written unix seconds), or None if the server lacks the chunk."""
        with _calling(self.where):
            reply = self._stub().Stat(_granted(pb.StatRequest(digest=digest), key), timeout=self.timeout_s)
        return (reply.length, reply.xxh3, reply.written) if reply.exists else None

    def digests(self) -> list[tuple[bytes, int]]:
        with _calling(self.where):
            return [(e.digest, e.written)
                    for reply in self._stub().List(pb.ListRequest(), timeout=self.timeout_s)
                    for e in reply.entries]

    def compact(self, min_dead_ratio: float | None = None,
                timeout_s: float = COMPACT_TIMEOUT_S) -> CompactReport:
        """Have the server give back the space of deleted chunks (``VolumeStore.compact``);
        returns when it has. ``min_dead_ratio`` None: the server's default."""
        request = pb.CompactRequest()
        if min_dead_ratio is not None:
            request.min_dead_ratio = min_dead_ratio
        with _calling(self.where):
            r = self._stub().Compact(request, timeout=timeout_s)
        return CompactReport(volumes=r.volumes, bytes_before=r.bytes_before, bytes_after=r.bytes_after,
                             moved_bytes=r.moved_bytes, skipped=r.skipped,
                             dropped_corrupt=r.dropped_corrupt)

    def close(self) -> None:
        self._stubs = None
        self._channel.close()

    # -- admin -------------------------------------------------------------------------
    def set_faults(self, *, reset: bool = False, **changes: float | bool) -> FaultState:
        """Change some of the server's faults (``reset`` first clears them and the counters)."""
        try:
            update = pb.FaultUpdate(set=wire.profile_to_pb(changes), reset=reset)
        except (ValueError, TypeError) as exc:
            raise InvalidRequest(f"bad fault settings {changes}: {exc}") from None
        with _calling(self.where):
            reply = pb_grpc.ChunkAdminStub(self._channel.get()).SetFaults(update, timeout=self.timeout_s)
        return wire.state_from_pb(reply)

    def fault_state(self) -> FaultState:
        with _calling(self.where):
            reply = pb_grpc.ChunkAdminStub(self._channel.get()).GetFaults(
                pb.GetFaultsRequest(), timeout=self.timeout_s)
        return wire.state_from_pb(reply)

    def health(self) -> str:
        """``SERVING`` or ``NOT_SERVING`` as the standard health service says; raises
        ``TierUnavailable`` when the server cannot be reached."""
        with _calling(self.where):
            reply = health_pb2_grpc.HealthStub(self._channel.get()).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=self.timeout_s)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def __repr__(self) -> str:
        return f"<RemoteChunkStore {self.addr}>"
