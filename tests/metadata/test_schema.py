from __future__ import annotations

import random
import struct

import pytest

from blobtier.checksum import crc32c
from blobtier.errors import CorruptRecord, InvalidKey
from blobtier.metadata import schema
from blobtier.metadata.schema import MAX_KEY_BYTES, BlobRecord, chunk_count, decode, encode
from tests.contracts.metadata_store import assert_same


def rec(n: int = 3, chunk_size: int = 1024, **kw) -> BlobRecord:
    size = kw.pop("size", (n - 1) * chunk_size + 7 if n else 0)
    base = dict(blob_id=b"\x01" * 16, version=9, size=size, chunk_size=chunk_size,
                checksums=[(i * 0x9E3779B97F4A7C15) % (1 << 64) for i in range(n)],
                placement=[(i % 7, (i + 3) % 7) for i in range(n)], created_ns=123456789)
    base.update(kw)
    return BlobRecord(**base)


def _layout() -> str:
    """Where the record keeps its crc32c: after the body, or in the header after the format."""
    data = encode(rec(1))
    if data[-4:] == struct.pack("<I", crc32c(data[:-4])):
        return "trailing"
    if data[3:7] == struct.pack("<I", crc32c(data[7:])):
        return "header"
    raise AssertionError("cannot find the record's crc32c")


LAYOUT = _layout()


def payload(data: bytes) -> bytes:
    """A record's bytes without its crc32c (byte 2 is the format in either layout)."""
    return data[:-4] if LAYOUT == "trailing" else data[:3] + data[7:]


def seal(body: bytes) -> bytes:
    """Put a valid crc32c on (edited) payload bytes, as the encoder would."""
    if LAYOUT == "trailing":
        return body + struct.pack("<I", crc32c(body))
    return body[:3] + struct.pack("<I", crc32c(body[3:])) + body[3:]


def decode_all(data) -> BlobRecord:
    """decode() and read every field, so a decoder that parses lazily must fail here too."""
    r = decode(data)
    _touched = (r.blob_id, r.version, r.size, r.chunk_size, r.checksum_algo, r.created_ns, r.n_chunks,
     list(r.checksums), [tuple(p) for p in r.placement], dict(r.attrs), r.origin)
    return r


# -- codec round trip --------------------------------------------------------------
@pytest.mark.parametrize("record", [
    rec(0, placement=[]),
    rec(1),
    rec(1000, chunk_size=4096),
    rec(3, attrs={"name": "日本語テキスト", "emoji": "🐍🦀", "": ""}),
    rec(2, origin="s3://bucket/key\n\"etag-123\"", placement=[]),
    rec(2, checksum_algo="crc32c"),
    rec(2, checksum_algo="xxh3", checksums=[0, (1 << 64) - 1]),
    rec(4, placement=[(1,), (2,), (3,), (65535,)]),
], ids=["empty", "one", "many", "unicode-attrs", "origin", "crc32c", "xxh3-extremes", "1-replica"])
def test_round_trip(record):
    assert_same(decode_all(encode(record)), record)


def test_decode_accepts_memoryview():
    r = rec(5)
    assert_same(decode_all(memoryview(encode(r))), r)


def test_encode_rejects_wrong_checksum_count():
    with pytest.raises(ValueError):
        encode(rec(3, size=10))


def test_encode_rejects_ragged_placement():
    with pytest.raises(ValueError):
        encode(rec(2, placement=[(1, 2), (3,)]))


# -- rejection -----------------------------------------------------------------------
def test_every_truncation_is_corrupt():
    data = encode(rec(3, attrs={"a": "b"}, origin="o"))
    for n in range(len(data)):
        with pytest.raises(CorruptRecord):
            decode_all(data[:n])


def test_every_bit_flip_is_corrupt():
    data = encode(rec(2, attrs={"k": "v"}))
    for pos in range(len(data)):
        for bit in (0, 7):
            flipped = bytearray(data)
            flipped[pos] ^= 1 << bit
            with pytest.raises(CorruptRecord):
                decode_all(bytes(flipped))


def test_unknown_format_version():
    data = bytearray(payload(encode(rec(2))))
    data[2] = 99
    with pytest.raises(CorruptRecord, match="format"):
        decode_all(seal(bytes(data)))


def test_bad_magic():
    data = bytearray(payload(encode(rec(1))))
    data[0:2] = b"XX"
    with pytest.raises(CorruptRecord):
        decode_all(seal(bytes(data)))


def test_trailing_garbage_with_valid_crc():
    with pytest.raises(CorruptRecord):
        decode_all(seal(payload(encode(rec(2))) + b"\x00\x00"))


def test_attr_count_past_the_end_is_corrupt():
    body = payload(encode(rec(1, attrs={"k": "v"})))
    count_at = len(body) - 7  # u16 count, u8 klen, "k", u16 vlen, "v"
    assert struct.unpack_from("<H", body, count_at) == (1,)
    for count in (2, 3, 0xFFFF):
        edited = body[:count_at] + struct.pack("<H", count) + body[count_at + 2:]
        with pytest.raises(CorruptRecord):
            decode_all(seal(edited))


def test_malformed_bodies_with_valid_crc_are_corrupt():
    """Bytes whose crc holds (a buggy encoder) still decode cleanly or raise CorruptRecord."""
    rng = random.Random(1234)
    base = payload(encode(rec(3, attrs={"a": "b", "cc": "dd"}, origin="s3://b/k\nt")))
    for _ in range(20_000):
        body = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            body[rng.randrange(len(body))] = rng.randrange(256)
        if rng.random() < 0.3:
            body = body[:rng.randrange(len(body))]
        try:
            decode_all(seal(bytes(body)))
        except CorruptRecord:
            pass


def test_peek_version():
    for v in (0, 1, 7, (1 << 64) - 1):
        data = encode(rec(2, version=v))
        assert schema.peek_version(data) == decode(data).version == v
    with pytest.raises(CorruptRecord):
        schema.peek_version(b"BT\x01")


# -- keys ----------------------------------------------------------------------------
@pytest.mark.parametrize("key", [
    "", ".", "..", "ns", "/ns/x", "ns/./x", "ns/../x", "ns/.", "a//b", "ns/x/", "ns/a\x00b",
    "ns/" + "x" * (MAX_KEY_BYTES - 2),
    "ns/" + "é" * ((MAX_KEY_BYTES - 3) // 2 + 1),  # fits in characters, not in bytes
    "ns/\ud800", "ns!/x", "n s/x", ".ns/x", "n" * 65 + "/x", "ns:1/x", "ñs/x",
])
def test_invalid_keys(key):
    with pytest.raises(InvalidKey):
        schema.validate_key(key)


def test_non_str_key():
    with pytest.raises(InvalidKey):
        schema.validate_key(b"ns/x")


@pytest.mark.parametrize("key", [
    "imagenet/train/n01440764/x.JPEG",
    "team-a-text/shard-00001.tar",
    "ns/日本/データ.bin",
    "a/b",
    "_x/.hidden",
    "ns.v2/x..y",
    "n" * 64 + "/x",
    "ns/" + "x" * (MAX_KEY_BYTES - 3),
    "ns/" + "é" * ((MAX_KEY_BYTES - 3) // 2),
])
def test_valid_keys(key):
    assert schema.validate_key(key) == key


def test_validate_prefix():
    assert schema.validate_prefix("") == ""
    assert schema.validate_prefix("ns/a") == "ns/a"
    for bad in ("/ns", "ns\x00", "\ud800", "x" * (MAX_KEY_BYTES + 1)):
        with pytest.raises(InvalidKey):
            schema.validate_prefix(bad)


def test_record_key():
    assert schema.record_key("ns/é") == b"Rns/\xc3\xa9"


# -- chunk arithmetic ----------------------------------------------------------------
@pytest.mark.parametrize("size, chunk, n", [(0, 4, 0), (1, 4, 1), (4, 4, 1), (5, 4, 2),
                                            (8, 4, 2), (4 * 1024 + 1, 1024, 5)])
def test_chunk_count(size, chunk, n):
    assert chunk_count(size, chunk) == n


def test_chunk_range():
    r = rec(3, chunk_size=1024, size=2 * 1024 + 7)
    assert [r.chunk_range(i) for i in range(r.n_chunks)] == [(0, 1024), (1024, 1024), (2048, 7)]
    exact = rec(2, chunk_size=1024, size=2048)
    assert exact.chunk_range(1) == (1024, 1024)


def test_chunk_key():
    r = rec(2)
    k = r.chunk_key(1)
    assert (k.blob_id, k.version, k.index) == (r.blob_id, r.version, 1)
    assert k.digest() != r.chunk_key(0).digest() and len(k.digest()) == 16
