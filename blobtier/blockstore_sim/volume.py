"""One simulated chunk server's disk: append-only volumes with an index (Haystack-style).

Small chunks must not cost a file and an fsync each, so chunks are packed into volume
files; a chunk's bytes are found through an in-memory index ``digest -> location``::

    <root>/00000001.dat   entries: header (40 B) | data
    <root>/00000001.idx   one 48-byte index entry per volume entry, appended only after
                          the data is durable
    <root>/space.reserve  disk space held back so that deletes and compaction can run
                          on a full disk (a writer's; given up when the disk is full)

Volume header: magic 'BTV1' | digest 16s | kind u8 | pad 3 | length u32 | xxh3 u64 | crc32c u32
Index entry:   digest 16s | kind u8 | pad 3 | data offset u64 | length u32 | xxh3 u64 |
               written unix-seconds u32 | crc32c u32

Kinds: 1 = put, 2 = delete (a tombstone with no data).

**The data file is the truth; the index is a cache of it.** Every entry describes itself
(magic, a crc32c of its header, the xxh3 of its data), so a writable open rebuilds whatever
the index lacks or has damaged (a flipped byte, a torn append, a lost tail) by scanning the
data it should have covered. A scan that meets a damaged entry skips it and resynchronises
at the next header that checks out; every valid entry before and after it is kept. A data
file is never cut short past a damaged entry: only the bytes after a volume's last valid
entry (a torn append, never acknowledged) are truncated. Entries indexed from the data get
the time of that open as their write time, which only makes ``gc`` wait longer for them.

What is fsynced when (so an acknowledged write survives power loss, not only a crash):

- data: ``put_many`` and ``delete_many`` return after ``fdatasync`` of every volume they
  appended to. Group commit: one leader syncs for every append made before its round
  began, so concurrent and batched writes share fsyncs.
- index: appended after the data sync and never fsynced on the write path; what a power
  cut takes from it is rebuilt from the data. A rebuilt index replaces the old one
  atomically (write a temp file, fsync, rename, fsync the directory).
- directory: a new store's directory, and a new volume's files, are created and their
  directory fsynced before anything is written to them; a removed volume's unlinks are
  fsynced before the next step that relies on them (compaction drops a tombstone only
  once what it hid is gone for good).

An fsync failure of the data poisons the store (as PostgreSQL does): the page cache can no
longer be trusted, so every later write fails until it is reopened. A failed index append
costs nothing but that index entry (rebuilt at the next open).

One process writes (``writable=True``); any number of processes read. Readers only trust
index entries, which exist only for durable data, and pick up new ones on a lookup miss;
a damaged slot inside an index is skipped, one at its end is read again later.

``compact`` gives back the space of deleted and overwritten chunks. A volume's live
entries are copied to the end of the newest volume (checksums verified on the way: a
damaged chunk is dropped, never copied), each chunk's location switches to its copy when
the copy is durable, the tombstones still hiding a put in an older volume are copied too,
then the old volume is unlinked. It runs online: reads never wait for it, and a view
handed out earlier stays valid, because files are only ever appended to or unlinked whole
and an unlinked file lives on while it is mapped. A crash at any step leaves the old entry,
a valid copy, or both, never neither. On a full disk it deletes before it writes: volumes
with nothing live go first (no writes), then the most-dead volumes whose live bytes fit in
the free space; a tombstone or copy that finds the disk full gives up the reserve file.

Reads are zero-copy: volumes are memory-mapped and ``get`` returns a read-only view.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import re
import signal
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from blobtier import region_id
from blobtier.checksum import crc32c, xxh3
from blobtier.errors import (
    BlobNotFound,
    ChecksumError,
    InvalidRequest,
    OutOfRange,
    StorageFull,
    TierUnavailable,
)
from blobtier.fsutil import open_private, private_dir

log = logging.getLogger(__name__)

Buffer = bytes | bytearray | memoryview
Loc = tuple[int, int, int, int, int]  # volume, data offset, length, xxh3, written
Entry = tuple[bytes, int, int, int, int, int]  # digest, kind, data offset, length, xxh3, written

PUT, DELETE = 1, 2
_HDR = struct.Struct("<4s16sB3xIQ")  # + crc32c u32
_IDX = struct.Struct("<16sB3xQIQI")  # + crc32c u32
HEADER_SIZE = _HDR.size + 4
INDEX_SIZE = _IDX.size + 4
_MAGIC = b"BTV1"
_NAME = re.compile(r"(\d{8})\.(idx|dat)")
_TMP = ".tmp"
RESERVE_NAME = "space.reserve"
DEFAULT_VOLUME_BYTES = 1 << 30
DEFAULT_RESERVE_BYTES = 4 << 20  # ~100,000 tombstones
DEFAULT_DEAD_RATIO = 0.2  # compact a volume once this share of its bytes is dead
_COPY_BATCH_BYTES = 32 << 20  # live bytes copied per group commit while compacting

# Test hook: a process whose environment names a step here kills itself (SIGKILL, as a
# power cut would stop it) when it reaches that step. Steps: data-synced, index-written,
# compact-rolled, compact-copying, compact-copied, compact-index-removed,
# compact-data-removed.
CRASH_ENV = "_BLOBTIER_TEST_CRASH_AT"


def _crash_point(step: str) -> None:
    if os.environ.get(CRASH_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def _now() -> int:
    """A write time as the index records it."""
    return int(time.time())


def _pack_header(digest: bytes, kind: int, length: int, h: int) -> bytes:
    head = _HDR.pack(_MAGIC, digest, kind, length, h)
    return head + struct.pack("<I", crc32c(head))


def _pack_index(digest: bytes, kind: int, offset: int, length: int, h: int, written: int) -> bytes:
    body = _IDX.pack(digest, kind, offset, length, h, written)
    return body + struct.pack("<I", crc32c(body))


def _parse_index(buf: Buffer) -> tuple[list[Entry], int]:
    """The valid entries of (a tail of) an index, damaged slots skipped, and the bytes
    consumed: up to the last valid slot, so that a slot still being appended is read again."""
    view = memoryview(buf)
    entries: list[Entry] = []
    consumed = 0
    for pos in range(0, len(view) - INDEX_SIZE + 1, INDEX_SIZE):
        slot = view[pos:pos + INDEX_SIZE]
        (crc,) = struct.unpack_from("<I", slot, _IDX.size)
        if crc32c(slot[:_IDX.size]) != crc:
            continue
        entry = _IDX.unpack_from(slot)
        if entry[1] in (PUT, DELETE):
            entries.append(entry)
            consumed = pos + INDEX_SIZE
    return entries, consumed


def _entry_at(view: memoryview, pos: int, end: int) -> tuple[bytes, int, int, int] | None:
    """(digest, kind, length, xxh3) of a whole, valid entry at ``pos``; None if there is none."""
    if pos + HEADER_SIZE > end:
        return None
    head = view[pos:pos + HEADER_SIZE]
    (crc,) = struct.unpack_from("<I", head, _HDR.size)
    if crc32c(head[:_HDR.size]) != crc:
        return None
    magic, digest, kind, length, h = _HDR.unpack_from(head)
    start = pos + HEADER_SIZE
    if magic != _MAGIC or start + length > end:
        return None
    if kind == DELETE:
        return (digest, kind, 0, 0) if length == 0 else None
    if kind != PUT or xxh3(view[start:start + length]) != h:
        return None
    return digest, kind, length, h


def _scan(m: mmap.mmap, pos: int, end: int, written: int) -> tuple[list[Entry], int]:
    """The whole, valid entries of ``m[pos:end]`` and where the last of them ends (``pos``
    if none). After a damaged entry the scan resumes at the next magic that starts a valid
    entry, so one bad entry never hides the ones after it."""
    found: list[Entry] = []
    last = pos
    with memoryview(m) as view:
        while pos + HEADER_SIZE <= end:
            entry = _entry_at(view, pos, end)
            if entry is None:
                pos = m.find(_MAGIC, pos + 1, end)
                if pos < 0:
                    break
                continue
            digest, kind, length, h = entry
            found.append((digest, kind, pos + HEADER_SIZE, length, h, written))
            pos += HEADER_SIZE + length
            last = pos
    return found, last


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_root(root: str) -> None:
    """Create ``root`` (and missing parents), durably: each new directory's name is
    fsynced into its parent, or a power cut could take a fresh store with its data."""
    created = []
    at = os.path.abspath(root)
    while not os.path.isdir(at):
        created.append(at)
        at = os.path.dirname(at)
    private_dir(root)
    for path in created:
        _fsync_dir(os.path.dirname(path))


def _write_error(root: str, exc: OSError) -> Exception:
    if exc.errno == errno.ENOSPC:
        return StorageFull(f"chunk store {root}: {exc}")
    return TierUnavailable(f"chunk store {root}: {exc}")


@dataclass(frozen=True)
class CompactReport:
    """What one ``compact`` did. Bytes are those of the volume files (data and index)."""

    volumes: int = 0  # volumes rewritten or removed
    bytes_before: int = 0
    bytes_after: int = 0
    moved_bytes: int = 0  # live entries copied forward, headers included
    skipped: int = 0  # volumes left for lack of free space
    dropped_corrupt: int = 0  # chunks that failed their checksum and were dropped, not copied

    @property
    def reclaimed(self) -> int:
        return max(0, self.bytes_before - self.bytes_after)


class _Index:
    """Where each chunk is, and what each volume holds (what compaction must keep)."""

    def __init__(self) -> None:
        self.locs: dict[bytes, Loc] = {}
        self.live: dict[int, int] = {}  # volume -> bytes of its live entries, headers included
        self.dead: dict[int, set[bytes]] = {}  # volume -> digests of its deleted or superseded puts
        self.graves: dict[bytes, int] = {}  # absent digest -> volume of its latest tombstone
        self.pos: dict[int, int] = {}  # readers: bytes of each volume's index applied
        self.ino: dict[int, int] = {}  # readers: the index file those bytes came from

    def apply(self, vol: int, entry: Entry) -> None:
        digest, kind, offset, length, h, written = entry
        old = self.locs.pop(digest, None)
        if old is not None:
            self.live[old[0]] = self.live.get(old[0], 0) - HEADER_SIZE - old[2]
            self.dead.setdefault(old[0], set()).add(digest)
        if kind == PUT:
            self.locs[digest] = (vol, offset, length, h, written)
            self.live[vol] = self.live.get(vol, 0) + HEADER_SIZE + length
            self.graves.pop(digest, None)
        else:
            self.graves[digest] = vol

    def live_in(self, vol: int) -> list[tuple[bytes, Loc]]:
        return sorted(((d, loc) for d, loc in self.locs.items() if loc[0] == vol),
                      key=lambda item: item[1][1])

    def needed_graves(self, vol: int) -> list[bytes]:
        """Tombstones in ``vol`` that still hide a put in an older volume."""
        older = [digests for v, digests in self.dead.items() if v < vol]
        return [d for d, v in self.graves.items() if v == vol and any(d in s for s in older)]

    def forget(self, vol: int) -> None:
        """``vol`` is gone from disk, with every put and tombstone in it."""
        self.live.pop(vol, None)
        self.dead.pop(vol, None)
        for digest in [d for d, v in self.graves.items() if v == vol]:
            del self.graves[digest]


class VolumeStore:
    """A ``ChunkStore`` on local disk. Thread-safe; one writer process, many readers.

    Args:
        root: the directory of volume files (a writer creates it).
        writable: open as the one writer: recover every volume, then take appends.
        volume_bytes: a volume rolls over to the next once it would grow past this.
        reserve_bytes: disk space a writer holds back for deletes and compaction on a
            full disk (0: none).
    """

    def __init__(self, root: str, *, writable: bool = False,
                 volume_bytes: int = DEFAULT_VOLUME_BYTES,
                 reserve_bytes: int = DEFAULT_RESERVE_BYTES) -> None:
        self.root = root
        self.writable = writable
        self.volume_bytes = volume_bytes
        self.reserve_bytes = reserve_bytes
        self._ix = _Index()
        self._maps: dict[int, mmap.mmap] = {}
        self._lock = threading.Condition()
        self._closed = False
        if writable:
            _make_root(root)
            self._synced_seq = self._written_seq = 0
            self._syncing = False
            self._broken: BaseException | None = None
            self._pending: list[tuple[int, Entry]] = []  # appended, not yet durable
            self._unapplied: dict[bytes, int] = {}  # digest -> its appended entries not yet applied
            self._dirty: set[int] = set()
            self._fds: dict[int, tuple[int, int]] = {}  # volume -> (dat fd, idx fd)
            self._sizes: dict[int, int] = {}  # volume -> bytes of its data (the newest: _tail)
            self._compacting = threading.Lock()
            self._recover()
            self._hold_reserve()
        else:
            self._refresh()

    # -- reading ---------------------------------------------------------------------
    def get(self, digest: bytes, offset: int = 0, length: int = -1) -> memoryview:
        for _ in range(3):
            vol, start, size = self._locate(digest)[:3]
            if offset < 0 or offset > size:
                raise OutOfRange(f"offset {offset} outside chunk of {size} bytes")
            n = size - offset if length < 0 else length
            if offset + n > size:
                raise OutOfRange(f"range {offset}+{n} past the end of a {size}-byte chunk")
            try:
                return self._view(vol, start + offset, n)
            except FileNotFoundError:  # compacted away: the chunk moved to a newer volume
                if not self.writable:
                    self._refresh()
        raise BlobNotFound(f"chunk {digest.hex()} not in {self.root}")

    def stored_checksum(self, digest: bytes) -> int:
        """The xxh3 recorded when the chunk was written."""
        return self._locate(digest)[3]

    def info(self, digest: bytes) -> tuple[int, int, int]:
        """(length, xxh3, written unix seconds) of a stored chunk; ``BlobNotFound`` if absent."""
        loc = self._locate(digest)
        return loc[2], loc[3], loc[4]

    def exists(self, digest: bytes) -> bool:
        try:
            self._locate(digest)
        except BlobNotFound:
            return False
        return True

    @property
    def _index(self) -> dict[bytes, Loc]:
        """digest -> (volume, data offset, length, xxh3, written): where tests find a chunk."""
        return self._ix.locs

    def _locate(self, digest: bytes) -> Loc:
        if self._closed:  # its maps are gone: a read must not map its files again
            raise TierUnavailable(f"chunk store {self.root} is closed")
        loc = self._ix.locs.get(digest)
        if loc is None and not self.writable:
            self._refresh()
            loc = self._ix.locs.get(digest)
        if loc is None:
            raise BlobNotFound(f"chunk {digest.hex()} not in {self.root}")
        return loc

    def _view(self, vol: int, start: int, length: int) -> memoryview:
        m = self._maps.get(vol)
        if m is None or start + length > len(m):
            with self._lock:
                m = self._maps.get(vol)
                if m is None or start + length > len(m):
                    m = self._map(vol)
        return memoryview(m)[start:start + length].toreadonly()

    def _map(self, vol: int) -> mmap.mmap:
        if self._closed:  # closed while this read looked the chunk up
            raise TierUnavailable(f"chunk store {self.root} is closed")
        with open(self._path(vol, "dat"), "rb") as f:
            m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._maps[vol] = m  # an older, shorter map lives on while views of it exist
        return m

    def _refresh(self) -> None:
        """Apply index entries written since the last look (readers only).

        Any volume's index may have grown: the writer appends a group's index entries
        after its fsync, possibly after it has already rolled over to the next volume.
        One stat per volume tells which indexes to read on. A volume that is gone
        (compacted) or an index that was replaced or cut back (rebuilt by a writer's
        recovery) makes the reader build its whole index again, in volume order, into a
        new one that replaces the old at once.
        """
        with self._lock:
            ix = self._ix
            stamps = {}
            for vol in self._volumes():
                try:
                    st = os.stat(self._path(vol, "idx"))
                except FileNotFoundError:
                    continue
                stamps[vol] = (st.st_ino, st.st_size)
            if any(vol not in stamps or stamps[vol][0] != ino or stamps[vol][1] < ix.pos.get(vol, 0)
                   for vol, ino in ix.ino.items()):
                self._reload()
                return
            for vol, (_, size) in stamps.items():
                if size >= ix.pos.get(vol, 0) + INDEX_SIZE and not self._load_index(ix, vol):
                    self._reload()
                    return

    def _reload(self) -> None:
        ix = _Index()
        vols = self._volumes()
        for vol in vols:
            self._load_index(ix, vol)
        self._ix = ix
        for vol in [v for v in self._maps if v not in ix.ino]:
            del self._maps[vol]  # not closed: a view may still hold it; it goes with the last

    def _volumes(self) -> list[int]:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        return sorted({int(m.group(1)) for n in names if (m := _NAME.fullmatch(n))})

    def _load_index(self, ix: _Index, vol: int) -> bool:
        """Apply the new entries of one volume's index to ``ix``; False if the index is
        not the file ``ix`` read before (only a whole reload is right then)."""
        try:
            with open(self._path(vol, "idx"), "rb") as f:
                ino = os.fstat(f.fileno()).st_ino
                if ix.ino.setdefault(vol, ino) != ino:
                    return False
                pos = ix.pos.get(vol, 0)
                f.seek(pos)
                buf = f.read()
        except FileNotFoundError:
            return vol not in ix.ino
        entries, consumed = _parse_index(buf)
        for entry in entries:
            ix.apply(vol, entry)
        ix.pos[vol] = pos + consumed
        return True

    # -- writing ---------------------------------------------------------------------
    def put_many(self, items: Sequence[tuple[bytes, Buffer, int]]) -> None:
        """Store (digest, bytes, xxh3) items; durable when this returns.

        Raises:
            ChecksumError: an item's bytes do not match its xxh3 (nothing is stored: an
                entry whose bytes fail their own checksum would be dropped as damaged).
            InvalidRequest: a chunk of 4 GiB or more.
        """
        for digest, data, h in items:  # before any append: a refused batch stores nothing
            if len(data) >= 1 << 32:
                raise InvalidRequest(f"chunk of {len(data)} bytes is too large for a volume entry")
            if xxh3(data) != h:
                raise ChecksumError(f"chunk {digest.hex()}: its bytes do not match the xxh3 given")
        now = _now()
        with self._lock:
            self._check_writable()
            for digest, data, h in items:
                n = len(data)
                vol, at = self._append([_pack_header(digest, PUT, n, h), data])
                self._stage(vol, (digest, PUT, at + HEADER_SIZE, n, h, now))
            seq = self._bump()
        self._wait_durable(seq)

    def delete_many(self, digests: Iterable[bytes]) -> None:
        """Delete chunks (absent ones are skipped); durable when this returns.

        Raises:
            StorageFull: the disk is full even after giving up the reserve.
        """
        now = _now()
        with self._lock:
            self._check_writable()
            for digest in dict.fromkeys(digests):
                if digest in self._ix.locs:
                    vol, at = self._append_or_free([_pack_header(digest, DELETE, 0, 0)])
                    self._stage(vol, (digest, DELETE, at + HEADER_SIZE, 0, 0, now))
            seq = self._bump()
        self._wait_durable(seq)

    def _check_writable(self) -> None:
        if not self.writable:
            raise PermissionError(f"chunk store {self.root} is open read-only")
        if self._closed:
            raise TierUnavailable(f"chunk store {self.root} is closed")
        if self._broken is not None:
            raise TierUnavailable(f"chunk store {self.root} failed to sync and must be reopened: "
                                  f"{self._broken}")

    def _append(self, parts: list[Buffer]) -> tuple[int, int]:
        """Write one entry at the end of the newest volume (lock held); (volume, offset).

        A failed write leaves the end where it was: the next append overwrites whatever
        part of this one reached the file.
        """
        n = sum(len(p) for p in parts)
        try:
            if self._tail > 0 and self._tail + n > self.volume_bytes:
                self._roll()
            vol, at = self._current, self._tail
            done = os.pwritev(self._fds[vol][0], parts, at)
        except OSError as exc:  # ENOSPC, EIO: this write fails, reads go on
            raise _write_error(self.root, exc) from exc
        if done != n:
            raise StorageFull(f"chunk store {self.root}: short write ({done} of {n} bytes): "
                              "no space left on the device?")
        self._tail = at + n
        self._dirty.add(vol)
        return vol, at

    def _append_or_free(self, parts: list[Buffer]) -> tuple[int, int]:
        """``_append`` for deletes and compaction: on a full disk, give up the reserve."""
        try:
            return self._append(parts)
        except StorageFull:
            if not self._give_up_reserve():
                raise
            return self._append(parts)

    def _stage(self, vol: int, entry: Entry) -> None:
        self._pending.append((vol, entry))
        self._unapplied[entry[0]] = self._unapplied.get(entry[0], 0) + 1

    def _bump(self) -> int:
        self._written_seq += 1
        return self._written_seq

    def _roll(self) -> None:
        self._sizes[self._current] = self._tail
        self._open_volume(self._current + 1)

    def _wait_durable(self, seq: int) -> None:
        with self._lock:
            while self._synced_seq < seq:
                if self._closed:
                    raise TierUnavailable(f"chunk store {self.root} was closed before a write was synced")
                if self._broken is not None:
                    raise TierUnavailable(f"chunk store {self.root} failed to sync: {self._broken}")
                if self._syncing:
                    self._lock.wait()
                    continue
                self._sync_round()

    def _commit(self) -> None:
        """Wait until everything appended so far is durable and applied."""
        with self._lock:
            seq = self._bump()
        self._wait_durable(seq)

    def _sync_round(self) -> None:
        """Leader of one group commit; called and returns with the lock held."""
        self._syncing = True
        target, dirty, pending = self._written_seq, self._dirty, self._pending
        self._dirty, self._pending = set(), []
        fds = [self._fds[v] for v in sorted(dirty)]
        self._lock.release()
        try:
            for dat, _ in fds:
                os.fdatasync(dat)
            _crash_point("data-synced")
            by_vol: dict[int, list[bytes]] = {}
            for vol, entry in pending:
                by_vol.setdefault(vol, []).append(_pack_index(*entry))
            for vol, entries in by_vol.items():
                self._append_index(vol, b"".join(entries))
            _crash_point("index-written")
        except OSError as exc:
            self._broken = exc
            raise TierUnavailable(f"chunk store {self.root}: {exc}") from exc
        finally:
            self._lock.acquire()
            self._syncing = False
            self._lock.notify_all()
        for vol, entry in pending:
            self._ix.apply(vol, entry)
            left = self._unapplied.pop(entry[0]) - 1
            if left:
                self._unapplied[entry[0]] = left
        self._synced_seq = target

    def _append_index(self, vol: int, data: bytes) -> None:
        """Append index entries whose data is durable. A failure costs only these entries
        (the next writable open indexes them from the data), so it is logged, not raised;
        a torn append is cut back so that later entries stay aligned."""
        fd = self._fds[vol][1]
        size = os.fstat(fd).st_size
        for attempt in (1, 2):
            try:
                if os.write(fd, data) == len(data):
                    return
                raise OSError(errno.ENOSPC, "short write of an index")
            except OSError as exc:
                os.ftruncate(fd, size)
                if exc.errno == errno.ENOSPC and attempt == 1 and self._give_up_reserve():
                    continue
                log.warning("chunk store %s: index of volume %d not appended (%s); it is "
                            "rebuilt from the data at the next open", self.root, vol, exc)
                return

    def _open_volume(self, vol: int) -> int:
        created = not os.path.exists(self._path(vol, "dat"))
        dat = open_private(self._path(vol, "dat"), os.O_RDWR | os.O_CREAT)
        idx = open_private(self._path(vol, "idx"), os.O_RDWR | os.O_CREAT | os.O_APPEND)
        self._fds[vol] = (dat, idx)
        if created:  # the new names must outlive a power cut along with the data in them
            _fsync_dir(self.root)
        self._current, self._tail = vol, os.fstat(dat).st_size
        return vol

    # -- recovery --------------------------------------------------------------------
    def _recover(self) -> None:
        """Index every volume from its index and its data (the truth); open the newest."""
        self._remove_strays()
        vols = [v for v in self._volumes() if os.path.exists(self._path(v, "dat"))]
        now = _now()
        for vol in vols:
            for entry in self._recover_volume(vol, now):
                self._ix.apply(vol, entry)
        self._open_volume(vols[-1] if vols else 1)

    def _remove_strays(self) -> None:
        """Temp files of an interrupted index rebuild, and the index of a volume whose data
        a compaction had already removed."""
        removed = False
        for name in os.listdir(self.root):
            m = _NAME.fullmatch(name)
            stray = name.endswith(_TMP) or (
                m is not None and m.group(2) == "idx"
                and not os.path.exists(self._path(int(m.group(1)), "dat")))
            if stray:
                os.unlink(os.path.join(self.root, name))
                removed = True
        if removed:
            _fsync_dir(self.root)

    def _recover_volume(self, vol: int, now: int) -> list[Entry]:
        with open(self._path(vol, "dat"), "r+b") as f:
            size = os.fstat(f.fileno()).st_size
            entries, end, rebuilt = self._merge(vol, f.fileno(), size, now)
            if end < size:  # after the last valid entry: a torn append, never acknowledged
                f.truncate(end)
                os.fsync(f.fileno())
        self._sizes[vol] = end
        if rebuilt:
            self._write_index(vol, entries)
        return entries

    def _merge(self, vol: int, fd: int, size: int, now: int) -> tuple[list[Entry], int, bool]:
        """The volume's entries: the index's where the data backs them, and whatever a scan
        finds in the stretches no valid index entry covers. Also where the last entry ends,
        and whether the index must be rewritten."""
        try:
            with open(self._path(vol, "idx"), "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raw = b""
        indexed, consumed = _parse_index(raw)
        rebuilt = consumed != len(raw) or consumed != len(indexed) * INDEX_SIZE
        if size == 0:
            return [], 0, rebuilt or bool(indexed)
        out: list[Entry] = []
        pos = 0
        m = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
        try:
            for entry in indexed:
                start, stop = entry[2] - HEADER_SIZE, entry[2] + entry[3]
                if start < pos or stop > size:  # not backed by the data: drop it
                    rebuilt = True
                    continue
                if start > pos:  # a stretch whose index entries were lost or damaged
                    found, _ = _scan(m, pos, start, now)
                    out += found
                    rebuilt = rebuilt or bool(found)
                out.append(entry)
                pos = stop
            found, end = _scan(m, pos, size, now)
        finally:
            m.close()
        if found:
            log.info("chunk store %s: volume %d: %d entries indexed from the data",
                     self.root, vol, len(found))
        return out + found, end, rebuilt or bool(found)

    def _write_index(self, vol: int, entries: list[Entry]) -> None:
        """Replace a volume's index atomically with ``entries``."""
        path = self._path(vol, "idx")
        fd = open_private(path + _TMP, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            os.write(fd, b"".join(_pack_index(*e) for e in entries))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(path + _TMP, path)
        _fsync_dir(self.root)

    # -- space -----------------------------------------------------------------------
    def _reserve_path(self) -> str:
        return os.path.join(self.root, RESERVE_NAME)

    def _hold_reserve(self) -> None:
        """Set ``reserve_bytes`` of disk aside (best effort: not on a disk already full)."""
        if self.reserve_bytes <= 0:
            return
        path = self._reserve_path()
        try:
            if os.path.getsize(path) >= self.reserve_bytes:
                return
        except FileNotFoundError:
            pass
        try:
            fd = open_private(path, os.O_WRONLY | os.O_CREAT)
            try:
                os.posix_fallocate(fd, 0, self.reserve_bytes)
                os.fsync(fd)
            finally:
                os.close(fd)
            _fsync_dir(self.root)
        except OSError as exc:
            log.info("chunk store %s: no space reserve (%s)", self.root, exc)

    def _give_up_reserve(self) -> bool:
        """Free the reserve for a delete or a compaction; False if there is none left."""
        try:
            os.unlink(self._reserve_path())
        except FileNotFoundError:
            return False
        log.warning("chunk store %s: disk full; gave up the space reserve", self.root)
        return True

    def _free_bytes(self) -> int:
        st = os.statvfs(self.root)
        try:
            reserve = os.path.getsize(self._reserve_path())
        except FileNotFoundError:
            reserve = 0
        return st.f_bavail * st.f_frsize + reserve

    def _file_bytes(self) -> int:
        total = 0
        for vol in self._volumes():
            for ext in ("dat", "idx"):
                try:
                    total += os.path.getsize(self._path(vol, ext))
                except FileNotFoundError:
                    pass
        return total

    # -- compaction ------------------------------------------------------------------
    def compact(self, min_dead_ratio: float | None = None) -> CompactReport:
        """Give back the disk space of deleted and overwritten chunks.

        Removes the volumes with nothing live, then rewrites those with at least
        ``min_dead_ratio`` (default ``DEFAULT_DEAD_RATIO``) of their bytes dead, most
        dead bytes first, each only if its live bytes fit in the free space. Runs online;
        one compaction at a time. Returns what it did.

        Raises:
            InvalidRequest: ``min_dead_ratio`` outside [0, 1].
            PermissionError: the store is open read-only.
            TierUnavailable: the store is closed or failed.
        """
        ratio = DEFAULT_DEAD_RATIO if min_dead_ratio is None else min_dead_ratio
        if not 0.0 <= ratio <= 1.0:  # NaN too
            raise InvalidRequest(f"min_dead_ratio must be between 0 and 1, got {ratio!r}")
        self._check_writable()
        with self._compacting:
            before = self._file_bytes()
            done = skipped = moved = corrupt = 0
            for vol in self._plan(ratio):
                live = self._ix.live.get(vol, 0)
                # The copies, their index entries (~5% of small chunks) and a page or two.
                if live and live + live // 20 + (16 << 10) > self._free_bytes():
                    skipped += 1  # it would not fit: the next run may find room
                    continue
                try:
                    copied, bad = self._compact_volume(vol)
                except StorageFull as exc:
                    log.warning("chunk store %s: compaction stopped: %s", self.root, exc)
                    skipped += 1
                    break
                done, moved, corrupt = done + 1, moved + copied, corrupt + bad
            self._hold_reserve()
            return CompactReport(done, before, self._file_bytes(), moved, skipped, corrupt)

    def _plan(self, ratio: float) -> list[int]:
        """Volumes worth compacting: those with nothing live first (they cost no write),
        then by dead bytes, most first. If the newest is one, it is rolled over now, so
        that no copy lands in a volume about to be compacted."""
        with self._lock:
            sizes = {**self._sizes, self._current: self._tail}
            ranked = []
            for vol, size in sizes.items():
                live = self._ix.live.get(vol, 0)
                dead = size - live
                if size > 0 and (live == 0 or (dead > 0 and dead >= ratio * size)):
                    ranked.append((live > 0, -dead, vol))
            if any(vol == self._current for *_, vol in ranked):
                try:
                    self._roll()
                except OSError as exc:
                    raise _write_error(self.root, exc) from exc
        return [vol for _, _, vol in sorted(ranked)]

    def _compact_volume(self, vol: int) -> tuple[int, int]:
        """Copy ``vol``'s live entries and needed tombstones forward, then remove it;
        (bytes copied, chunks dropped as corrupt)."""
        self._commit()  # every entry of vol applied: the index says what in it is live
        _crash_point("compact-rolled")
        moved = corrupt = batch = 0
        try:
            for digest, loc in self._ix_snapshot(vol):
                n = self._copy(digest, loc)
                corrupt += n < 0
                moved += max(n, 0)
                batch += max(n, 0)
                if batch >= _COPY_BATCH_BYTES:
                    self._commit()
                    batch = 0
            self._copy_graves(vol)
        finally:
            self._commit()
        _crash_point("compact-copied")
        self._drop_volume(vol)
        return moved, corrupt

    def _ix_snapshot(self, vol: int) -> list[tuple[bytes, Loc]]:
        with self._lock:
            return self._ix.live_in(vol)

    def _copy(self, digest: bytes, loc: Loc) -> int:
        """Append a copy of one live entry; bytes copied, 0 if it is no longer live, -1
        if it failed its checksum (then it is deleted instead: never copy bad bytes)."""
        view = self._view(loc[0], loc[1], loc[2])
        good = xxh3(view) == loc[3]
        with self._lock:
            self._check_writable()
            if self._ix.locs.get(digest) != loc or digest in self._unapplied:
                return 0  # deleted or written again since: its newest entry decides
            if good:
                vol, at = self._append_or_free([_pack_header(digest, PUT, loc[2], loc[3]), view])
                self._stage(vol, (digest, PUT, at + HEADER_SIZE, loc[2], loc[3], loc[4]))
            else:
                log.warning("chunk store %s: chunk %s in volume %d fails its checksum; "
                            "compaction drops it", self.root, digest.hex(), loc[0])
                vol, at = self._append_or_free([_pack_header(digest, DELETE, 0, 0)])
                self._stage(vol, (digest, DELETE, at + HEADER_SIZE, 0, 0, _now()))
        _crash_point("compact-copying")
        return HEADER_SIZE + loc[2] if good else -1

    def _copy_graves(self, vol: int) -> None:
        with self._lock:
            self._check_writable()
            for digest in self._ix.needed_graves(vol):
                if digest in self._unapplied:
                    continue  # a newer put or delete of it is on its way
                v, at = self._append_or_free([_pack_header(digest, DELETE, 0, 0)])
                self._stage(v, (digest, DELETE, at + HEADER_SIZE, 0, 0, _now()))

    def _drop_volume(self, vol: int) -> None:
        with self._lock:
            if self._ix.live.get(vol, 0) or self._ix.needed_graves(vol):
                log.warning("chunk store %s: volume %d still holds live entries; kept",
                            self.root, vol)
                return
            self._ix.forget(vol)
            self._sizes.pop(vol, None)
            self._maps.pop(vol, None)  # not closed: views of it stay valid
            fds = self._fds.pop(vol, ())
        for fd in fds:
            os.close(fd)
        # The index goes first: a reader never sees entries whose data is gone.
        os.unlink(self._path(vol, "idx"))
        _crash_point("compact-index-removed")
        os.unlink(self._path(vol, "dat"))
        _crash_point("compact-data-removed")
        _fsync_dir(self.root)

    # -- maintenance -----------------------------------------------------------------
    def bound_region(self) -> str | None:
        """The id of the region these chunks belong to (``blobtier.region_id``); None for a
        store no gc has bound yet.

        Raises:
            MetadataCorrupt: the directory's marker is not an id.
        """
        return region_id.read(self.root)

    def bind_region(self, rid: str) -> None:
        """Record that this store's chunks belong to region ``rid`` (a writer; once)."""
        self._check_writable()
        if region_id.read(self.root) is None:
            region_id.write(self.root, rid)

    def digests(self) -> list[tuple[bytes, int]]:
        """(digest, written unix seconds) of every stored chunk; ``TierUnavailable`` once
        closed."""
        if self._closed:
            raise TierUnavailable(f"chunk store {self.root} is closed")
        if not self.writable:
            self._refresh()
        with self._lock:
            return [(d, loc[4]) for d, loc in self._ix.locs.items()]

    def stats(self) -> dict[str, int]:
        """Chunks and their bytes, volumes, and bytes of the volume files (data and index)."""
        with self._lock:
            ix = self._ix
            vols = len({*self._sizes, self._current}) if self.writable else len(ix.ino)
            return {"chunks": len(ix.locs), "bytes": sum(loc[2] for loc in ix.locs.values()),
                    "volumes": vols, "file_bytes": self._file_bytes()}

    def _path(self, vol: int, ext: str) -> str:
        return os.path.join(self.root, f"{vol:08d}.{ext}")

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for m in self._maps.values():
                try:
                    m.close()
                except BufferError:
                    pass  # a caller still holds a view; the map goes when the view does
            self._maps.clear()
            if self.writable:
                for dat, idx in self._fds.values():
                    os.close(dat)
                    os.close(idx)
                self._fds.clear()
