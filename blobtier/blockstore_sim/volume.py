"""One simulated chunk server's disk: append-only volumes with an index (Haystack-style).

Small chunks must not cost a file and an fsync each, so chunks are packed into volume
files; a chunk's bytes are found through an in-memory index ``digest -> location``::

    <root>/00000001.dat   entries: header (40 B) | data
    <root>/00000001.idx   one 48-byte index entry per volume entry, appended only after
                          the data is durable

Volume header: magic 'BTV1' | digest 16s | kind u8 | pad 3 | length u32 | xxh3 u64 | crc32c u32
Index entry:   digest 16s | kind u8 | pad 3 | data offset u64 | length u32 | xxh3 u64 |
               written unix-seconds u32 | crc32c u32

Kinds: 1 = put, 2 = delete (a tombstone with no data).

Durability is by group commit: ``put_many`` appends to the page cache under a lock, then
waits for a sync round; one leader fsyncs for every append made before the round began,
so concurrent and batched puts share fsyncs.

One process writes (``writable=True``); any number of processes read. Readers only trust
index entries, which exist only for durable data, and they pick up new entries on a
lookup miss. On a writable open the tail of every volume past its last indexed entry is
scanned: whole entries (header and data checksums good) are indexed, and a torn append
left by a crash is cut off. An fsync failure poisons the store (as PostgreSQL does): the
page cache can no longer be trusted, so every later write fails until it is reopened.

Reads are zero-copy: volumes are memory-mapped and ``get`` returns a read-only view. Files
are only ever appended to or unlinked whole, never rewritten, so a view stays valid.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
import threading
import time
from collections.abc import Iterable, Iterator, Sequence

from blobtier.checksum import crc32c, xxh3
from blobtier.errors import BlobNotFound, InvalidRequest, OutOfRange, TierUnavailable
from blobtier.fsutil import open_private, private_dir

Buffer = bytes | bytearray | memoryview

PUT, DELETE = 1, 2
_HDR = struct.Struct("<4s16sB3xIQ")  # + crc32c u32
_IDX = struct.Struct("<16sB3xQIQI")  # + crc32c u32
HEADER_SIZE = _HDR.size + 4
INDEX_SIZE = _IDX.size + 4
_MAGIC = b"BTV1"
_NAME = re.compile(r"(\d{8})\.(idx|dat)")
DEFAULT_VOLUME_BYTES = 1 << 30


def _pack_header(digest: bytes, kind: int, length: int, h: int) -> bytes:
    head = _HDR.pack(_MAGIC, digest, kind, length, h)
    return head + struct.pack("<I", crc32c(head))


def _pack_index(digest: bytes, kind: int, offset: int, length: int, h: int, written: int) -> bytes:
    body = _IDX.pack(digest, kind, offset, length, h, written)
    return body + struct.pack("<I", crc32c(body))


def _parse_index(buf: memoryview) -> Iterator[tuple[bytes, int, int, int, int, int]]:
    """Whole, valid entries from the start of ``buf``; stops at the first bad one."""
    for pos in range(0, len(buf) - INDEX_SIZE + 1, INDEX_SIZE):
        entry = buf[pos:pos + INDEX_SIZE]
        (crc,) = struct.unpack_from("<I", entry, _IDX.size)
        if crc32c(entry[:_IDX.size]) != crc:
            return
        yield _IDX.unpack_from(entry)


class VolumeStore:
    """A ``ChunkStore`` on local disk. Thread-safe; one writer process, many readers."""

    def __init__(self, root: str, *, writable: bool = False,
                 volume_bytes: int = DEFAULT_VOLUME_BYTES) -> None:
        self.root = root
        self.writable = writable
        self.volume_bytes = volume_bytes
        self._index: dict[bytes, tuple[int, int, int, int, int]] = {}
        self._idx_pos: dict[int, int] = {}  # volume -> bytes of its .idx already applied
        self._maps: dict[int, mmap.mmap] = {}
        self._lock = threading.Condition()
        self._closed = False
        if writable:
            private_dir(root)
            self._synced_seq = self._written_seq = 0
            self._syncing = False
            self._broken: BaseException | None = None
            self._pending: list[tuple[int, bytes, tuple]] = []  # (volume, index entry, location)
            self._dirty: set[int] = set()
            self._fds: dict[int, tuple[int, int]] = {}  # volume -> (dat fd, idx fd)
            self._recover()
        else:
            self._refresh()

    # -- reading ---------------------------------------------------------------------
    def get(self, digest: bytes, offset: int = 0, length: int = -1) -> memoryview:
        loc = self._locate(digest)
        vol, start, size = loc[0], loc[1], loc[2]
        if offset < 0 or offset > size:
            raise OutOfRange(f"offset {offset} outside chunk of {size} bytes")
        if length < 0:
            length = size - offset
        if offset + length > size:
            raise OutOfRange(f"range {offset}+{length} past the end of a {size}-byte chunk")
        try:
            return self._view(vol, start + offset, length)
        except FileNotFoundError:  # the volume was compacted away: its chunks moved
            self._refresh()
            loc = self._locate(digest)
            return self._view(loc[0], loc[1] + offset, length)

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

    def _locate(self, digest: bytes) -> tuple[int, int, int, int, int]:
        loc = self._index.get(digest)
        if loc is None and not self.writable:
            self._refresh()
            loc = self._index.get(digest)
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
        with open(self._path(vol, "dat"), "rb") as f:
            m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._maps[vol] = m  # an older, shorter map lives on while views of it exist
        return m

    def _refresh(self) -> None:
        """Apply index entries written since the last look (readers only).

        Any volume's index may have grown: the writer appends a group's index entries
        after its fsync, possibly after it has already rolled over to the next volume.
        One stat per volume tells which indexes to read on.
        """
        with self._lock:
            for vol in self._volumes():
                try:
                    size = os.stat(self._path(vol, "idx")).st_size
                except FileNotFoundError:
                    continue
                if size >= self._idx_pos.get(vol, 0) + INDEX_SIZE:
                    self._load_index(vol)

    def _volumes(self) -> list[int]:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        return sorted({int(m.group(1)) for n in names if (m := _NAME.fullmatch(n))})

    def _load_index(self, vol: int) -> int:
        """Apply new entries of one volume's index; return the end of its last entry."""
        pos = self._idx_pos.get(vol, 0)
        try:
            with open(self._path(vol, "idx"), "rb") as f:
                f.seek(pos)
                buf = memoryview(f.read())
        except FileNotFoundError:
            return 0
        end = 0
        for digest, kind, offset, length, h, written in _parse_index(buf):
            pos += INDEX_SIZE
            end = offset + length
            if kind == PUT:
                self._index[digest] = (vol, offset, length, h, written)
            else:
                self._index.pop(digest, None)
        self._idx_pos[vol] = pos
        return end

    # -- writing ---------------------------------------------------------------------
    def put_many(self, items: Sequence[tuple[bytes, Buffer, int]]) -> None:
        now = int(time.time())
        with self._lock:
            self._check_writable()
            for digest, data, h in items:
                n = len(data)
                if n >= 1 << 32:
                    raise InvalidRequest(f"chunk of {n} bytes is too large for a volume entry")
                vol, at = self._reserve(HEADER_SIZE + n)
                self._append(vol, [_pack_header(digest, PUT, n, h), data], at)
                loc = (vol, at + HEADER_SIZE, n, h, now)
                self._pending.append((vol, _pack_index(digest, PUT, *loc[1:]), digest, loc))
            self._written_seq += 1
            seq = self._written_seq
        self._wait_durable(seq)

    def delete_many(self, digests: Iterable[bytes]) -> None:
        now = int(time.time())
        with self._lock:
            self._check_writable()
            for digest in digests:
                if digest not in self._index:
                    continue
                vol, at = self._reserve(HEADER_SIZE)
                self._append(vol, [_pack_header(digest, DELETE, 0, 0)], at)
                loc = (vol, at + HEADER_SIZE, 0, 0, now)
                self._pending.append((vol, _pack_index(digest, DELETE, *loc[1:]), digest, None))
            self._written_seq += 1
            seq = self._written_seq
        self._wait_durable(seq)

    def _check_writable(self) -> None:
        if not self.writable:
            raise PermissionError(f"chunk store {self.root} is open read-only")
        if self._closed:
            raise TierUnavailable(f"chunk store {self.root} is closed")
        if self._broken is not None:
            raise TierUnavailable(f"chunk store {self.root} failed to sync and must be reopened: "
                                  f"{self._broken}")

    def _append(self, vol: int, parts: list[Buffer], at: int) -> None:
        want = sum(len(p) for p in parts)
        try:
            done = os.pwritev(self._fds[vol][0], parts, at)
        except OSError as exc:  # ENOSPC, EIO: this write fails, reads go on
            raise TierUnavailable(f"chunk store {self.root}: {exc}") from exc
        if done != want:
            raise TierUnavailable(f"chunk store {self.root}: short write ({done} of {want} bytes); "
                                  "disk full?")

    def _reserve(self, n: int) -> tuple[int, int]:
        """(volume, offset) for an append of ``n`` bytes; rolls to a new volume when full."""
        vol = self._current
        if self._tail > 0 and self._tail + n > self.volume_bytes:
            vol = self._open_volume(vol + 1)
        at = self._tail
        self._tail += n
        self._dirty.add(vol)
        return vol, at

    def _wait_durable(self, seq: int) -> None:
        with self._lock:
            while self._synced_seq < seq:
                if self._broken is not None:
                    raise TierUnavailable(f"chunk store {self.root} failed to sync: {self._broken}")
                if self._syncing:
                    self._lock.wait()
                    continue
                self._sync_round()

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
            by_vol: dict[int, list[bytes]] = {}
            for vol, entry, _, _ in pending:
                by_vol.setdefault(vol, []).append(entry)
            for vol, entries in by_vol.items():
                os.write(self._fds[vol][1], b"".join(entries))
        except OSError as exc:
            self._broken = exc
            raise TierUnavailable(f"chunk store {self.root}: {exc}") from exc
        finally:
            self._lock.acquire()
            self._syncing = False
            self._lock.notify_all()
        for _, _, digest, loc in pending:
            if loc is None:
                self._index.pop(digest, None)
            else:
                self._index[digest] = loc
        self._synced_seq = target

    def _open_volume(self, vol: int) -> int:
        dat = open_private(self._path(vol, "dat"), os.O_RDWR | os.O_CREAT)
        idx = open_private(self._path(vol, "idx"), os.O_RDWR | os.O_CREAT | os.O_APPEND)
        self._fds[vol] = (dat, idx)
        self._current, self._tail = vol, os.fstat(dat).st_size
        return vol

    def _recover(self) -> None:
        """Index every volume; index and keep whole entries past the indexed end, cut torn ones."""
        vols = self._volumes()
        for vol in vols:
            covered = self._load_index(vol)
            with open(self._path(vol, "idx"), "ab") as f:
                f.truncate(self._idx_pos.get(vol, 0))  # drop a torn index entry
            self._scan_tail(vol, covered)
        self._open_volume(vols[-1] if vols else 1)

    def _scan_tail(self, vol: int, pos: int) -> None:
        entries = []
        with open(self._path(vol, "dat"), "a+b") as f:
            size = os.fstat(f.fileno()).st_size
            while pos + HEADER_SIZE <= size:
                f.seek(pos)
                head = f.read(HEADER_SIZE)
                (crc,) = struct.unpack_from("<I", head, _HDR.size)
                if crc32c(head[:_HDR.size]) != crc:
                    break
                magic, digest, kind, length, h = _HDR.unpack_from(head)
                data = f.read(length)
                if magic != _MAGIC or len(data) != length or (kind == PUT and xxh3(data) != h):
                    break
                pos += HEADER_SIZE + length
                loc = (vol, pos - length, length, h, int(time.time()))
                entries.append(_pack_index(digest, kind, *loc[1:]))
                if kind == PUT:
                    self._index[digest] = loc
                else:
                    self._index.pop(digest, None)
            if pos < size:
                f.truncate(pos)  # a torn append: never acknowledged, so nothing is lost
                os.fsync(f.fileno())
        if entries:
            with open(self._path(vol, "idx"), "ab") as f:
                f.write(b"".join(entries))
                os.fsync(f.fileno())

    # -- maintenance -----------------------------------------------------------------
    def digests(self) -> list[tuple[bytes, int]]:
        """(digest, written unix seconds) of every stored chunk."""
        if not self.writable:
            self._refresh()
        with self._lock:
            return [(d, loc[4]) for d, loc in self._index.items()]

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"chunks": len(self._index),
                    "bytes": sum(loc[2] for loc in self._index.values()),
                    "volumes": len(self._idx_pos) or (1 if self.writable else 0)}

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
