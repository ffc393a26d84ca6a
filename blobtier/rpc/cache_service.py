"""Serving a chunk cache over ``CacheService`` (rpc/protos/flash.proto), for any tier.

The regional flash nodes (L3) and the host daemons' peer service (L2) answer the same
calls, so one client (``RemoteChunkCache``) reads both. A served cache needs three
methods: ``get(key, touch)`` (a buffer that stays valid while it is referenced, or None),
``put(key, data, touch)`` (True if admitted) and ``contains(key)``. A node that reads its
misses through from the block layer also passes a ``ReadThrough``-like object (``fill``);
without one, a miss is a MISS and Prefetch is not served. A cache whose chunks lie in
files a client on the same host may read itself has ``locate(keys, touch)`` (Locate).

A request's records are the caller's word: the filler's ``check`` refuses the whole call
(PERMISSION_DENIED) before anything is served if one names a place the node does not read
from. What goes back never describes data the caller could not read: a chunk that could
not be read through says only what kind of failure it was, never the checksums, tags,
sizes or paths in the error behind it.

With a grant key ring (``grants``) every chunk a call names (Get, Put, Prefetch, Locate)
must be covered by a grant in the request (``blobtier/grants.py``), checked once per
call before anything is served: a blob id learnt some other way reads nothing. The
verified grants go into this process's ``grants.BOOK``, where the node's own block
client finds them when it reads a miss through from chunk servers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple, Protocol

import grpc

from blobtier.chunks import Buffer, ChunkKey, ChunkRef
from blobtier.errors import InvalidRequest, OutOfRange
from blobtier.grants import BOOK, READ, GrantCheck, KeyRing
from blobtier.records import BlobRecord, decode
from blobtier.rpc import cache_wire as wire
from blobtier.rpc import put_stream
from blobtier.rpc.auth import TokenTable, caller
from blobtier.rpc.gen import flash_pb2 as pb
from blobtier.rpc.gen import flash_pb2_grpc as pb_grpc
from blobtier.rpc.server import MAX_PIECE_BYTES
from blobtier.rpc.status import answering

HIT, FILLED, FAILED, MISS = "hit", "filled", "failed", "miss"
_BOOT_ID: str | None = None


def boot_id() -> str:
    """This kernel's boot id: equal on both ends of a call only when they share a host."""
    global _BOOT_ID
    if _BOOT_ID is None:
        try:
            with open("/proc/sys/kernel/random/boot_id") as f:
                _BOOT_ID = f.read().strip()
        except OSError:
            _BOOT_ID = ""  # unknown: short-circuit reads are never offered or used
    return _BOOT_ID
_OUTCOME = {HIT: pb.HIT, FILLED: pb.FILLED, FAILED: pb.FAILED, MISS: pb.MISS}


class Answer(NamedTuple):
    outcome: str  # HIT, FILLED, FAILED or MISS
    data: Buffer | None
    error: BaseException | None = None


class ServedCache(Protocol):
    def get(self, key: ChunkKey, touch: bool = True) -> Buffer | None: ...

    def put(self, key: ChunkKey, data: Buffer, touch: bool = True) -> bool: ...

    def contains(self, key: ChunkKey) -> bool: ...


class Filler(Protocol):
    def check(self, refs: Sequence[ChunkRef]) -> None:
        """Raise ``Forbidden`` unless the node may read every one of these chunks."""

    def fill(self, refs: Sequence[ChunkRef], touch: bool = True, force: bool = False) -> list[Answer]: ...


def failure_detail(error: BaseException | None) -> str:
    """What a caller is told of a failed read-through: the kind of failure only. The
    message may hold checksums, an origin's tag or size, or a server's paths."""
    return type(error).__name__ if error is not None else ""


def _key(header: pb.PutHeader) -> ChunkKey:
    return wire.key_from_pb(header.key)


def _records(raw: list[bytes], keys: Sequence[str] = ()) -> list[BlobRecord]:
    """The request's records, each with the key the caller names for it (its namespace
    rules the chunks a node reads through: shares); ``keys`` empty: none named."""
    if len(raw) > wire.MAX_RECORDS:
        raise InvalidRequest(f"at most {wire.MAX_RECORDS} records per request")
    if keys and len(keys) != len(raw):
        raise InvalidRequest(f"{len(keys)} keys for {len(raw)} records")
    records = [decode(r) for r in raw]
    for rec, key in zip(records, keys):
        rec.key = key
    return records


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
        head = pb.GetReply(item=item, outcome=_OUTCOME.get(answer.outcome, pb.MISS),
                           detail=failure_detail(answer.error))
        if (msg := out.add(head)) is not None:
            yield msg
        return
    data = answer.data
    size = len(data)
    length = req.length if req.HasField("length") else size - req.offset
    if req.offset < 0 or length < 0 or req.offset + length > size:
        raise OutOfRange(f"range {req.offset}+{length} is outside the chunk")
    view = data[req.offset:req.offset + length]
    head = pb.GetReply(item=item, outcome=_OUTCOME[answer.outcome], length=length)
    for pos in range(0, max(length, 1), MAX_PIECE_BYTES):
        if (msg := out.add(head if pos == 0 else None, view[pos:pos + MAX_PIECE_BYTES])) is not None:
            yield msg


class CacheServicer(pb_grpc.CacheServiceServicer):
    def __init__(self, cache: ServedCache, readthrough: Filler | None = None,
                 grants: KeyRing | None = None, auth: TokenTable | None = None) -> None:
        self.cache = cache
        self.readthrough = readthrough
        self.check = GrantCheck(grants)
        self.auth = auth

    def _granted(self, context: grpc.ServicerContext, raws: Sequence[bytes],
                 keys: Sequence[ChunkKey]) -> None:
        """Forbidden unless ``raws`` cover every key (and the caller's token reads their
        namespaces); keep them for reading through."""
        if not self.check.on:
            return
        bearer = caller(self.auth, context)
        for grant in self.check.covered(raws, ((k.blob_id, k.version) for k in keys), READ, bearer):
            BOOK.add(grant.raw)

    def Get(self, request: pb.GetRequest, context: grpc.ServicerContext) -> Iterator[bytes]:
        with answering(context):
            if len(request.items) > wire.MAX_ITEMS:
                raise InvalidRequest(f"at most {wire.MAX_ITEMS} chunks per Get")
            records = _records(list(request.records), request.keys)
            keys = [wire.key_from_pb(item.key) for item in request.items]
            self._granted(context, request.grants, keys)
            refs = {i: self._checked_ref(records, item, key)  # a bad request fails before any answer
                    for i, (item, key) in enumerate(zip(request.items, keys)) if item.HasField("record")}
            if refs and self.readthrough is not None:
                self.readthrough.check(list(refs.values()))  # Forbidden before any answer
            out = wire.ReplyBatcher()
            through: list[int] = []
            # Hits are streamed as they are read; misses with a record are read through
            # afterwards, in one batch that the block layer reads in parallel.
            for i, (item, key) in enumerate(zip(request.items, keys)):
                view = self.cache.get(key, request.touch)
                if view is not None:
                    yield from _answer(out, i, Answer(HIT, view), item)
                elif i in refs and self.readthrough is not None:
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
        with answering(context):
            admitted = rejected = 0
            # Each chunk is offered as soon as it arrived whole and checked.
            for key, head, data in put_stream.receive(request_iterator, _key):
                self._granted(context, [head.grant], [key])
                if self.cache.put(key, data, head.touch):
                    admitted += 1
                else:
                    rejected += 1
            return pb.PutReply(admitted=admitted, rejected=rejected)

    def Locate(self, request: pb.LocateRequest, context: grpc.ServicerContext) -> pb.LocateReply:
        locate = getattr(self.cache, "locate", None)
        if locate is None or not boot_id():
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "this cache node offers no local reads")
        with answering(context):
            if len(request.keys) > wire.MAX_ITEMS:
                raise InvalidRequest(f"at most {wire.MAX_ITEMS} chunks per Locate")
            keys = [wire.key_from_pb(k) for k in request.keys]
            self._granted(context, request.grants, keys)
            where, entries = locate(keys, request.touch)
            reply = pb.LocateReply(host=boot_id(), dir=where)
            for e in entries:
                reply.locations.add(found=e is not None, **({} if e is None else {
                    "slot": e.slot, "offset": e.offset, "length": e.length, "seq": e.seq}))
            return reply

    def Prefetch(self, request: pb.PrefetchRequest, context: grpc.ServicerContext) -> pb.PrefetchReply:
        if self.readthrough is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "this cache node reads nothing through")
        with answering(context):
            if len(request.items) > wire.MAX_ITEMS:
                raise InvalidRequest(f"at most {wire.MAX_ITEMS} chunks per Prefetch")
            records = _records(list(request.records), request.keys)
            refs = [_ref(records, item.record, item.index) for item in request.items]
            self._granted(context, request.grants, [rec.chunk_key(i) for rec, i in refs])
            self.readthrough.check(refs)
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
