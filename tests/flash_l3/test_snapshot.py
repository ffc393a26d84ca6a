"""The index snapshot: round trip, corruption refused, taken once."""

from __future__ import annotations

import os

from blobtier.flash_l3 import snapshot
from blobtier.flash_l3.index import Entry

SNAP = snapshot.Snapshot(1 << 20, 9, [(0, 7, 8192), (2, 8, 4096)],
                         [(b"a" * 16, Entry(0, 7, 4096, 100, 0xAB, 3)),
                          (b"b" * 16, Entry(2, 8, 4096, 5, 0xCD, 0)),
                          (b"c" * 16, Entry(2, 6, 4096, 5, 0xEF, 0))])  # a stale generation


def test_round_trip_drops_entries_of_other_generations():
    back = snapshot.decode(snapshot.encode(SNAP))
    assert (back.region_size, back.next_seq, back.regions) == (1 << 20, 9, [(0, 7, 8192), (2, 8, 4096)])
    assert [(d, e.slot, e.seq, e.offset, e.length, e.xxh3, e.hits) for d, e in back.entries] == [
        (b"a" * 16, 0, 7, 4096, 100, 0xAB, 3), (b"b" * 16, 2, 8, 4096, 5, 0xCD, 0)]


def test_any_damage_is_refused():
    data = snapshot.encode(SNAP)
    for pos in (0, 10, len(data) // 2, len(data) - 1):
        bad = bytearray(data)
        bad[pos] ^= 1
        assert snapshot.decode(bytes(bad)) is None
    assert snapshot.decode(data[:-8]) is None
    assert snapshot.decode(b"") is None


def test_take_reads_and_deletes(tmp_path):
    root = str(tmp_path)
    assert snapshot.take(root) is None
    snapshot.write(root, SNAP)
    assert os.listdir(root) == [snapshot.NAME]
    assert snapshot.take(root).next_seq == 9
    assert snapshot.take(root) is None  # a crash after a start never finds a stale one
