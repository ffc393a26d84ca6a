"""``FlashCache``: a log-structured chunk cache on flash, in the spirit of CacheLib's navy
block cache.

Chunks are appended, each with a header naming it and a checksum, into the one open
region (``regions.py``); an in-memory index (``index.py``) finds them. When every region is
in use, the oldest sealed region is reclaimed whole (FIFO): its entries leave the index
and it is rewritten from the start; optionally, its entries read at least
``reinsert_hits`` times since they were written are first copied into the new open region.
An admission policy (``admission.py``) decides which offered chunks are worth a write.

Per-namespace shares: a fill may name its chunk's namespace (the first segment of its
blob's key), and a namespace may be given a share of the capacity
(``set_namespace_shares``; a flash node reads them from the region's namespace objects,
``blobtier ns set NS --l3-share``). When a region is reclaimed for a fill, the entries of
another namespace that holds no more than its share are copied forward into the new
region instead of dropped (only what it holds beyond its share goes), so a namespace
within its share is never evicted by another's fills; a fill that then finds no room is
declined. Namespaces are known for the entries filled since the node started (they are
not in the entry headers): recovered entries belong to none.

Contracts, as the ``ChunkCache`` protocol states them:

- a miss is an absent key, never an exception: a chunk that fails its header or checksum
  check, or whose read fails (EIO), is dropped from the index and reported as a miss, so
  the caller fetches it again; wrong bytes are never returned;
- a write that fails (EIO, ENOSPC) leaves the cache as it was; a full disk stops admission
  (for ``full_retry_s``), never reads;
- the region files never take more than ``capacity`` bytes.

Warm restart: ``close()`` writes an index snapshot (``snapshot.py``), and opening the
directory again loads it. Without a usable snapshot (a crash), every region is scanned and
every whole entry that passes its checksum is indexed again. ``check()`` verifies the index
against the regions; fault tests call it after every crash.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from blobtier.checksum import xxh3
from blobtier.chunks import Buffer, ChunkKey
from blobtier.errors import InvalidRequest, TierUnavailable
from blobtier.eviction import check_shares
from blobtier.flash_l3 import snapshot
from blobtier.flash_l3.admission import AdmissionPolicy, AdmitAll
from blobtier.flash_l3.device import ALIGN, Device, DeviceFaults
from blobtier.flash_l3.index import Entry, Index
from blobtier.flash_l3.regions import (
    ENTRY_HEADER,
    Region,
    RegionManager,
    entry_span,
    pack_entry_header,
    parse_entry_header,
    parse_region_header,
    scan,
)

log = logging.getLogger(__name__)

DEFAULT_REGION_SIZE = 64 << 20
COUNTERS = ("hits", "located", "misses", "bytes_read", "bytes_written", "inserts", "admissions_rejected",
            "evicted_regions", "evicted_entries", "reinserted", "corrupt", "io_errors",
            "write_errors", "disk_full", "dropped", "recovered_entries", "discarded_entries")
_ZEROS = bytes(ALIGN)


class FlashCache:
    """A ``ChunkCache`` on the region files of ``root``. Thread-safe.

    Args:
        root: the cache directory (created if missing).
        capacity: most bytes the region files may take; at least two regions.
        region_size: bytes per region (a multiple of 4 KiB); a chunk must fit in one.
        admission: which offered chunks are written (default: all).
        reinsert_hits: > 0: when a region is reclaimed, entries read at least this many
            times since they were written are kept (copied forward, up to half a region).
        faults: failures to inject into the device (tests).
        full_retry_s: after a write fails with ENOSPC, admission stops this long.
        clock: monotonic seconds (tests).
        namespace_shares: ``{namespace: fraction of the capacity}`` kept for it.
    """

    trusted = False  # bytes on disk can rot: the chain re-verifies what it gets

    def __init__(self, root: str, capacity: int, *, region_size: int = DEFAULT_REGION_SIZE,
                 admission: AdmissionPolicy | None = None, reinsert_hits: int = 0,
                 faults: DeviceFaults | None = None, full_retry_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, name: str = "l3",
                 namespace_shares: Mapping[str, float] | None = None) -> None:
        if capacity < 2 * region_size:
            raise InvalidRequest(f"flash capacity {capacity} must hold at least two regions of "
                                 f"{region_size} bytes")
        self.root = root
        self.name = name
        self.admission = admission or AdmitAll()
        self.reinsert_hits = reinsert_hits
        self.namespace_shares = check_shares(namespace_shares or {}, "flash namespace share")
        self.full_retry_s = full_retry_s
        self._clock = clock
        self._full_until = float("-inf")
        self._lock = threading.Lock()
        self._closed = False
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.recovered_from = "empty"
        self._index = Index()
        self.device = Device(root, region_size, faults)
        self._regions = RegionManager(self.device, capacity // region_size)
        self.recover()

    @property
    def region_size(self) -> int:
        return self.device.region_size

    @property
    def capacity(self) -> int:
        return self._regions.max_regions * self.region_size

    @property
    def max_chunk(self) -> int:
        """The largest chunk one region can hold."""
        return self.region_size - ALIGN - ENTRY_HEADER

    # -- reading -------------------------------------------------------------------------
    def get_many(self, keys: Sequence[ChunkKey], touch: bool = True) -> dict[ChunkKey, memoryview]:
        out = {}
        for key in keys:
            view = self.get(key, touch)
            if view is not None:
                out[key] = view
        return out

    def get(self, key: ChunkKey, touch: bool = True) -> memoryview | None:
        """The chunk's bytes (checked against their header and checksum), or None."""
        digest = key.digest()
        self.admission.accessed(digest)
        with self._lock:
            self._check_open()
            entry = self._index.touch(digest) if touch else self._index.get(digest)
        if entry is None:
            self._count("misses")
            return None
        try:
            buf = self.device.read(entry.slot, entry.offset, entry_span(entry.length))
        except OSError as exc:
            log.warning("flash read of %s failed: %s; dropping the entry", key, exc)
            self._drop_bad(digest, entry, "io_errors")
            return None
        head = parse_entry_header(buf)
        data = memoryview(buf)[ENTRY_HEADER:ENTRY_HEADER + entry.length]
        if (head is None or head.seq != entry.seq or head.key != key or head.length != entry.length
                or head.xxh3 != entry.xxh3 or len(data) != entry.length or xxh3(data) != entry.xxh3):
            self._drop_bad(digest, entry, "corrupt")
            return None
        with self._lock:
            self.counters["hits"] += 1
            self.counters["bytes_read"] += entry.length
        return data.toreadonly()

    def locate(self, keys: Sequence[ChunkKey], touch: bool = True) -> tuple[str, list[Entry | None]]:
        """Where each chunk's entry lies (None for a miss), for a reader on this host that
        reads the region files itself (``local_reads.py``); each one found is a hit.

        A miss is neither counted nor shown to the admission policy here: the reader asks
        for it with a Get next, which does both (once).
        """
        entries: list[Entry | None] = []
        with self._lock:
            self._check_open()
            for key in keys:
                digest = key.digest()
                entry = self._index.touch(digest) if touch else self._index.get(digest)
                entries.append(entry)
                if entry is not None:
                    self.counters["hits"] += 1
                    self.counters["located"] += 1
        return self.device.root, entries

    def _drop_bad(self, digest: bytes, entry: Entry, why: str) -> None:
        with self._lock:
            region = self._regions.regions.get(entry.slot)
            self.counters["misses"] += 1
            if region is None or region.seq != entry.seq:
                return  # the region was reclaimed while we read: an ordinary miss
            if self._index.remove(digest, expect=entry):
                what = "read" if why == "io_errors" else "checksum"
                log.warning("flash entry %s in region %d at %d failed its %s check; dropped",
                            digest.hex(), entry.slot, entry.offset, what)
                self.counters[why] += 1

    def contains(self, key: ChunkKey) -> bool:
        with self._lock:
            return key.digest() in self._index

    # -- writing -------------------------------------------------------------------------
    def set_namespace_shares(self, shares: Mapping[str, float]) -> None:
        """Replace the per-namespace shares (module docstring). Raises ``InvalidRequest``
        naming a bad entry; nothing changes then."""
        shares = check_shares(shares, "flash namespace share")
        with self._lock:
            self.namespace_shares = shares

    def namespace_bytes(self) -> dict[str, int]:
        """Bytes cached per namespace (of the entries filed under one)."""
        with self._lock:
            return dict(self._index.ns_bytes)

    def put(self, key: ChunkKey, data: Buffer, touch: bool = True, namespace: str = "") -> bool:
        """Offer a chunk (of ``namespace``: shares); True if it is cached now. The
        admission policy and a full disk may decline it."""
        view = memoryview(data).cast("B")
        digest = key.digest()
        if len(view) > self.max_chunk or self._disk_full() or not self.admission.admit(digest, len(view)):
            self._count("admissions_rejected")
            return False
        return self.insert(key, view, namespace=namespace)

    def insert(self, key: ChunkKey, data: Buffer, checksum: int | None = None, namespace: str = "") -> bool:
        """Write a chunk past the admission policy (a prefetch asked for it); a full disk
        still declines it."""
        view = memoryview(data).cast("B")
        n, digest = len(view), key.digest()
        if n > self.max_chunk or self._disk_full():
            self._count("admissions_rejected")
            return False
        h = xxh3(view) if checksum is None else checksum
        with self._lock:
            self._check_open()
            if digest in self._index:
                return True  # chunks never change: the cached copy is as good
            try:
                got = self._reserve(entry_span(n), namespace)
            except OSError as exc:
                self._write_failed(exc)
                return False
            if got is None:
                self.counters["admissions_rejected"] += 1
                return False
            region, at = got
        return self._write(region, at, key, digest, view, h, namespace=namespace)

    def _write(self, region: Region, at: int, key: ChunkKey, digest: bytes, view: memoryview,
               h: int, hits: int = 0, namespace: str = "") -> bool:
        n = len(view)
        pad = entry_span(n) - ENTRY_HEADER - n
        try:
            self.device.write(region.slot, at, [pack_entry_header(region.seq, key, n, h), view,
                                                _ZEROS[:pad]])
        except OSError as exc:
            with self._lock:
                region.writers -= 1
                self._write_failed(exc)
            return False
        with self._lock:
            region.writers -= 1
            self._index.insert(digest, Entry(region.slot, region.seq, at, n, h, hits), namespace)
            region.keys.append(digest)
            self.counters["inserts"] += 1
            self.counters["bytes_written"] += n
        return True

    def _write_failed(self, exc: OSError) -> None:
        """Called with the lock held."""
        self.counters["write_errors"] += 1
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            self.counters["disk_full"] += 1
            self._full_until = self._clock() + self.full_retry_s
            log.warning("flash cache %s: disk full (%s); admission stops for %.0f s",
                        self.root, exc, self.full_retry_s)
        else:
            log.warning("flash cache %s: write failed: %s", self.root, exc)

    def _disk_full(self) -> bool:
        return self._clock() < self._full_until

    def _reserve(self, span: int, namespace: str = "") -> tuple[Region, int] | None:
        """(region, offset) for an append of ``namespace``; reclaims a region when the open
        one is full. Called with the lock held; ``OSError`` when no region could be made ready."""
        got = self._regions.reserve(span)
        if got is None:
            self._regions.seal()
            if self._fresh_region(namespace) is None:
                return None
            got = self._regions.reserve(span)
        return got

    def _fresh_region(self, namespace: str = "") -> Region | None:
        if self._regions.can_grow():
            try:
                return self._regions.grow()
            except OSError as exc:
                if exc.errno != errno.ENOSPC or not self._regions.sealed:
                    raise
                # The disk holds fewer regions than the capacity asks for: make do with them.
                self._regions.max_regions = len(self._regions.regions)
                self.counters["disk_full"] += 1
                log.warning("flash cache %s: disk full at %d regions; capacity is now %d bytes",
                            self.root, len(self._regions.regions), self.capacity)
        # A region still being written to is never reclaimed: its writers would land in
        # the next generation. Only the newest sealed regions can have writers.
        victim = next((r for r in self._regions.sealed if not r.writers), None)
        if victim is None:
            return None
        kept = self._evict(victim, namespace)
        self._regions.start(victim)
        for key, data, h, hits, ns in kept:
            got = self._regions.reserve(entry_span(len(data)))
            if got is not None:
                self._reinsert(got, key, data, h, hits, ns)
        return victim

    def _evict(self, region: Region, filler: str = "") -> list[tuple[ChunkKey, memoryview, int, int, str]]:
        """Drop a region's entries from the index (for a fill of ``filler``); return those
        to copy forward: first what keeps other namespaces at their shares, then hot ones."""
        ns_of = {d: self._index.namespace(d) for d in region.keys} if self.namespace_shares else {}
        keep = self._share_keep(region, ns_of, filler)
        gone = self._index.evict(region.keys, region.slot, region.seq)
        self.counters["evicted_regions"] += 1
        self.counters["evicted_entries"] += len(gone)
        kept: list[tuple[ChunkKey, memoryview, int, int, str]] = []
        budget = self.region_size - ALIGN
        for digest, entry in gone:  # kept for a share: the whole region may be needed
            ns = ns_of.get(digest, "")
            if keep.get(ns, 0) > 0 and (got := self._copy(entry, budget, entry.hits)) is not None:
                kept.append((*got, ns))
                keep[ns] -= entry.length
                budget -= entry_span(entry.length)
        if not self.reinsert_hits:
            return kept
        copied = {k[0].digest() for k in kept}
        hot = min(budget, (self.region_size - ALIGN) // 2)
        for digest, entry in gone:
            if entry.hits < self.reinsert_hits or digest in copied:
                continue
            if (got := self._copy(entry, hot, entry.hits - self.reinsert_hits)) is not None:
                kept.append((*got, ns_of.get(digest, "")))
                hot -= entry_span(entry.length)
        return kept

    def _share_keep(self, region: Region, ns_of: dict[bytes, str], filler: str) -> dict[str, int]:
        """Per namespace with a share (but the filler's): bytes of ``region`` to keep so
        that reclaiming it leaves the namespace at its share (or what it holds, if less)."""
        here: dict[str, int] = {}
        for digest, ns in ns_of.items():
            entry = self._index.get(digest)
            if ns in self.namespace_shares and ns != filler and entry is not None \
                    and entry.slot == region.slot and entry.seq == region.seq:
                here[ns] = here.get(ns, 0) + entry.length
        keep = {}
        for ns, n in here.items():
            share = int(self.namespace_shares[ns] * self.capacity)
            keep[ns] = min(n, max(0, share - (self._index.ns_bytes[ns] - n)))
        return keep

    def _copy(self, entry: Entry, budget: int, hits: int) -> tuple[ChunkKey, memoryview, int, int] | None:
        """An evicted entry's (key, bytes, xxh3, hits) read back to copy forward, if it fits
        ``budget`` and reads back whole."""
        span = entry_span(entry.length)
        if span > budget:
            return None
        try:
            buf = self.device.read(entry.slot, entry.offset, span)
        except OSError:
            return None
        head = parse_entry_header(buf)
        data = memoryview(buf)[ENTRY_HEADER:ENTRY_HEADER + entry.length]
        if head is None or head.seq != entry.seq or xxh3(data) != entry.xxh3:
            return None
        return head.key, data, entry.xxh3, hits

    def _reinsert(self, got: tuple[Region, int], key: ChunkKey, data: memoryview, h: int,
                  hits: int, namespace: str = "") -> None:
        """Write a kept entry into the new open region; called with the lock held (only
        while a region is reclaimed, so the copy cannot race the reclaim it is part of)."""
        region, at = got
        n = len(data)
        try:
            self.device.write(region.slot, at, [pack_entry_header(region.seq, key, n, h), data,
                                                _ZEROS[:entry_span(n) - ENTRY_HEADER - n]])
        except OSError as exc:
            self._write_failed(exc)
            region.writers -= 1
            return
        region.writers -= 1
        self._index.insert(key.digest(), Entry(region.slot, region.seq, at, n, h, hits), namespace)
        region.keys.append(key.digest())
        self.counters["reinserted"] += 1

    # -- admin -----------------------------------------------------------------------------
    def drop(self, keys: Iterable[ChunkKey]) -> int:
        """Forget some chunks; returns how many were cached. Their bytes stay in their
        regions until reclaimed (a crash may bring them back, still correct)."""
        with self._lock:
            n = sum(self._index.remove(k.digest()) for k in keys)
            self.counters["dropped"] += n
            return n

    def drop_all(self) -> int:
        """Forget everything and delete the region files (one still being appended to goes
        at its next reclaim)."""
        with self._lock:
            n = len(self._index)
            self._index.clear()
            for region in list(self._regions.regions.values()):
                if not region.writers:
                    self._regions.discard(region)
            self.counters["dropped"] += n
            return n

    def resize(self, capacity: int) -> None:
        """Change the capacity; shrinking evicts the oldest regions and deletes their files."""
        if capacity < 2 * self.region_size:
            raise InvalidRequest(f"flash capacity {capacity} must hold at least two regions of "
                                 f"{self.region_size} bytes")
        with self._lock:
            self._regions.max_regions = capacity // self.region_size
            self._full_until = float("-inf")
            self._shrink()

    def _shrink(self) -> None:
        while len(self._regions.regions) > self._regions.max_regions:
            victim = next((r for r in self._regions.in_fifo_order() if not r.writers), None)
            if victim is None:
                return  # every region has writers in flight; the next reclaim finishes the job
            self._index.evict(victim.keys, victim.slot, victim.seq)
            self.counters["evicted_regions"] += 1
            self._regions.discard(victim)

    # -- warm restart ------------------------------------------------------------------------
    def persist(self) -> None:
        """Write the index snapshot (``close`` does; so can an operator before a restart)."""
        with self._lock:
            snap = snapshot.Snapshot(self.region_size, self._regions.next_seq,
                                     [(r.slot, r.seq, r.end) for r in self._regions.in_fifo_order()],
                                     list(self._index.items()))
        snapshot.write(self.root, snap)

    def recover(self) -> None:
        """Rebuild the index: from the snapshot of a clean stop, else by scanning regions."""
        snap = snapshot.take(self.root)
        regions = self._from_snapshot(snap) if snap is not None else None
        if regions is None:
            regions = self._scan_all()
        else:
            self.recovered_from = "snapshot"
            self.counters["recovered_entries"] = len(self._index)
        self._regions.adopt(regions)
        self._shrink()  # the capacity may have shrunk since the last run

    def _from_snapshot(self, snap: snapshot.Snapshot) -> list[Region] | None:
        slots = {slot for slot, _, _ in snap.regions}
        if snap.region_size != self.region_size or slots != set(self.device.slots()):
            return None
        regions = {}
        for slot, seq, end in snap.regions:
            try:
                head = self.device.read(slot, 0, ALIGN)
            except OSError:
                return None
            on_disk = parse_region_header(head, slot, self.region_size)
            if on_disk != seq or not ALIGN <= end <= self.region_size:
                return None  # the regions moved on since the snapshot was taken
            regions[slot] = Region(slot, seq, end)
        for digest, entry in snap.entries:
            self._index.insert(digest, entry)
            regions[entry.slot].keys.append(digest)
        self._regions.next_seq = snap.next_seq
        return list(regions.values())

    def _scan_all(self) -> list[Region]:
        slots = self.device.slots()
        if not slots:
            return []
        self.recovered_from = "scan"
        with ThreadPoolExecutor(min(4, len(slots)), thread_name_prefix="blobtier-flash-scan") as pool:
            results = list(pool.map(self._scan_one, slots))
        regions = []
        for slot, (region, entries, bad) in zip(slots, results):
            self.counters["discarded_entries"] += bad
            if region is None:
                self.device.remove(slot)  # never written, or not ours: it holds nothing
                continue
            regions.append((region, entries))
        for region, entries in sorted(regions, key=lambda re: re[0].seq):
            for e in entries:  # a chunk written twice: the newest copy wins
                self._index.insert(e.key.digest(), Entry(region.slot, region.seq, e.offset, e.length, e.xxh3))
        self.counters["recovered_entries"] = len(self._index)
        log.info("flash cache %s: rebuilt %d entries from %d regions (%d discarded)",
                 self.root, len(self._index), len(regions), self.counters["discarded_entries"])
        return [region for region, _ in regions]

    def _scan_one(self, slot: int) -> tuple:
        try:
            return scan(self.device, slot)
        except OSError as exc:
            log.warning("flash region %d unreadable (%s); dropping it", slot, exc)
            return None, [], 0

    # -- inspection ----------------------------------------------------------------------------
    def stats(self) -> dict[str, float]:
        with self._lock:
            out: dict[str, float] = dict(self.counters)
            out.update(entries=len(self._index), cached_bytes=self._index.bytes,
                       used_bytes=self._regions.used_bytes(), capacity=self.capacity,
                       regions=len(self._regions.regions), region_size=self.region_size,
                       region_fill=self._regions.used_bytes() / self.capacity,
                       admission_paused=float(self._disk_full()))
        for name, value in self.device.counters.items():
            out[f"device_{name}"] = value
        return out

    def check(self, deep: bool = False) -> list[str]:
        """Problems found comparing the index with the regions (empty: consistent).

        ``deep`` also reads every entry and verifies its header and checksum.
        """
        with self._lock:
            problems = _check_layout(self._index, self._regions)
            entries = list(self._index.items())
        if deep:
            for digest, e in entries:
                try:
                    buf = self.device.read(e.slot, e.offset, entry_span(e.length))
                except OSError as exc:
                    problems.append(f"entry {digest.hex()}: unreadable: {exc}")
                    continue
                head = parse_entry_header(buf)
                data = memoryview(buf)[ENTRY_HEADER:ENTRY_HEADER + e.length]
                if head is None or head.key.digest() != digest or xxh3(data) != e.xxh3:
                    problems.append(f"entry {digest.hex()}: header or checksum does not match")
        return problems

    def _count(self, name: str) -> None:
        with self._lock:
            self.counters[name] += 1

    def _check_open(self) -> None:
        if self._closed:
            raise TierUnavailable(f"flash cache {self.root} is closed")

    def close(self) -> None:
        """Stop taking requests, write the index snapshot and close the region files."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            writing = sum(r.writers for r in self._regions.regions.values())
        if writing:
            # An append still in flight would be indexed after the snapshot: skip the
            # snapshot, and the next start rebuilds by scanning (nothing is lost).
            log.warning("flash cache %s closed with %d writes in flight; no snapshot", self.root, writing)
        else:
            self.persist()
        self.device.close()

    def __repr__(self) -> str:
        return f"<FlashCache {self.root} {len(self._index)} entries, capacity {self.capacity}>"


def _check_layout(index: Index, regions: RegionManager) -> list[str]:
    problems = []
    if len(regions.regions) > regions.max_regions:
        problems.append(f"{len(regions.regions)} regions exceed the limit of {regions.max_regions}")
    files = set(regions.device.slots())
    if files != set(regions.regions):
        problems.append(f"region files {sorted(files)} != regions {sorted(regions.regions)}")
    spans: dict[int, list[tuple[int, int]]] = {}
    total = 0
    for digest, e in index.items():
        total += e.length
        region = regions.regions.get(e.slot)
        if region is None or region.seq != e.seq:
            problems.append(f"entry {digest.hex()} points at region {e.slot} generation {e.seq}, "
                            "which is gone")
        elif not ALIGN <= e.offset or e.offset + entry_span(e.length) > region.end:
            problems.append(f"entry {digest.hex()} lies outside the written part of region {e.slot}")
        spans.setdefault(e.slot, []).append((e.offset, e.offset + entry_span(e.length)))
    for slot, ranges in spans.items():
        ranges.sort()
        for (_, end), (start, _) in zip(ranges, ranges[1:]):
            if start < end:
                problems.append(f"entries overlap in region {slot} at {start}")
    if total != index.bytes:
        problems.append(f"index counts {index.bytes} bytes, entries hold {total}")
    return problems

