"""Regions: the on-disk format, and the lifecycle open -> sealed -> reclaimed -> open.

A region file is a header block followed by entries appended back to back, each starting
at an ``ALIGN`` boundary (little-endian)::

    region header (first ALIGN bytes):  magic "BTFR" | format u8 | pad 3 | slot u32 |
                                        seq u64 | region_size u64 | crc32c u32
    entry:  header (64 B): magic "BTFE" | seq u64 | blob_id 16s | version u64 | index u32 |
                           length u32 | xxh3 u64 | crc32c u32 | pad 8
            data (length bytes), then zeros up to the next ALIGN boundary

``seq`` is the region's generation: every time a region is (re)opened it takes the next
number of a counter that only grows, and every entry written into it carries that number.
So the FIFO order of regions survives a restart (sort by seq), and the entries a reclaimed
region still holds from its previous life are told apart from the current ones: a recovery
scan stops at the first entry that is not of the region's generation, and cuts off a torn
one (bad header crc, or data that fails its xxh3).

Only whole regions are evicted, as in CacheLib's navy block cache: appends are sequential
and a region is rewritten from the start once reclaimed, which is what flash wears least on.
The cache holds its lock around every call here; the manager is not thread-safe itself.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from blobtier.checksum import crc32c, xxh3
from blobtier.chunks import Buffer, ChunkKey
from blobtier.flash_l3.device import ALIGN, Device, align_up

FORMAT = 1
_REGION = struct.Struct("<4sB3xIQQ")
_ENTRY = struct.Struct("<4sQ16sQIIQ")
_R_MAGIC, _E_MAGIC = b"BTFR", b"BTFE"
ENTRY_HEADER = 64
_CRC = struct.Struct("<I")
_PAD = bytes(ENTRY_HEADER - _ENTRY.size - _CRC.size)


class EntryHeader(NamedTuple):
    seq: int
    key: ChunkKey
    length: int
    xxh3: int


def pack_entry_header(seq: int, key: ChunkKey, length: int, h: int) -> bytes:
    body = _ENTRY.pack(_E_MAGIC, seq, key.blob_id, key.version, key.index, length, h)
    return body + _CRC.pack(crc32c(body)) + _PAD


def parse_entry_header(buf: Buffer) -> EntryHeader | None:
    """The header at the start of ``buf``, or None when it is not a whole, valid one."""
    if len(buf) < ENTRY_HEADER:
        return None
    body = memoryview(buf)[:_ENTRY.size]
    if crc32c(body) != _CRC.unpack_from(buf, _ENTRY.size)[0]:
        return None
    magic, seq, blob_id, version, index, length, h = _ENTRY.unpack_from(body)
    if magic != _E_MAGIC:
        return None
    return EntryHeader(seq, ChunkKey(blob_id, version, index), length, h)


def entry_span(length: int) -> int:
    """Bytes an entry of ``length`` data bytes takes in its region."""
    return align_up(ENTRY_HEADER + length)


def pack_region_header(slot: int, seq: int, region_size: int) -> bytes:
    body = _REGION.pack(_R_MAGIC, FORMAT, slot, seq, region_size)
    return (body + _CRC.pack(crc32c(body))).ljust(ALIGN, b"\0")


def parse_region_header(buf: Buffer, slot: int, region_size: int) -> int | None:
    """The seq of a valid header of this slot and size, else None (a fresh or foreign file)."""
    if len(buf) < _REGION.size + _CRC.size:
        return None
    body = memoryview(buf)[:_REGION.size]
    if crc32c(body) != _CRC.unpack_from(buf, _REGION.size)[0]:
        return None
    magic, fmt, got_slot, seq, size = _REGION.unpack_from(body)
    if magic != _R_MAGIC or fmt != FORMAT or got_slot != slot or size != region_size:
        return None
    return seq


@dataclass(eq=False)
class Region:
    """One region in memory: where the next append goes and what it holds."""

    slot: int
    seq: int
    end: int = ALIGN  # offset of the next append
    keys: list[bytes] = field(default_factory=list)  # digests appended in this generation
    writers: int = 0  # appends reserved here whose bytes are not written yet

    @property
    def used(self) -> int:
        return self.end - ALIGN


class ScannedEntry(NamedTuple):
    key: ChunkKey
    offset: int
    length: int
    xxh3: int


def scan(device: Device, slot: int) -> tuple[Region | None, list[ScannedEntry], int]:
    """Rebuild one region from its file: (region or None if it holds no valid header,
    its whole entries in order, entries discarded because their data failed its checksum).

    Reads the region once, in one pass; an entry whose header is good but whose data is
    not (torn, or a flipped bit) is skipped, and the scan goes on after it.
    """
    buf = memoryview(device.read(slot, 0, device.region_size))
    seq = parse_region_header(buf, slot, device.region_size)
    if seq is None:
        return None, [], 0
    region = Region(slot, seq)
    entries: list[ScannedEntry] = []
    bad = 0
    pos = ALIGN
    for pos, head in _headers(buf, seq):
        data = buf[pos + ENTRY_HEADER:pos + ENTRY_HEADER + head.length]
        region.end = pos + entry_span(head.length)
        if len(data) == head.length and xxh3(data) == head.xxh3:
            entries.append(ScannedEntry(head.key, pos, head.length, head.xxh3))
            region.keys.append(head.key.digest())
        else:
            bad += 1
    return region, entries, bad


def _headers(buf: memoryview, seq: int) -> Iterator[tuple[int, EntryHeader]]:
    pos = ALIGN
    while pos + ENTRY_HEADER <= len(buf):
        head = parse_entry_header(buf[pos:pos + ENTRY_HEADER])
        if head is None or head.seq != seq or pos + entry_span(head.length) > len(buf):
            return  # the end of this generation's appends
        yield pos, head
        pos += entry_span(head.length)


class RegionManager:
    """The regions of one device: at most ``max_regions``, one open for appends, the
    sealed ones in FIFO order (oldest first)."""

    def __init__(self, device: Device, max_regions: int) -> None:
        self.device = device
        self.max_regions = max_regions
        self.regions: dict[int, Region] = {}
        self.sealed: deque[Region] = deque()
        self.open: Region | None = None
        self.next_seq = 1

    @property
    def region_size(self) -> int:
        return self.device.region_size

    def adopt(self, regions: list[Region]) -> None:
        """Take recovered regions: the newest stays open for appends, the rest are sealed."""
        for region in sorted(regions, key=lambda r: r.seq):
            self.regions[region.slot] = region
            self.sealed.append(region)
            self.next_seq = max(self.next_seq, region.seq + 1)
        if self.sealed:
            self.open = self.sealed.pop()

    def reserve(self, span: int) -> tuple[Region, int] | None:
        """Room for ``span`` bytes in the open region, or None when it is full."""
        region = self.open
        if region is None or region.end + span > self.region_size:
            return None
        at = region.end
        region.end += span
        region.writers += 1
        return region, at

    def seal(self) -> None:
        if self.open is not None:
            self.sealed.append(self.open)
            self.open = None

    def can_grow(self) -> bool:
        return len(self.regions) < self.max_regions

    def grow(self) -> Region:
        """A new region file, open for appends; ``OSError`` (ENOSPC) when the disk cannot
        hold one more."""
        slot = next(s for s in range(len(self.regions) + 1) if s not in self.regions)
        self.device.create(slot)
        region = Region(slot, 0)
        try:
            self.start(region)
        except OSError:
            self.device.remove(slot)
            raise
        self.regions[slot] = region
        return region

    def victim(self) -> Region | None:
        """The oldest sealed region, if any (FIFO eviction)."""
        return self.sealed[0] if self.sealed else None

    def start(self, region: Region) -> None:
        """Make ``region`` (new, or reclaimed and emptied by the caller) the open one.

        The new header goes to disk first: if that write fails, the region stays where it
        was (sealed, its entries already gone) and the next reclaim tries it again.
        """
        seq = self.next_seq
        self.device.write(region.slot, 0, [pack_region_header(region.slot, seq, self.region_size)])
        self.next_seq += 1
        if region in self.sealed:
            self.sealed.remove(region)
        region.seq, region.end, region.keys = seq, ALIGN, []
        self.open = region

    def discard(self, region: Region) -> None:
        """Forget ``region`` and delete its file (a shrink)."""
        if region is self.open:
            self.open = None
        elif region in self.sealed:
            self.sealed.remove(region)
        self.regions.pop(region.slot, None)
        self.device.remove(region.slot)

    def in_fifo_order(self) -> list[Region]:
        return [*self.sealed, *([self.open] if self.open else [])]

    def used_bytes(self) -> int:
        return sum(r.used for r in self.regions.values())
