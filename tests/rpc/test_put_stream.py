"""The chunked Put stream (``rpc/put_stream.py``), both ends, over the real messages of
both protos: sizes at every boundary, many chunks, and every malformed or oversize stream
refused with the error that names it."""

from __future__ import annotations

import os

import pytest

from blobtier.checksum import xxh3
from blobtier.chunks import ChunkKey
from blobtier.errors import ChecksumError, InvalidRequest
from blobtier.metadata.schema import new_blob_id
from blobtier.rpc import cache_wire
from blobtier.rpc import put_stream as ps
from blobtier.rpc.gen import block_pb2, flash_pb2

PIECE = 1024
LIMITS = ps.Limits(chunk_bytes=4 * PIECE, put_bytes=8 * PIECE, piece_bytes=PIECE)


def digest(i: int) -> bytes:
    return bytes([i]) * 16


def block_stream(chunks: list[bytes], h: int | None = None) -> list[block_pb2.PutRequest]:
    headers = [(block_pb2.PutHeader(digest=digest(i), xxh3=xxh3(c) if h is None else h), c)
               for i, c in enumerate(chunks)]
    return list(ps.requests(block_pb2.PutRequest, headers, piece_bytes=PIECE))


def by_digest(header: block_pb2.PutHeader) -> bytes:
    if len(header.digest) != 16:
        raise InvalidRequest(f"a chunk digest is 16 bytes, got {len(header.digest)}")
    return header.digest


def received(messages, limits: ps.Limits = LIMITS, **kw) -> list[tuple[bytes, bytes]]:
    return [(name, bytes(data)) for name, _, data in ps.receive(messages, by_digest, limits, **kw)]


@pytest.mark.parametrize("size, data_messages", [
    (0, 0),  # an empty chunk: its header alone
    (1, 1),
    (PIECE - 1, 1),
    (PIECE, 1),  # exactly one full message
    (PIECE + 1, 2),
    (4 * PIECE, 4),  # the largest chunk the limits take
])
def test_a_chunk_of_each_boundary_size_goes_in_pieces_and_comes_back_whole(size, data_messages):
    data = os.urandom(size)
    messages = block_stream([data])
    assert [m.WhichOneof("part") for m in messages] == ["header"] + ["data"] * data_messages
    assert messages[0].header.length == size
    assert all(len(m.data) <= PIECE for m in messages[1:])
    assert received(messages) == [(digest(0), data)]


def test_many_chunks_in_one_stream_each_named_and_whole():
    chunks = [os.urandom(n) for n in (0, 5, PIECE, 0, 2 * PIECE + 3, 1)]
    assert received(block_stream(chunks)) == [(digest(i), c) for i, c in enumerate(chunks)]


def test_a_stream_of_no_chunks_carries_nothing():
    assert block_stream([]) == []
    assert received([]) == []


def test_the_flash_protos_header_keeps_its_own_fields():
    key = ChunkKey(new_blob_id(), 3, 7)
    header = flash_pb2.PutHeader(key=cache_wire.key_to_pb(key), xxh3=xxh3(b"abc"), touch=True)
    messages = list(ps.requests(flash_pb2.PutRequest, [(header, memoryview(b"abc"))]))
    (name, head, data), = ps.receive(messages, lambda h: cache_wire.key_from_pb(h.key))
    assert (name, head.touch, head.length, bytes(data)) == (key, True, 3, b"abc")


def test_a_chunk_is_handed_on_once_the_next_header_shows_it_ended():
    messages = block_stream([b"first", b"second"]) + [block_pb2.PutRequest(data=b"x")]
    taken: list[str] = []

    def arriving():
        for m in messages:
            taken.append(m.WhichOneof("part"))
            yield m

    stream = ps.receive(arriving(), by_digest, LIMITS)
    assert bytes(next(stream)[2]) == b"first"
    assert taken == ["header", "data", "header"]  # the rest is not read yet
    with pytest.raises(InvalidRequest, match="more than its 6 bytes"):
        next(stream)


def test_a_chunk_or_a_stream_at_its_limit_is_taken_and_one_byte_more_is_refused():
    full = [os.urandom(4 * PIECE), os.urandom(4 * PIECE)]  # exactly put_bytes
    assert len(received(block_stream(full))) == 2
    with pytest.raises(InvalidRequest, match=f"exceeds {4 * PIECE}"):
        received(block_stream([os.urandom(4 * PIECE + 1)]))
    with pytest.raises(InvalidRequest, match=f"at most {8 * PIECE} bytes"):
        received(block_stream([*full, b"x"]))


def test_the_header_is_refused_before_any_byte_is_buffered():
    big = block_pb2.PutRequest(header=block_pb2.PutHeader(digest=digest(0), length=1 << 40))
    with pytest.raises(InvalidRequest, match="exceeds"):  # never a terabyte bytearray
        received([big])
    paced: list[int] = []
    bad_name = block_stream([b"abc"])
    bad_name[0].header.digest = b"short"
    with pytest.raises(InvalidRequest, match="16 bytes"):
        received(bad_name, pace=lambda n: paced.append(n) or True)
    assert paced == []


def test_an_oversize_piece_is_refused():
    messages = list(ps.requests(block_pb2.PutRequest,
                                [(block_pb2.PutHeader(digest=digest(0), xxh3=xxh3(b"y" * (PIECE + 1))),
                                  b"y" * (PIECE + 1))], piece_bytes=PIECE + 1))
    with pytest.raises(InvalidRequest, match=f"at most {PIECE} bytes, got {PIECE + 1}"):
        received(messages)


@pytest.mark.parametrize("messages, error, match", [
    ([block_pb2.PutRequest(data=b"abc")], InvalidRequest, "before any header"),
    ([block_pb2.PutRequest()], InvalidRequest, "header or data"),
    (block_stream([b"abcd"])[:-1], InvalidRequest, "ended after 0 of 4 bytes"),  # cut at the end
    (block_stream([b"abcd"])[:-1] + block_stream([b"e"]), InvalidRequest,
     f"chunk {digest(0).hex()} ended after 0 of 4"),  # cut before the next header
    (block_stream([b"abc"]) + [block_pb2.PutRequest(data=b"d")], InvalidRequest, "more than its 3 bytes"),
    (block_stream([b"abc"], h=12345), ChecksumError, "wrong xxh3"),
])
def test_a_malformed_stream_is_refused_naming_what_is_wrong(messages, error, match):
    with pytest.raises(error, match=match):
        received(messages)


def test_a_stream_whose_pace_says_stop_ends_there():
    chunks = [os.urandom(PIECE), os.urandom(2 * PIECE)]
    paced: list[int] = []

    def pace(n: int) -> bool:
        paced.append(n)
        return len(paced) < 3  # the third piece: the client went away

    assert received(block_stream(chunks), pace=pace) == [(digest(0), chunks[0])]
    assert paced == [PIECE, PIECE, PIECE]


@pytest.mark.parametrize("sizes, limit, expected", [
    ([], 10, []),
    ([10], 10, [[10]]),  # exactly the limit: one batch
    ([5, 5], 10, [[5, 5]]),
    ([5, 6], 10, [[5], [6]]),  # one byte over: split
    ([11, 1], 10, [[11], [1]]),  # larger than the limit: alone
    ([0, 0, 10, 0], 10, [[0, 0, 10, 0]]),
])
def test_batches_split_at_the_limit(sizes, limit, expected):
    items = [(digest(i), b"x" * n) for i, n in enumerate(sizes)]
    assert [[len(d) for _, d in b] for b in ps.batches(items, limit)] == expected
    assert [[len(k) for k in b] for b in ps.batches([b"x" * n for n in sizes], limit, size=len)] == expected
