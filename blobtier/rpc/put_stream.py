"""The chunked Put stream, both ends, for every service that is sent chunks.

The chunk servers (``protos/block.proto``) and the cache nodes (``protos/flash.proto``)
take chunks the same way: per chunk, one ``PutRequest`` carrying a ``header`` (the chunk's
name, its ``length`` and the ``xxh3`` of its bytes), then its bytes in ``data`` pieces of at
most ``MAX_PIECE_BYTES`` (none for an empty chunk). The protos differ only in how a header
names its chunk, so both ends here take the message classes and a function for the name.

A receiver checks the stream piece by piece: nothing is buffered beyond the lengths the
headers announce, within ``Limits``; a chunk is handed on only once all its bytes arrived
and match its xxh3.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from blobtier.checksum import xxh3
from blobtier.chunks import Buffer
from blobtier.errors import ChecksumError, InvalidRequest
from blobtier.rpc.server import MAX_PIECE_BYTES

MAX_CHUNK_BYTES = 64 << 20
"""The largest chunk size a client may configure."""
MAX_PUT_BYTES = 128 << 20
"""Bytes one Put stream may carry: a server holds a stream's chunks until they are stored."""

T = TypeVar("T")
N = TypeVar("N")


@dataclass(frozen=True)
class Limits:
    """What a receiver accepts, in bytes."""

    chunk_bytes: int = MAX_CHUNK_BYTES  # one chunk
    put_bytes: int = MAX_PUT_BYTES  # one stream, all chunks together
    piece_bytes: int = MAX_PIECE_BYTES  # one data message


DEFAULT_LIMITS = Limits()

# -- the sending end --------------------------------------------------------------------

def _data_bytes(item: Any) -> int:
    return len(item[1])


def batches(items: Sequence[T], limit_bytes: int,
            size: Callable[[T], int] = _data_bytes) -> Iterator[list[T]]:
    """``items`` in order, in runs of at most ``limit_bytes`` by ``size`` (default: the
    length of each item's second field, its data); an item larger than that goes alone."""
    batch: list[T] = []
    total = 0
    for item in items:
        n = size(item)
        if batch and total + n > limit_bytes:
            yield batch
            batch, total = [], 0
        batch.append(item)
        total += n
    if batch:
        yield batch


def requests(request: Callable[..., T], chunks: Iterable[tuple[Any, Buffer]],
             piece_bytes: int = MAX_PIECE_BYTES) -> Iterator[T]:
    """The messages of one Put: for each ``(header, data)``, ``request(header=header)``
    with the header's ``length`` set to the data's, then ``request(data=piece)`` for each
    piece of at most ``piece_bytes`` bytes. The header's other fields are the caller's."""
    for header, data in chunks:
        view = memoryview(data).cast("B")
        header.length = len(view)
        yield request(header=header)
        for pos in range(0, len(view), piece_bytes):
            yield request(data=bytes(view[pos:pos + piece_bytes]))


# -- the receiving end ------------------------------------------------------------------

def receive(messages: Iterable[Any], name: Callable[[Any], N], limits: Limits = DEFAULT_LIMITS, *,
            pace: Callable[[int], bool] | None = None) -> Iterator[tuple[N, Any, bytearray]]:
    """Each chunk of one Put stream as ``(name(header), header, bytes)``, as soon as all its
    bytes arrived and match the header's xxh3. ``name`` checks a header's name of the
    chunk (raising ``InvalidRequest``) before any of its bytes are taken. ``pace(n)`` is
    called before each data piece of ``n`` bytes is taken; when it returns False the
    stream ends there, with nothing more yielded (the call was cancelled).

    Raises:
        InvalidRequest: a malformed stream (data before a header, an empty message, a
            piece, chunk or stream over ``limits``, a chunk with more or fewer bytes than
            its header announced).
        ChecksumError: a chunk's bytes do not match its xxh3 (damaged on the way).
    """
    current: tuple[N, Any, bytearray] | None = None
    filled = total = 0
    for msg in messages:
        part = msg.WhichOneof("part")
        if part == "header":
            if current is not None:
                yield _whole(current, filled)
            header = msg.header
            chunk = name(header)
            total += _announced(header.length, total, limits)
            current, filled = (chunk, header, bytearray(header.length)), 0
        elif part == "data":
            n = len(msg.data)
            _check_piece(current, filled, n, limits)
            if pace is not None and not pace(n):
                return
            current[2][filled:filled + n] = msg.data  # type: ignore[index]
            filled += n
        else:
            raise InvalidRequest("a PutRequest must carry a header or data")
    if current is not None:
        yield _whole(current, filled)


def _announced(length: int, total: int, limits: Limits) -> int:
    if length > limits.chunk_bytes:
        raise InvalidRequest(f"chunk of {length} bytes exceeds {limits.chunk_bytes}")
    if total + length > limits.put_bytes:
        raise InvalidRequest(f"one Put carries at most {limits.put_bytes} bytes")
    return length


def _check_piece(current: tuple[Any, Any, bytearray] | None, filled: int, n: int,
                 limits: Limits) -> None:
    if current is None:
        raise InvalidRequest("chunk data before any header")
    if n > limits.piece_bytes:
        raise InvalidRequest(f"a data piece is at most {limits.piece_bytes} bytes, got {n}")
    if filled + n > len(current[2]):
        raise InvalidRequest(f"chunk {_shown(current[0])} got more than its {len(current[2])} bytes")


def _whole(current: tuple[N, Any, bytearray], filled: int) -> tuple[N, Any, bytearray]:
    chunk, header, buf = current
    if filled != len(buf):
        raise InvalidRequest(f"chunk {_shown(chunk)} ended after {filled} of {len(buf)} bytes")
    if xxh3(buf) != header.xxh3:  # damaged on the way: never store it
        raise ChecksumError(f"chunk {_shown(chunk)} arrived with the wrong xxh3")
    return current


def _shown(chunk: object) -> str:
    return chunk.hex() if isinstance(chunk, bytes) else str(chunk)
