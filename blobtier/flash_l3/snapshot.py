"""The index snapshot a clean shutdown leaves, so a restart need not scan every region.

File ``<dir>/index.snap`` (little-endian), published by write-to-temp, fsync, rename::

    magic "BTFS" | format u8 | pad 3 | region_size u64 | next_seq u64 |
    n_regions u32 | n_entries u32
    regions:  slot u32 | seq u64 | end u32                               (n_regions)
    entries:  digest 16s | slot u32 | offset u32 | length u32 | xxh3 u64 |
              hits u8 | pad 3                                            (n_entries)
    crc32c u32 of everything before it

A snapshot describes the regions as they were when it was written. The cache deletes it
as soon as it has loaded it: a node that runs on and then crashes must not come back to a
stale index. Should a stale snapshot be loaded anyway (its deletion lost with the page
cache), the region generations it names no longer match the region headers and it is
refused; and every read checks each entry's header and checksum regardless.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from blobtier.checksum import crc32c
from blobtier.flash_l3.index import Entry
from blobtier.fsutil import private_file

NAME = "index.snap"
FORMAT = 1
_HEAD = struct.Struct("<4sB3xQQII")
_REGION = struct.Struct("<IQI")
_ENTRY = struct.Struct("<16sIIIQB3x")
_CRC = struct.Struct("<I")
_MAGIC = b"BTFS"


@dataclass
class Snapshot:
    region_size: int
    next_seq: int
    regions: list[tuple[int, int, int]]  # (slot, seq, end)
    entries: list[tuple[bytes, Entry]]


def encode(snap: Snapshot) -> bytes:
    seq_of = {slot: seq for slot, seq, _ in snap.regions}
    entries = [_ENTRY.pack(d, e.slot, e.offset, e.length, e.xxh3, e.hits)
               for d, e in snap.entries if seq_of.get(e.slot) == e.seq]
    parts = [_HEAD.pack(_MAGIC, FORMAT, snap.region_size, snap.next_seq, len(snap.regions), len(entries))]
    parts += [_REGION.pack(*r) for r in snap.regions]
    parts += entries
    body = b"".join(parts)
    return body + _CRC.pack(crc32c(body))


def decode(data: bytes) -> Snapshot | None:
    """The snapshot in ``data``, or None if it is truncated, corrupt or of another format."""
    if len(data) < _HEAD.size + _CRC.size:
        return None
    if crc32c(data[:-_CRC.size]) != _CRC.unpack_from(data, len(data) - _CRC.size)[0]:
        return None
    magic, fmt, region_size, next_seq, n_regions, n_entries = _HEAD.unpack_from(data)
    at = _HEAD.size + n_regions * _REGION.size
    if magic != _MAGIC or fmt != FORMAT or at + n_entries * _ENTRY.size + _CRC.size != len(data):
        return None
    regions = list(_REGION.iter_unpack(data[_HEAD.size:at]))
    seq_of = {slot: seq for slot, seq, _ in regions}
    entries = [(d, Entry(slot, seq_of[slot], offset, length, h, hits))
               for d, slot, offset, length, h, hits in _ENTRY.iter_unpack(data[at:-_CRC.size])
               if slot in seq_of]
    return Snapshot(region_size, next_seq, regions, entries)


def write(root: str, snap: Snapshot) -> None:
    path = os.path.join(root, NAME)
    tmp = path + ".tmp"
    with private_file(tmp, "wb") as f:
        f.write(encode(snap))
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    _sync_dir(root)


def take(root: str) -> Snapshot | None:
    """Read and delete the snapshot (None if there is none, or it is unusable)."""
    path = os.path.join(root, NAME)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    os.unlink(path)
    _sync_dir(root)
    return decode(data)


def _sync_dir(root: str) -> None:
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
