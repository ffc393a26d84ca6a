"""Limits and conversions of the cache node protocol (``protos/flash.proto``), shared by the
node (``flash_l3/service.py``) and its client (``rpc/remote_cache.py``).

Get replies carry chunk bytes, and going through protobuf would copy each byte three more
times (into the message, out of it when serialized, and back out when parsed): on the hit
path those copies cost more than reading the flash. So ``GetReplies`` is encoded and
decoded here by hand, with the bytes as views: each reply is its small protobuf head
followed by field 4 (``data``) appended as-is, which is valid protobuf (fields may come in
any order), and what any protobuf encoder writes decodes with ``decode_replies``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import grpc

from blobtier.chunks import Buffer, ChunkKey
from blobtier.errors import InvalidRequest
from blobtier.rpc.gen import flash_pb2 as pb
from blobtier.rpc.server import MAX_PIECE_BYTES

BLOB_ID_BYTES = 16
MAX_ITEMS = 4096  # chunks per Get or Prefetch request
MAX_RECORDS = 4096  # encoded records per request


def key_to_pb(key: ChunkKey) -> pb.ChunkId:
    return pb.ChunkId(blob_id=key.blob_id, version=key.version, index=key.index)


def key_from_pb(msg: pb.ChunkId) -> ChunkKey:
    if len(msg.blob_id) != BLOB_ID_BYTES:
        raise InvalidRequest(f"a blob id is {BLOB_ID_BYTES} bytes, got {len(msg.blob_id)}")
    return ChunkKey(msg.blob_id, msg.version, msg.index)


SERVICE = "blobtier.flash.v1.CacheService"
GET_METHOD = f"/{SERVICE}/Get"
_REPLY_TAG = b"\x0a"  # GetReplies field 1, length-delimited
_DATA_TAG = b"\x22"  # GetReply field 4, length-delimited


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class ReplyBatcher:
    """Packs GetReply parts into GetReplies messages of about ``MAX_PIECE_BYTES``: one
    message per piece of a large chunk, many small chunks per message. Each byte of data is
    copied once, into the message."""

    def __init__(self, limit: int = MAX_PIECE_BYTES) -> None:
        self.limit = limit
        self._parts: list[Buffer] = []
        self._size = 0

    def add(self, head: pb.GetReply | None, data: Buffer = b"") -> bytes | None:
        """Queue one reply (``head``'s fields, none for a continuation, then ``data``);
        returns a message when one is full."""
        prefix = head.SerializeToString() if head is not None else b""
        n = len(data)
        inner = len(prefix) + (1 + len(_varint(n)) + n if n else 0)
        self._parts += [_REPLY_TAG, _varint(inner), prefix]
        if n:
            self._parts += [_DATA_TAG, _varint(n), data]
        self._size += inner
        return self.flush() if self._size >= self.limit else None

    def flush(self) -> bytes | None:
        """The message of everything queued, if anything is."""
        if not self._parts:
            return None
        out = b"".join(self._parts)
        self._parts, self._size = [], 0
        return out


class Reply(NamedTuple):
    item: int | None
    outcome: int
    length: int
    data: memoryview
    detail: str


def decode_replies(raw: bytes) -> Iterator[Reply]:
    """The replies of one GetReplies message, their data as views of ``raw`` (no copy)."""
    for number, value in _fields(memoryview(raw)):
        if number == 1 and isinstance(value, memoryview):
            yield _reply(value)


def _reply(view: memoryview) -> Reply:
    fields = dict(_fields(view))
    detail = fields.get(5)
    return Reply(fields.get(1), fields.get(2, 0), fields.get(3, 0), fields.get(4, view[:0]),
                 bytes(detail).decode("utf-8", "replace") if detail is not None else "")


def _fields(view: memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """(field number, value) of a protobuf message: varints as ints, the length-delimited
    as views; fixed-width fields (none here today) are skipped."""
    pos = 0
    while pos < len(view):
        key, pos = _read_varint(view, pos)
        number, kind = key >> 3, key & 7
        if kind == 0:
            value, pos = _read_varint(view, pos)
            yield number, value
        elif kind == 2:
            n, pos = _read_varint(view, pos)
            if pos + n > len(view):
                raise InvalidRequest("a reply field runs past its end")
            yield number, view[pos:pos + n]
            pos += n
        elif kind in (1, 5):
            pos += 8 if kind == 1 else 4
        else:
            raise InvalidRequest(f"a reply field of wire type {kind}")


def _read_varint(view: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(view) or shift > 63:
            raise InvalidRequest("a reply with a bad varint")
        b = view[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def add_cache_service(servicer: Any, server: grpc.Server) -> None:
    """Register a ``CacheService`` whose Get yields messages already encoded
    (``ReplyBatcher``); Put, Prefetch and Locate go through protobuf as usual."""
    handlers = {
        "Get": grpc.unary_stream_rpc_method_handler(
            servicer.Get, request_deserializer=pb.GetRequest.FromString, response_serializer=None),
        "Put": grpc.stream_unary_rpc_method_handler(
            servicer.Put, request_deserializer=pb.PutRequest.FromString,
            response_serializer=pb.PutReply.SerializeToString),
        "Prefetch": grpc.unary_unary_rpc_method_handler(
            servicer.Prefetch, request_deserializer=pb.PrefetchRequest.FromString,
            response_serializer=pb.PrefetchReply.SerializeToString),
        "Locate": grpc.unary_unary_rpc_method_handler(
            servicer.Locate, request_deserializer=pb.LocateRequest.FromString,
            response_serializer=pb.LocateReply.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


def get_call(channel: grpc.Channel) -> Callable[..., Iterator[bytes]]:
    """The Get method on ``channel``, answering raw messages for ``decode_replies``."""
    return channel.unary_stream(GET_METHOD, request_serializer=pb.GetRequest.SerializeToString,
                                response_deserializer=None)
