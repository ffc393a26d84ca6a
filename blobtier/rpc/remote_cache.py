"""``RemoteChunkCache``: the ``ChunkCache`` protocol over one cache node's gRPC service.

One client for every cache tier reached over the network: the regional flash nodes (L3),
and the peer daemons of L2, which serve the same ``CacheService``; the tier's name is
given by whoever builds it. The node is not trusted (``trusted = False``): the chain
verifies every chunk it returns. Each request carries the grants this process holds for
the chunks it names (``grants.BOOK``), which a node with a grant key requires.

It is a read-through tier (``ReadThroughCache``, see ``blobtier.chunks``): given the
chunks' records, the node reads what it misses from the block layer itself, once however
many clients ask, and answers with it. Any failure of a call (node down, timeout, a status
the client does not expect) raises ``TierUnavailable``, which the chain treats as a miss.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Protocol

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from blobtier import forks
from blobtier.checksum import xxh3
from blobtier.chunks import CORRUPT, Buffer, ChunkKey, ChunkRef, LocatedEntry, Lookup
from blobtier.errors import InvalidRequest, TierUnavailable
from blobtier.grants import BOOK
from blobtier.records import encode
from blobtier.rpc import cache_wire as wire
from blobtier.rpc import put_stream, status
from blobtier.rpc.cache_service import boot_id
from blobtier.rpc.channel import LazyChannel
from blobtier.rpc.gen import flash_pb2 as pb
from blobtier.rpc.gen import flash_pb2_grpc as pb_grpc
from blobtier.rpc.tls import Tls

log = logging.getLogger(__name__)
CALL_BYTES = 32 << 20  # chunk bytes per Get call: a larger batch becomes parallel calls
CALL_ITEMS = 256  # chunks per Get call when their sizes are unknown (no records)
COUNTERS = ("hits", "local_hits", "filled", "misses", "failed", "errors", "corrupt")


@contextmanager
def _calling(where: str) -> Iterator[None]:
    try:
        yield
    except grpc.RpcError as exc:
        err = status.error_of(exc, where)
        if isinstance(err, TierUnavailable):
            raise err from None
        # A cache that cannot answer is skipped, whatever the reason: never fatal to a read.
        raise TierUnavailable(str(err)) from None


class LocalRegions(Protocol):
    """Reads located entries straight from a node's region files (the flash tier's
    ``flash_l3/local_reads.py`` ``RegionReader``, handed in by the wiring: ``rpc`` knows no tier)."""

    directory: str

    def read_many(self, wanted: Sequence[LocatedEntry]) -> list[memoryview | None | object]:
        """Per entry: its bytes (verified when its checksum is given), None when it is
        gone, ``CORRUPT`` when it fails its checksum. Raises ``OSError`` (no access)."""

    def close(self) -> None: ...


class RemoteChunkCache:
    """A ``ChunkCache`` served by the cache node at ``addr`` (``host:port``).

    Args:
        addr: the node.
        name: the tier's name in stats ("l3" for flash nodes, "l2" for peer daemons).
        tls: connect with TLS.
        timeout_s: deadline of each call.
        parallel: Get calls in flight at once for one large batch.
        local_reads: opens a node's region directory for reading (``RegionReader`` of
            ``flash_l3/local_reads.py``): when the node runs on this host, ask it where hits
            lie and read them from its region files instead of over gRPC. None: off.
        token: presented on every call to a node that checks tokens (``rpc/auth.py``).
    """

    trusted = False

    def __init__(self, addr: str, *, name: str = "l3", tls: Tls | None = None, timeout_s: float = 10.0,
                 parallel: int = 2, local_reads: Callable[[str], LocalRegions] | None = None,
                 token: str | None = None) -> None:
        self.addr = addr
        self.name = name
        self.local_reads = local_reads is not None
        self._open_regions = local_reads
        self._regions: LocalRegions | None = None
        self.timeout_s = timeout_s
        self.parallel = parallel
        self.where = f"{name} cache node {addr}"
        self.counters = dict.fromkeys(COUNTERS, 0)
        self._channel = LazyChannel(addr, tls, token)
        self._lock = threading.Lock()
        self._pool = ProcessLocalPool(parallel, f"blobtier-{name}")
        forks.register(self)

    def _stub(self) -> pb_grpc.CacheServiceStub:
        return pb_grpc.CacheServiceStub(self._channel.get())

    def _admin(self) -> pb_grpc.CacheAdminStub:
        return pb_grpc.CacheAdminStub(self._channel.get())

    # -- ChunkCache ------------------------------------------------------------------
    def get_many(self, keys: Sequence[ChunkKey], touch: bool = True) -> dict[ChunkKey, memoryview]:
        """The chunks the node has."""
        return self._lookup(keys, None, touch).found

    def read_through(self, keys: Sequence[ChunkKey], refs: Sequence[ChunkRef],
                     touch: bool = True) -> Lookup:
        """The chunks the node has, and those it reads through from the block layer
        (``refs``: the record and index of each key; ``InvalidRequest`` if they differ
        in number)."""
        if len(refs) != len(keys):
            raise InvalidRequest(f"{len(keys)} keys but {len(refs)} refs")
        BOOK.ensure(rec for rec, _ in refs)  # the grants the requests carry
        return self._lookup(keys, refs, touch)

    def _lookup(self, keys: Sequence[ChunkKey], refs: Sequence[ChunkRef] | None, touch: bool) -> Lookup:
        if not keys:
            return Lookup()
        local = Lookup()
        if self.local_reads:
            keys, refs = self._read_local(keys, refs, touch, local)
            if not keys:
                return local
        found = self._get_remote(keys, refs, touch)
        found.merge(local)
        return found

    def _read_local(self, keys: Sequence[ChunkKey], refs: Sequence[ChunkRef] | None, touch: bool,
                    found: Lookup) -> tuple[Sequence[ChunkKey], Sequence[ChunkRef] | None]:
        """Read what the node locates in its region files into ``found``; return the keys
        (and refs) left for a Get. Turns itself off for good when the node is elsewhere or
        says no."""
        left: list[int] = []
        bad: list[ChunkKey] = []
        for start in range(0, len(keys), CALL_ITEMS):
            part = keys[start:start + CALL_ITEMS]
            request = pb.LocateRequest(keys=[wire.key_to_pb(k) for k in part], touch=touch,
                                       grants=_grants(part))
            try:
                reply = self._stub().Locate(request, timeout=self.timeout_s)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    self.local_reads = False
                    return keys, refs
                self._tally({"errors": 1})
                raise TierUnavailable(str(status.error_of(exc, self.where))) from None
            if not reply.host or reply.host != boot_id():
                self.local_reads = False  # another host: its paths mean nothing here
                return keys, refs
            if self._regions is None or self._regions.directory != reply.dir:
                self._regions = self._open_regions(reply.dir)
            wanted = [(i, LocatedEntry(key, at.slot, at.offset, at.length, at.seq,
                                 None if refs is None else _checksum_of(refs[i])))
                      for i, (key, at) in enumerate(zip(part, reply.locations), start) if at.found]
            left.extend(i for i, at in enumerate(reply.locations, start) if not at.found)
            try:
                # Verified as each entry lands, while its bytes are in the CPU's cache (the
                # chain skips what is verified).
                views = self._regions.read_many([w for _, w in wanted])
            except OSError as exc:  # not ours to read (another user, a container)
                log.info("%s: no local reads (%s)", self.where, exc)
                self.local_reads = False
                left.extend(i for i, _ in wanted)
                left.extend(range(start + len(part), len(keys)))
                break
            for (i, w), view in zip(wanted, views):
                if view is CORRUPT:
                    log.warning("checksum mismatch for chunk %s read from %s's files; refetching it",
                                w.key, self.where)
                    bad.append(w.key)
                    view = None
                if view is None:
                    left.append(i)
                else:
                    found.found[w.key] = view
                    if w.checksum is not None:
                        found.verified.add(w.key)
            if not self.local_reads:
                break
        if bad:  # the node forgets them before the Get below reads them through again
            try:
                self.report_corrupt(bad)
            except TierUnavailable as exc:
                log.debug("%s not told of corrupt chunks: %s", self.where, exc)
        found.corrupt += len(bad)
        self._tally({"hits": len(found.found), "local_hits": len(found.found), "corrupt": len(bad)})
        left.sort()
        return [keys[i] for i in left], None if refs is None else [refs[i] for i in left]

    def _get_remote(self, keys: Sequence[ChunkKey], refs: Sequence[ChunkRef] | None,
                    touch: bool) -> Lookup:
        calls = list(_split(keys, refs))
        if len(calls) == 1:
            return self._get(calls[0][0], calls[0][1], touch)
        found = Lookup()
        for part in self._pool.get().map(lambda c: self._get(c[0], c[1], touch), calls):
            found.merge(part)
        return found

    def get_range(self, key: ChunkKey, offset: int, length: int) -> memoryview | None:
        """``length`` bytes of a cached chunk from ``offset``, or None if it is not cached.
        The bytes are not verified (a range has no checksum of its own)."""
        item = pb.GetItem(key=wire.key_to_pb(key), offset=offset, length=length)
        return self._call(pb.GetRequest(items=[item], touch=True, grants=_grants([key])),
                          [key]).found.get(key)

    def _get(self, keys: Sequence[ChunkKey], refs: Sequence[ChunkRef] | None, touch: bool) -> Lookup:
        request = pb.GetRequest(touch=touch, grants=_grants(keys))
        if refs is None:
            request.items.extend(pb.GetItem(key=wire.key_to_pb(k)) for k in keys)
        else:
            at = _record_positions(refs, request.records, request.keys)
            request.items.extend(pb.GetItem(key=wire.key_to_pb(k), record=r) for k, r in zip(keys, at))
        return self._call(request, keys)

    def _call(self, request: pb.GetRequest, keys: Sequence[ChunkKey]) -> Lookup:
        try:
            with _calling(self.where):
                found, failed = _collect(wire.get_call(self._channel.get())(request, timeout=self.timeout_s),
                                         keys, self.where)
        except TierUnavailable:
            self._tally({"errors": 1})
            raise
        self._tally({"hits": len(found.found) - len(found.filled), "filled": len(found.filled),
                     "failed": failed, "misses": len(keys) - len(found.found)})
        return found

    def put(self, key: ChunkKey, data: Buffer, touch: bool = True) -> bool:
        """Offer a chunk; True if the node admitted it."""
        return self.put_many([(key, data)], touch)[0] > 0

    def put_many(self, items: Sequence[tuple[ChunkKey, Buffer]], touch: bool = True) -> tuple[int, int]:
        """Offer chunks; returns (admitted, rejected) as the node decided."""
        admitted = rejected = 0
        for batch in put_stream.batches(items, put_stream.MAX_PUT_BYTES):
            chunks = ((pb.PutHeader(key=wire.key_to_pb(key), xxh3=xxh3(data), touch=touch,
                                    grant=BOOK.get(key.blob_id) or b""), data)
                      for key, data in batch)  # hashed as it is sent
            with _calling(self.where):
                reply = self._stub().Put(put_stream.requests(pb.PutRequest, chunks), timeout=self.timeout_s)
            admitted += reply.admitted
            rejected += reply.rejected
        return admitted, rejected

    def contains(self, key: ChunkKey) -> bool:
        item = pb.GetItem(key=wire.key_to_pb(key), offset=0, length=0)
        with _calling(self.where):
            request = pb.GetRequest(items=[item], grants=_grants([key]))
            replies = list(wire.get_call(self._channel.get())(request, timeout=self.timeout_s))
            answers = list(_replies(iter(replies), self.where))
        return bool(answers) and answers[0].outcome == pb.HIT

    def prefetch(self, refs: Sequence[ChunkRef]) -> dict[str, int]:
        """Have the node read chunks from the block layer into its cache; returns how many
        were cached already, fetched, rejected and failed."""
        BOOK.ensure(rec for rec, _ in refs)
        request = pb.PrefetchRequest(grants=_grants([rec.chunk_key(i) for rec, i in refs]))
        at = _record_positions(refs, request.records, request.keys)
        request.items.extend(pb.PrefetchItem(record=r, index=i) for (_, i), r in zip(refs, at))
        with _calling(self.where):
            reply = self._stub().Prefetch(request, timeout=self.timeout_s)
        return {"cached": reply.cached, "fetched": reply.fetched, "rejected": reply.rejected,
                "failed": reply.failed}

    # -- admin -----------------------------------------------------------------------
    def stats(self) -> dict[str, float]:
        with _calling(self.where):
            return dict(self._admin().Stats(pb.StatsRequest(), timeout=self.timeout_s).counters)

    def report_corrupt(self, keys: Sequence[ChunkKey]) -> None:
        """Chunks from this node failed their checksum: the node forgets them, so the next
        read fetches them again (a hit read from its files locally is not checked there)."""
        self.drop(keys)

    def drop(self, keys: Sequence[ChunkKey] = (), everything: bool = False) -> int:
        request = pb.DropRequest(keys=[wire.key_to_pb(k) for k in keys], all=everything)
        with _calling(self.where):
            return self._admin().Drop(request, timeout=self.timeout_s).dropped

    def resize(self, capacity_bytes: int) -> dict[str, float]:
        if isinstance(capacity_bytes, bool) or not isinstance(capacity_bytes, int) or capacity_bytes < 0:
            raise InvalidRequest(f"capacity_bytes must be a byte count, got {capacity_bytes!r:.40}")
        with _calling(self.where):
            reply = self._admin().Resize(pb.ResizeRequest(capacity_bytes=capacity_bytes),
                                         timeout=self.timeout_s)
        return dict(reply.counters)

    def health(self) -> str:
        """``SERVING`` or ``NOT_SERVING``; raises ``TierUnavailable`` if the node is unreachable."""
        with _calling(self.where):
            reply = health_pb2_grpc.HealthStub(self._channel.get()).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=self.timeout_s)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    # -- plumbing --------------------------------------------------------------------
    def _tally(self, changes: dict[str, int]) -> None:
        with self._lock:
            for name, n in changes.items():
                self.counters[name] += n

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # a parent thread may have held it across fork

    def close(self) -> None:
        self._pool.close()
        self._channel.close()
        if self._regions is not None:
            self._regions.close()

    def __repr__(self) -> str:
        return f"<RemoteChunkCache {self.name} {self.addr}>"


class ProcessLocalPool:
    """A thread pool made on first use in each process: threads do not survive ``fork``, so
    a DataLoader worker that inherits one makes its own."""

    def __init__(self, workers: int, prefix: str) -> None:
        self.workers = workers
        self.prefix = prefix
        self._lock = threading.Lock()
        self._pool: tuple[int, ThreadPoolExecutor] | None = None
        forks.register(self)

    def get(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None or self._pool[0] != os.getpid():
                self._pool = (os.getpid(), ThreadPoolExecutor(self.workers, thread_name_prefix=self.prefix))
            return self._pool[1]

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None and pool[0] == os.getpid():
            pool[1].shutdown(wait=True)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # a parent thread may have held it across fork
        # Its threads are not here: the next ``get`` makes this process's pool.
        forks.keep_inherited(self._pool)
        self._pool = None


def _grants(keys: Sequence[ChunkKey]) -> list[bytes]:
    """The grants this process holds for the blobs of ``keys`` (``grants.BOOK``), each once:
    a node with a grant key serves only chunks they cover."""
    return BOOK.many(k.blob_id for k in keys)


def _checksum_of(ref: ChunkRef) -> tuple[str, int]:
    rec, index = ref
    return rec.checksum_algo, rec.checksums[index]


def _record_positions(refs: Sequence[ChunkRef], records: Any, keys: Any) -> list[int]:
    """Each ref's position in ``records`` (a request's repeated field), to which every
    record is appended once, encoded: the chunks of one blob share it; its key goes to
    ``keys`` (the node files the chunks under its namespace)."""
    position: dict[int, int] = {}
    out = []
    for rec, _ in refs:
        at = position.get(id(rec))
        if at is None:
            at = position[id(rec)] = len(records)
            records.append(encode(rec))
            keys.append(rec.key)
        out.append(at)
    return out


def _split(keys: Sequence[ChunkKey], refs: Sequence[ChunkRef] | None):
    """Calls of at most ``CALL_BYTES`` (or ``CALL_ITEMS`` when sizes are unknown)."""
    if refs is not None and len(refs) != len(keys):
        raise InvalidRequest(f"{len(keys)} keys but {len(refs)} refs")
    start, size = 0, 0
    limit = min(CALL_ITEMS if refs is None else wire.MAX_ITEMS, wire.MAX_ITEMS)
    for i in range(len(keys)):
        n = refs[i][0].chunk_range(refs[i][1])[1] if refs is not None else 0
        if i > start and (size + n > CALL_BYTES or i - start >= limit):
            yield keys[start:i], refs[start:i] if refs is not None else None
            start, size = i, 0
        size += n
    yield keys[start:], refs[start:] if refs is not None else None


def _collect(replies: Iterator[bytes], keys: Sequence[ChunkKey], where: str) -> tuple[Lookup, int]:
    """Assemble the chunks of one Get stream (zero-copy when a chunk came in one piece);
    returns them with how many the node failed to read through."""
    answer = Lookup()
    found, failed = answer.found, 0
    key: ChunkKey | None = None
    buf: np.ndarray | None = None
    filled = 0
    for reply in _replies(replies, where):
        if reply.item is not None:
            _finish(found, key, buf, filled, where)
            key, buf, filled = None, None, 0
            if reply.item >= len(keys):
                raise TierUnavailable(f"{where}: answer for item {reply.item} of {len(keys)}")
            if reply.outcome == pb.FAILED:
                failed += 1
            if reply.outcome not in (pb.HIT, pb.FILLED):
                continue
            if reply.outcome == pb.FILLED:
                answer.filled.add(keys[reply.item])
            if len(reply.data) == reply.length:
                found[keys[reply.item]] = reply.data.toreadonly()
                continue
            key, buf = keys[reply.item], np.empty(reply.length, np.uint8)  # no zero-fill pass
            buf[:len(reply.data)] = reply.data
            filled = len(reply.data)
        elif buf is not None and filled + len(reply.data) <= len(buf):
            buf[filled:filled + len(reply.data)] = reply.data
            filled += len(reply.data)
        else:
            raise TierUnavailable(f"{where}: data with no chunk to go to")
    _finish(found, key, buf, filled, where)
    return answer, failed


def _replies(messages: Iterator[bytes], where: str) -> Iterator[wire.Reply]:
    try:
        for raw in messages:
            yield from wire.decode_replies(raw)
    except InvalidRequest as exc:  # a malformed answer: the node is not fit to be asked
        raise TierUnavailable(f"{where}: {exc}") from None


def _finish(found: dict, key: ChunkKey | None, buf: np.ndarray | None, filled: int, where: str) -> None:
    if key is None or buf is None:
        return
    if filled != len(buf):
        raise TierUnavailable(f"{where}: chunk {key} ended after {filled} of {len(buf)} bytes")
    found[key] = memoryview(buf).toreadonly()

