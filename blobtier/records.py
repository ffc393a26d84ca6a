"""What a committed blob is: its ``BlobRecord``, the ``ChunkKey`` of each of its chunks, and
the record's binary codec.

Every part needs these (the SDK writes records, a metadata store keeps them, a flash node
decodes the one a read-through request carries, every tier keys chunks by ``ChunkKey``), so
they live in core and import nothing but ``checksum`` and ``errors``. ``blobtier.metadata.schema``
re-exports them beside the key rules and the key layout.

Record format 1 (little-endian); the crc32c covers every byte after it::

    magic "BT" | format u8 | crc32c u32 | flags u8 | blob_id 16s | version u64 | size u64 |
    chunk_size u32 | created_ns u64 | checksum_algo u8 | replicas u8 |
    n_chunks u32 | checksums n*u64 | placement n*replicas*u16 |
    origin: u16 len + utf8 (only with FLAG_ORIGIN) |
    attrs: u16 count, then per attr u8 klen + key + u16 vlen + value

``blob_id`` is random per write attempt, so the chunk key (blob_id, version, index) of a
committed version can never be reused by another write: caches never need invalidation.
``placement[i]`` lists the chunk servers holding replicas of chunk ``i``. A record whose
chunks are byte ranges of an origin object (the fsspec origin adapter) carries
``origin`` = "url\\ntag" and an empty placement.
"""

from __future__ import annotations

import functools
import struct
import uuid
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import NamedTuple

import xxhash

from blobtier.checksum import BY_ID, algorithm_id
from blobtier.checksum import crc32c as _crc32c
from blobtier.errors import CorruptRecord

MAX_ATTRS_BYTES = 4096
MAX_CHUNKS = 1 << 24  # 64 TiB at 4 MiB chunks
FORMAT = 1
FLAG_ORIGIN = 1
_HEAD = struct.Struct("<2sBIB16sQQIQBBI")
_CRC_FROM = 7  # the crc32c covers the record from the flags on; magic and format are exact
_MAGIC = b"BT"


class ChunkKey(NamedTuple):
    blob_id: bytes
    version: int
    index: int

    def digest(self) -> bytes:
        """16-byte name of the chunk on disk and on the wire; never derived from a user key."""
        return xxhash.xxh3_128_digest(self.blob_id + self.version.to_bytes(8, "little")
                                      + self.index.to_bytes(4, "little"))

    def __str__(self) -> str:
        return f"{self.blob_id.hex()}@{self.version}#{self.index}"


def new_blob_id() -> bytes:
    return uuid.uuid4().bytes


_NO_ATTRS: Mapping[str, str] = MappingProxyType({})


class BlobRecord:
    """Everything needed to read one committed version of one blob.

    A decoded record is a view over its encoded bytes: the fixed header is unpacked into
    attributes at once, the per-chunk arrays, origin and attributes on first use (a
    one-chunk record, the common case for samples, is unpacked whole in one call).
    Opening a blob, or multi-getting an epoch's records, then costs a checksum and one
    ``unpack``; the fields are plain slots, read at attribute speed.
    """

    __slots__ = ("blob_id", "version", "size", "chunk_size", "created_ns", "_algo", "_replicas",
                 "n_chunks", "_body", "_raw", "key")

    def __init__(self, blob_id: bytes, version: int, size: int, chunk_size: int,
                 checksums: Sequence[int], placement: Sequence[Sequence[int]] = (),
                 checksum_algo: str = "xxh3", created_ns: int = 0,
                 attrs: Mapping[str, str] = _NO_ATTRS, origin: str = "") -> None:
        self.blob_id, self.version, self.size, self.chunk_size = blob_id, version, size, chunk_size
        self.created_ns = created_ns
        self._algo = algorithm_id(checksum_algo)
        self._replicas = len(placement[0]) if placement else 0
        self.n_chunks = len(checksums)
        self._body = (tuple(checksums), tuple(tuple(p) for p in placement), origin,
                      MappingProxyType(dict(attrs)))
        self._raw: bytes | None = None
        self.key = ""  # the key it was looked up by (not encoded: a store sets it); "" if unknown

    @property
    def namespace(self) -> str:
        """The first path component of its key ("" when the key is unknown): the unit of
        per-namespace policies."""
        return self.key.split("/", 1)[0]

    checksum_algo = property(lambda self: BY_ID[self._algo])
    checksums: Sequence[int] = property(lambda self: (self._body or self._parse())[0])
    placement: Sequence[Sequence[int]] = property(lambda self: (self._body or self._parse())[1])
    origin: str = property(lambda self: (self._body or self._parse())[2])
    attrs: Mapping[str, str] = property(lambda self: (self._body or self._parse())[3])

    def chunk_key(self, index: int) -> ChunkKey:
        return ChunkKey(self.blob_id, self.version, index)

    def chunk_range(self, index: int) -> tuple[int, int]:
        """(offset, length) of chunk ``index`` inside the blob."""
        start = index * self.chunk_size
        return start, min(self.chunk_size, self.size - start)

    def _parse(self) -> tuple:
        self._body = _decode_body(self._raw, self.size, self.chunk_size, self._replicas,
                                  self.n_chunks)
        return self._body

    def _fields(self) -> tuple:
        return (self.blob_id, self.version, self.size, self.chunk_size, self.created_ns,
                self._algo, self.checksums, self.placement, self.attrs, self.origin)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BlobRecord):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"BlobRecord(blob_id={self.blob_id.hex()}, version={self.version}, "
                f"size={self.size}, chunks={self.n_chunks})")


def chunk_count(size: int, chunk_size: int) -> int:
    return -(-size // chunk_size) if size else 0


def encode(rec: BlobRecord) -> bytes:
    n = len(rec.checksums)
    if n != chunk_count(rec.size, rec.chunk_size):
        raise ValueError(f"{n} checksums for size {rec.size} at chunk size {rec.chunk_size}")
    replicas = len(rec.placement[0]) if rec.placement else 0
    if rec.placement and (len(rec.placement) != n or any(len(p) != replicas for p in rec.placement)):
        raise ValueError("placement must list the same number of replicas for every chunk")
    flags = FLAG_ORIGIN if rec.origin else 0
    parts = [
        _HEAD.pack(_MAGIC, FORMAT, 0, flags, rec.blob_id, rec.version, rec.size, rec.chunk_size,
                   rec.created_ns, algorithm_id(rec.checksum_algo), replicas, n),
        struct.pack(f"<{n}Q", *rec.checksums),
        struct.pack(f"<{n * replicas}H", *(s for p in rec.placement for s in p)),
    ]
    if rec.origin:
        origin = rec.origin.encode()
        parts.append(struct.pack("<H", len(origin)) + origin)
    parts.append(_encode_attrs(rec.attrs))
    body = bytearray(b"".join(parts))
    struct.pack_into("<I", body, 3, _crc32c(memoryview(body)[_CRC_FROM:]))
    return bytes(body)


def _encode_attrs(attrs: Mapping[str, str]) -> bytes:
    out = [struct.pack("<H", len(attrs))]
    for k, v in attrs.items():
        kb, vb = k.encode(), v.encode()
        if len(kb) > 255:
            raise ValueError(f"attribute name {k[:32]!r}... longer than 255 bytes")
        out.append(struct.pack("<B", len(kb)) + kb + struct.pack("<H", len(vb)) + vb)
    blob = b"".join(out)
    if len(blob) > MAX_ATTRS_BYTES:
        raise ValueError(f"attributes take {len(blob)} bytes; the limit is {MAX_ATTRS_BYTES}")
    return blob


def decode(data: bytes) -> BlobRecord:
    """Decode one record; raise ``CorruptRecord`` for truncated, corrupt or unknown bytes.

    The whole record is checked against its crc32c here; the variable-length body is
    only parsed when a field of it is read, except for a one-chunk record without origin
    or attributes, whose fixed layout is unpacked whole at once (cheaper than a second
    pass: ``benchmarks/metadata_lookup.py``).
    """
    if type(data) is not bytes:
        data = bytes(data)
    size = len(data)
    one = _ONE_CHUNK.get(size)
    if one is not None and data[7] == 0:
        # magic, format, crc, flags, blob_id, version, size, chunk_size, created_ns, algo,
        # replicas, n_chunks, checksum, placement..., attribute count
        v = one.unpack(data)
        if v[11] == 1 and v[-1] == 0 and v[10] == (size - _ONE_FIXED) // 2 \
                and v[0] == _MAGIC and v[1] == FORMAT and v[9] in BY_ID \
                and _crc32c(data[_CRC_FROM:]) == v[2] and 0 < v[6] <= v[7]:
            rec = _new_record(BlobRecord)
            (_, _, _, _, rec.blob_id, rec.version, rec.size, rec.chunk_size, rec.created_ns,
             rec._algo, rec._replicas, rec.n_chunks) = v[:12]
            rec._body = ((v[12],), (v[13:-1],) if v[10] else (), "", _NO_ATTRS)
            rec._raw = data
            rec.key = ""
            return rec
    if size < _HEAD.size + 2:
        raise CorruptRecord(f"record truncated: {size} bytes")
    head = _HEAD.unpack_from(data)
    if _crc32c(data[_CRC_FROM:]) != head[2]:
        if head[0] == _MAGIC and head[1] != FORMAT:
            raise CorruptRecord(f"unknown record format {head[1]}")
        raise CorruptRecord("record checksum mismatch (truncated or corrupted)")
    if head[0] != _MAGIC or head[1] != FORMAT or head[9] not in BY_ID:
        raise CorruptRecord(f"not a blobtier record of format {FORMAT}")
    rec = _new_record(BlobRecord)
    (_, _, _, _, rec.blob_id, rec.version, rec.size, rec.chunk_size, rec.created_ns,
     rec._algo, rec._replicas, rec.n_chunks) = head
    rec._body = None
    rec._raw = data
    rec.key = ""
    return rec


def decode_many(raws: Sequence[bytes | None], keys: Sequence[str]) -> list[BlobRecord | None]:
    """``decode`` of each encoded record (None stays None), each given its key: the bulk
    form a multi-get uses. Raises ``CorruptRecord`` for the first bad one."""
    out: list[BlobRecord | None] = [None if raw is None else decode(raw) for raw in raws]
    for rec, key in zip(out, keys):
        if rec is not None:
            rec.key = key
    return out


_new_record = object.__new__
# A one-chunk record with r replicas, no origin and no attributes: the header, one
# checksum, r placement entries and a zero attribute count, by its length.
_ONE_FIXED = _HEAD.size + 8 + 2
_ONE_CHUNK = {_ONE_FIXED + 2 * r: struct.Struct(f"{_HEAD.format}Q{r}HH") for r in range(9)}


def encoded(rec: BlobRecord) -> bytes:
    """``rec``'s encoded bytes: those it was decoded from (records are immutable, so they
    are still exact), else ``encode(rec)``. What a metadata service sends."""
    return rec._raw if rec._raw is not None else encode(rec)


@functools.lru_cache(maxsize=256)
def _arrays(n: int, replicas: int) -> struct.Struct:
    """The checksums and placement of ``n`` chunks, unpacked in one call."""
    return struct.Struct(f"<{n}Q{n * replicas}H")


def _decode_body(data: bytes, size: int, chunk_size: int, replicas: int, n: int) -> tuple:
    # The crc held, so only a buggy encoder could get here with bad bytes; still, every
    # length is checked rather than trusted.
    if n > MAX_CHUNKS or (chunk_size and n != chunk_count(size, chunk_size)):
        raise CorruptRecord("record header is inconsistent")
    try:
        arrays = _arrays(n, replicas)
        values = arrays.unpack_from(data, _HEAD.size)
        checksums = values[:n]
        if not replicas:
            placement: tuple = ()
        elif n == 1:
            placement = (values[1:],)
        else:
            placement = tuple(values[i:i + replicas] for i in range(n, n + n * replicas, replicas))
        pos = _HEAD.size + arrays.size
        origin = ""
        if data[7] & FLAG_ORIGIN:
            (olen,) = struct.unpack_from("<H", data, pos)
            origin = data[pos + 2:pos + 2 + olen].decode()
            pos += 2 + olen
        if data[pos:pos + 2] == b"\0\0":  # no attributes: the common case
            attrs, pos = _NO_ATTRS, pos + 2
        else:
            attrs, pos = _decode_attrs(memoryview(data), pos)
    except (struct.error, IndexError, ValueError, UnicodeDecodeError) as exc:
        raise CorruptRecord(f"record body is malformed: {exc}") from None
    if pos != len(data):
        raise CorruptRecord("record length does not match its header")
    return checksums, placement, origin, attrs


def _decode_attrs(mv: memoryview, pos: int) -> tuple[dict[str, str], int]:
    (count,) = struct.unpack_from("<H", mv, pos)
    pos += 2
    if not count:
        return _NO_ATTRS, pos
    attrs = {}
    for _ in range(count):
        klen = mv[pos]
        k = bytes(mv[pos + 1:pos + 1 + klen]).decode()
        pos += 1 + klen
        (vlen,) = struct.unpack_from("<H", mv, pos)
        attrs[k] = bytes(mv[pos + 2:pos + 2 + vlen]).decode()
        pos += 2 + vlen
    return MappingProxyType(attrs), pos


_VERSION_AT = 24  # magic 2 + format 1 + crc 4 + flags 1 + blob_id 16


def peek_version(data: bytes) -> int:
    """The version of an encoded record without decoding it (for compare-and-set)."""
    if len(data) < _VERSION_AT + 8:
        raise CorruptRecord("record truncated")
    return int.from_bytes(data[_VERSION_AT:_VERSION_AT + 8], "little")
