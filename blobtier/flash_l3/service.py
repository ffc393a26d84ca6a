"""A flash cache node: a ``FlashCache`` behind gRPC, reading misses through from the block layer.

``FlashNode(root, capacity, source)`` starts serving at once (loopback, a free port unless
told) and runs until ``stop()``, which writes the index snapshot. It serves
``CacheService`` (streamed, ranged, batched Get; Put; Prefetch), ``CacheAdmin`` (Stats,
Drop, Resize) and the standard ``grpc.health.v1`` service; optionally its Prometheus
series on ``127.0.0.1:metrics_port``. The node is handed its ``ChunkSource`` (the block
layer) by whoever starts it, so this package never imports the block layer. A bad request
gets its status code and the node keeps serving.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
from prometheus_client import CollectorRegistry

from blobtier.checksum import xxh3
from blobtier.chunks import ChunkKey, ChunkRef, ChunkSource
from blobtier.errors import BlobtierError, ChecksumError, InvalidRequest, OutOfRange
from blobtier.flash_l3.admission import AdmissionPolicy
from blobtier.flash_l3.cache import DEFAULT_REGION_SIZE, FlashCache
from blobtier.flash_l3.device import DeviceFaults
from blobtier.flash_l3.metrics import FlashMetrics
from blobtier.flash_l3.readthrough import FAILED, FILLED, HIT, Answer, ReadThrough
from blobtier.metadata.schema import BlobRecord, decode
from blobtier.rpc import cache_wire as wire
from blobtier.rpc import status
from blobtier.rpc.gen import flash_pb2 as pb
from blobtier.rpc.gen import flash_pb2_grpc as pb_grpc
from blobtier.rpc.server import MAX_PIECE_BYTES, health_servicer, serve
from blobtier.rpc.tls import Tls

log = logging.getLogger(__name__)
SERVICES = ("blobtier.flash.v1.CacheService", "blobtier.flash.v1.CacheAdmin")
MISS = "miss"
_OUTCOME = {HIT: pb.HIT, FILLED: pb.FILLED, FAILED: pb.FAILED, MISS: pb.MISS}


@contextmanager
def _answering(context: grpc.ServicerContext) -> Iterator[None]:
    """Turn blobtier errors into their status codes (see ``rpc/status.py``)."""
    try:
        yield
    except (BlobtierError, OSError) as exc:
        status.abort(context, exc)


def _records(raw: list[bytes]) -> list[BlobRecord]:
    if len(raw) > wire.MAX_RECORDS:
        raise InvalidRequest(f"at most {wire.MAX_RECORDS} records per request")
    return [decode(r) for r in raw]


def _ref(records: list[BlobRecord], record: int, index: int) -> ChunkRef:
    if record >= len(records):
        raise InvalidRequest(f"item names record {record} of {len(records)}")
    rec = records[record]
    if index >= rec.n_chunks:
        raise InvalidRequest(f"chunk {index} of a blob of {rec.n_chunks} chunks")
    return rec, index


def _answer(out: wire.ReplyBatcher, item: int, answer: Answer, req: pb.GetItem) -> Iterator[bytes]:
    """Queue one item's replies (a first one naming it, with the first piece, then the
    rest); yield the messages that fill up."""
    if answer.data is None:
        detail = str(answer.error) if answer.error is not None else ""
        head = pb.GetReply(item=item, outcome=_OUTCOME.get(answer.outcome, pb.MISS), detail=detail)
        if (msg := out.add(head)) is not None:
            yield msg
        return
    data = answer.data
    size = len(data)
    length = req.length if req.HasField("length") else size - req.offset
    if req.offset < 0 or length < 0 or req.offset + length > size:
        raise OutOfRange(f"range {req.offset}+{length} outside a chunk of {size} bytes")
    view = data[req.offset:req.offset + length]
    head = pb.GetReply(item=item, outcome=_OUTCOME[answer.outcome], length=length)
    for pos in range(0, max(length, 1), MAX_PIECE_BYTES):
        if (msg := out.add(head if pos == 0 else None, view[pos:pos + MAX_PIECE_BYTES])) is not None:
            yield msg


class CacheServicer(pb_grpc.CacheServiceServicer):
    def __init__(self, readthrough: ReadThrough) -> None:
        self.readthrough = readthrough
        self.cache = readthrough.cache

    def Get(self, request: pb.GetRequest, context: grpc.ServicerContext) -> Iterator[bytes]:
        with _answering(context):
            if len(request.items) > wire.MAX_ITEMS:
                raise InvalidRequest(f"at most {wire.MAX_ITEMS} chunks per Get")
            records = _records(list(request.records))
            keys = [wire.key_from_pb(item.key) for item in request.items]
            refs = {i: self._checked_ref(records, item, key)  # a bad request fails before any answer
                    for i, (item, key) in enumerate(zip(request.items, keys)) if item.HasField("record")}
            out = wire.ReplyBatcher()
            through: list[int] = []
            # Hits are streamed as they are read; misses with a record are read through
            # afterwards, in one batch that the block layer reads in parallel.
            for i, (item, key) in enumerate(zip(request.items, keys)):
                view = self.cache.get(key, request.touch)
                if view is not None:
                    yield from _answer(out, i, Answer(HIT, view), item)
                elif i in refs:
                    through.append(i)
                else:
                    yield from _answer(out, i, Answer(MISS, None), item)
            if through:
                if (msg := out.flush()) is not None:
                    yield msg  # the hits go out before the wait for the block layer
                answers = self.readthrough.fill([refs[i] for i in through], request.touch)
                for i, answer in zip(through, answers):
                    yield from _answer(out, i, answer, request.items[i])
            if (msg := out.flush()) is not None:
                yield msg

    @staticmethod
    def _checked_ref(records: list[BlobRecord], item: pb.GetItem, key: ChunkKey) -> ChunkRef:
        rec, index = _ref(records, item.record, key.index)
        if rec.chunk_key(index) != key:
            raise InvalidRequest(f"chunk {key} is not a chunk of the record it names")
        return rec, index

    def Put(self, request_iterator: Iterator[pb.PutRequest], context: grpc.ServicerContext) -> pb.PutReply:
        with _answering(context):
            admitted = rejected = 0
            for key, data, h, touch in _received(request_iterator):
                if xxh3(data) != h:  # damaged on the way: never cache it
                    raise ChecksumError(f"chunk {key} arrived with the wrong xxh3")
                if self.cache.put(key, data, touch):
                    admitted += 1
                else:
                    rejected += 1
            return pb.PutReply(admitted=admitted, rejected=rejected)

    def Prefetch(self, request: pb.PrefetchRequest, context: grpc.ServicerContext) -> pb.PrefetchReply:
        with _answering(context):
            if len(request.items) > wire.MAX_ITEMS:
                raise InvalidRequest(f"at most {wire.MAX_ITEMS} chunks per Prefetch")
            records = _records(list(request.records))
            refs = [_ref(records, item.record, item.index) for item in request.items]
            reply = pb.PrefetchReply()
            todo = []
            for ref in refs:
                if self.cache.contains(ref[0].chunk_key(ref[1])):
                    reply.cached += 1
                else:
                    todo.append(ref)
            for ref, answer in zip(todo, self.readthrough.fill(todo, touch=False, force=True)):
                if answer.outcome == FAILED:
                    reply.failed += 1
                elif self.cache.contains(ref[0].chunk_key(ref[1])):
                    reply.fetched += 1
                else:
                    reply.rejected += 1
            return reply


def _received(requests: Iterator[pb.PutRequest]) -> Iterator[tuple[ChunkKey, bytearray, int, bool]]:
    """The chunks of one Put stream, checked piece by piece."""
    head: pb.PutHeader | None = None
    buf, filled, total = bytearray(), 0, 0
    for req in requests:
        part = req.WhichOneof("part")
        if part == "header":
            if head is not None:
                yield _whole(head, buf, filled)
            head = req.header
            if head.length > wire.MAX_CHUNK_BYTES:
                raise InvalidRequest(f"chunk of {head.length} bytes exceeds {wire.MAX_CHUNK_BYTES}")
            total += head.length
            if total > wire.MAX_PUT_BYTES:
                raise InvalidRequest(f"one Put carries at most {wire.MAX_PUT_BYTES} bytes")
            buf, filled = bytearray(head.length), 0
        elif part == "data":
            n = len(req.data)
            if head is None:
                raise InvalidRequest("chunk data before any header")
            if n > MAX_PIECE_BYTES or filled + n > len(buf):
                raise InvalidRequest(f"chunk data overruns its {len(buf)} bytes or the piece limit")
            buf[filled:filled + n] = req.data
            filled += n
        else:
            raise InvalidRequest("a PutRequest must carry a header or data")
    if head is not None:
        yield _whole(head, buf, filled)


def _whole(head: pb.PutHeader, buf: bytearray, filled: int) -> tuple[ChunkKey, bytearray, int, bool]:
    if filled != len(buf):
        raise InvalidRequest(f"chunk ended after {filled} of {len(buf)} bytes")
    return wire.key_from_pb(head.key), buf, head.xxh3, head.touch


class AdminServicer(pb_grpc.CacheAdminServicer):
    def __init__(self, node_id: int, cache: FlashCache, readthrough: ReadThrough) -> None:
        self.node_id = node_id
        self.cache = cache
        self.readthrough = readthrough

    def Stats(self, request: pb.StatsRequest, context: grpc.ServicerContext) -> pb.StatsReply:
        with _answering(context):
            counters = self.cache.stats()
            counters.update(self.readthrough.counters)
            return pb.StatsReply(node_id=self.node_id, counters=counters)

    def Drop(self, request: pb.DropRequest, context: grpc.ServicerContext) -> pb.DropReply:
        with _answering(context):
            if request.all:
                return pb.DropReply(dropped=self.cache.drop_all())
            return pb.DropReply(dropped=self.cache.drop([wire.key_from_pb(k) for k in request.keys]))

    def Resize(self, request: pb.ResizeRequest, context: grpc.ServicerContext) -> pb.StatsReply:
        with _answering(context):
            log.info("flash node %d: capacity %d -> %d", self.node_id, self.cache.capacity,
                     request.capacity_bytes)
            self.cache.resize(request.capacity_bytes)
            return self.Stats(pb.StatsRequest(), context)


class FlashNode:
    """A running flash cache node over the directory ``root``.

    Args:
        root: the node's cache directory (created if missing); a warm restart reopens it.
        capacity: most bytes of region files.
        source: where misses are read from (the block layer); the caller closes it.
        addr: where to listen; loopback and a free port by default.
        node_id: reported by Stats and in logs.
        region_size: bytes per region file.
        admission: which offered chunks are written (default: all).
        reinsert_hits: keep entries read this often when their region is reclaimed (0: off).
        tls: serve TLS with these certificates.
        workers: requests served at once.
        metrics_port: serve Prometheus series on 127.0.0.1:PORT (0 picks one; None: off).
        registry: where the series go (default: a registry of this node's own).
        faults: failures to inject into the device (fault tests).
    """

    def __init__(self, root: str, capacity: int, source: ChunkSource, *, addr: str = "127.0.0.1:0",
                 node_id: int = 0, region_size: int = DEFAULT_REGION_SIZE,
                 admission: AdmissionPolicy | None = None, reinsert_hits: int = 0,
                 tls: Tls | None = None, workers: int = 32, metrics_port: int | None = None,
                 registry: CollectorRegistry | None = None, faults: DeviceFaults | None = None) -> None:
        self.root = root
        self.node_id = node_id
        self.cache = FlashCache(root, capacity, region_size=region_size, admission=admission,
                                reinsert_hits=reinsert_hits, faults=faults)
        self.metrics = FlashMetrics(self.cache, registry if registry is not None else CollectorRegistry())
        self.readthrough = ReadThrough(self.cache, source, on_fill=self.metrics.observe_fill)
        self.metrics.track(self.readthrough)
        self._http = None
        self.metrics_port: int | None = None
        _, health = health_servicer(SERVICES)
        try:
            self.server, self.port = serve(
                [(wire.add_cache_service, CacheServicer(self.readthrough)),
                 (pb_grpc.add_CacheAdminServicer_to_server, AdminServicer(node_id, self.cache,
                                                                          self.readthrough)),
                 health], addr, tls, max_workers=workers)
            if metrics_port is not None:
                from prometheus_client import start_http_server

                self._http, _ = start_http_server(metrics_port, addr="127.0.0.1",
                                                  registry=self.metrics.registry)
                self.metrics_port = self._http.server_port
        except BaseException:
            self.cache.close()
            raise
        self.host = addr.rsplit(":", 1)[0]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def wait(self) -> None:
        self.server.wait_for_termination()

    def stop(self, grace_s: float | None = None) -> None:
        """Stop serving (in-flight calls get ``grace_s``), then snapshot and close the cache."""
        self.server.stop(grace_s).wait()
        if self._http is not None:
            self._http.shutdown()
            self._http = None
        self.cache.close()

    def __enter__(self) -> FlashNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<FlashNode {self.node_id} {self.address} root={self.root!r}>"
