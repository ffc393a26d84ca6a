"""Region and entry formats, the recovery scan, and the region lifecycle."""

from __future__ import annotations

import os

from blobtier.checksum import xxh3
from blobtier.chunks import ChunkKey
from blobtier.flash_l3.device import ALIGN, Device
from blobtier.flash_l3.regions import (
    ENTRY_HEADER,
    RegionManager,
    entry_span,
    pack_entry_header,
    pack_region_header,
    parse_entry_header,
    parse_region_header,
    scan,
)

SIZE = 32 * ALIGN
KEY = ChunkKey(b"k" * 16, 7, 3)


def test_entry_header_round_trip_and_corruption():
    head = pack_entry_header(9, KEY, 1234, 0xABC)
    assert len(head) == ENTRY_HEADER
    parsed = parse_entry_header(head)
    assert parsed == (9, KEY, 1234, 0xABC)
    for pos in (0, 5, 30, 55):
        bad = bytearray(head)
        bad[pos] ^= 0x10
        assert parse_entry_header(bad) is None
    assert parse_entry_header(head[:40]) is None


def test_region_header_names_its_slot_and_size():
    head = pack_region_header(4, 77, SIZE)
    assert len(head) == ALIGN
    assert parse_region_header(head, 4, SIZE) == 77
    assert parse_region_header(head, 5, SIZE) is None
    assert parse_region_header(head, 4, 2 * SIZE) is None
    assert parse_region_header(bytes(ALIGN), 4, SIZE) is None


def test_entry_span_is_aligned():
    assert entry_span(0) == ALIGN
    assert entry_span(ALIGN - ENTRY_HEADER) == ALIGN
    assert entry_span(ALIGN - ENTRY_HEADER + 1) == 2 * ALIGN


def append(dev: Device, slot: int, at: int, seq: int, key: ChunkKey, data: bytes) -> int:
    pad = entry_span(len(data)) - ENTRY_HEADER - len(data)
    dev.write(slot, at, [pack_entry_header(seq, key, len(data), xxh3(data)), data, bytes(pad)])
    return at + entry_span(len(data))


def test_scan_finds_whole_entries_skips_torn_ones_and_stops_at_another_generation(tmp_path):
    dev = Device(str(tmp_path), SIZE)
    dev.create(0)
    dev.write(0, 0, [pack_region_header(0, 5, SIZE)])
    keys = [ChunkKey(os.urandom(16), 1, i) for i in range(4)]
    datas = [os.urandom(5000), os.urandom(100), os.urandom(9000), os.urandom(10)]
    at = ALIGN
    offsets = []
    for key, data in zip(keys, datas):
        offsets.append(at)
        at = append(dev, 0, at, 5, key, data)
    dev.write(0, offsets[1] + ENTRY_HEADER, [b"\xff"])  # a flipped data byte in entry 1
    append(dev, 0, at, 4, ChunkKey(os.urandom(16), 1, 0), b"old generation")
    region, entries, bad = scan(dev, 0)
    assert region.seq == 5 and region.end == at
    assert [e.key for e in entries] == [keys[0], keys[2], keys[3]]
    assert [e.offset for e in entries] == [offsets[0], offsets[2], offsets[3]]
    assert bad == 1
    assert region.keys == [k.digest() for k in (keys[0], keys[2], keys[3])]
    dev.create(1)
    assert scan(dev, 1) == (None, [], 0)  # a region never written
    dev.close()


def test_manager_fills_seals_and_reclaims_in_fifo_order(tmp_path):
    dev = Device(str(tmp_path), SIZE)
    mgr = RegionManager(dev, 3)
    assert mgr.reserve(ALIGN) is None  # nothing open yet
    opened = []
    while mgr.can_grow():
        mgr.seal()
        opened.append(mgr.grow())
        region, at = mgr.reserve(SIZE - ALIGN)
        assert at == ALIGN and region.writers == 1
        region.writers = 0
    assert [r.seq for r in opened] == [1, 2, 3]
    assert mgr.reserve(ALIGN) is None  # the open region is full
    mgr.seal()
    victim = mgr.victim()
    assert victim is opened[0]
    mgr.start(victim)
    assert mgr.open is victim and victim.seq == 4 and victim.end == ALIGN
    assert [r.slot for r in mgr.in_fifo_order()] == [opened[1].slot, opened[2].slot, victim.slot]
    assert parse_region_header(dev.read(victim.slot, 0, ALIGN), victim.slot, SIZE) == 4
    mgr.discard(opened[1])
    assert dev.slots() == sorted([opened[0].slot, opened[2].slot])
    dev.close()


def test_adopt_keeps_the_newest_region_open(tmp_path):
    dev = Device(str(tmp_path), SIZE)
    first = RegionManager(dev, 4)
    for _ in range(3):
        first.seal()
        first.grow()
    second = RegionManager(dev, 4)
    second.adopt(list(first.regions.values()))
    assert second.open.seq == 3 and [r.seq for r in second.sealed] == [1, 2]
    assert second.next_seq == 4
    dev.close()
