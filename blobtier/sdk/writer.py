"""The write path: chunk, checksum, store every replica durably, then commit the record.

The commit point of a write is the metadata compare-and-set, made only after every chunk
of the blob is durable on every replica; a reader therefore sees the old version or the
new one, never a mix, and a crashed write leaves only unreferenced chunks (which ``gc``
collects). Each write attempt gets a fresh random ``blob_id``, so the chunks of two
attempts never share a name.

Within one process, writes of the same key are serialised by striped locks, so the CAS
only loses against other processes; it then retries with the newer version.

Over a shared metadata store, ``gc`` in another process cannot see this one's writes in
progress and spares them only by their age (``sdk/gc.py``). A write is therefore committed
only within ``commit_within_s`` of its start (half of ``client.gc_grace_s``): an older one
raises ``TimedOut`` and commits nothing, rather than a record whose chunks may be gone.
"""

from __future__ import annotations

import io
import threading
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from blobtier import checksum
from blobtier.chunks import BlockStore, Buffer, ChunkKey
from blobtier.config import ClientConfig
from blobtier.errors import InvalidRequest, TimedOut, VersionConflict
from blobtier.metadata.schema import BlobRecord, chunk_count, new_blob_id, validate_key
from blobtier.metadata.store import ABSENT, MetadataStore

_STRIPES = 64
_ATTEMPTS = 5
_FLUSH_BYTES = 64 << 20  # a streamed blob's chunks go to the block store in groups this big
_T = TypeVar("_T")


@dataclass(eq=False)
class _Pending:
    """One blob being written: its chunks so far and where they went."""

    key: str
    attrs: Mapping[str, str]
    blob_id: bytes = field(default_factory=new_blob_id)
    version: int = 1
    expected: int = ABSENT
    size: int = 0
    checksums: list[int] = field(default_factory=list)
    placement: list[tuple[int, ...]] = field(default_factory=list)
    origin: str = ""  # "url\ntag" of a blob registered by reference
    started: float = field(default_factory=time.time)  # before any of its chunks was stored

    def record(self, chunk_size: int, algo: str) -> BlobRecord:
        return BlobRecord(self.blob_id, self.version, self.size, chunk_size, self.checksums,
                          self.placement, algo, time.time_ns(), dict(self.attrs), self.origin)


@dataclass(frozen=True)
class Reference:
    """An origin object to register as a blob: where it is, which version of it, and the
    checksums of its chunks (at the client's chunk size and checksum) taken from that
    version."""

    key: str
    url: str
    tag: str
    size: int
    checksums: Sequence[int]
    attrs: Mapping[str, str] = field(default_factory=dict)


class WritePath:
    """Writes blobs: chunks to ``blocks``, then the record to ``metadata``.

    Args:
        commit_within_s: commit no write that began longer ago than this (seconds;
            ``TimedOut``); None: no limit (the embedded region, whose gc knows every write).
        current: where a write reads the versions it replaces (default:
            ``metadata.get_many``). Not a cache: a stale version costs a lost
            compare-and-set and a second upload of every chunk.
    """

    def __init__(self, metadata: MetadataStore, blocks: BlockStore, config: ClientConfig, *,
                 commit_within_s: float | None = None,
                 current: Callable[[Sequence[str]], list[BlobRecord | None]] | None = None) -> None:
        self.metadata = metadata
        self._current = current or metadata.get_many
        self.blocks = blocks
        self.config = config
        self.commit_within_s = commit_within_s
        self._stripes = [threading.Lock() for _ in range(_STRIPES)]
        self._inflight: set[_Pending] = set()  # begun, not yet committed or aborted
        self._inflight_lock = threading.Lock()

    # -- whole buffers -----------------------------------------------------------------
    def put_many(self, items: Sequence[tuple[str, Buffer, Mapping[str, str] | None]],
                 ) -> list[tuple[str, BlobRecord]]:
        """Write several blobs with one group commit of chunks and one of metadata."""
        views = []
        for key, data, attrs in items:
            validate_key(key)
            view = memoryview(data).cast("B") if not isinstance(data, memoryview) else data.cast("B")
            self._check_size(key, len(view))
            views.append((key, view, attrs or {}))
        if len({k for k, _, _ in views}) != len(views):
            raise InvalidRequest("put_many got the same key twice")

        def fill(pending: list[_Pending], batch: list[tuple[str, memoryview, Mapping[str, str]]]) -> None:
            chunks = []
            for p, (_, view, _) in zip(pending, batch):
                chunks += self._stage(p, view)
            self._store(pending, chunks)

        return self._commit_all(views, fill)

    def put_references(self, refs: Sequence[Reference]) -> list[tuple[str, BlobRecord]]:
        """Commit records whose chunks are byte ranges of origin objects: nothing is
        stored in the block layer, the checksums taken at registration guard every read."""
        items = []
        for ref in refs:
            validate_key(ref.key)
            self._check_size(ref.key, ref.size)
            if chunk_count(ref.size, self.config.chunk_size) != len(ref.checksums):
                raise InvalidRequest(f"{ref.key}: {len(ref.checksums)} checksums for {ref.size} bytes "
                                     f"at chunk size {self.config.chunk_size}")
            if "\n" in ref.url or not ref.url:
                raise InvalidRequest(f"{ref.key}: bad origin URL {ref.url!r}")
            items.append((ref.key, ref, ref.attrs))
        if len({k for k, _, _ in items}) != len(items):
            raise InvalidRequest("put_references got the same key twice")

        def fill(pending: list[_Pending], batch: list[tuple[str, Reference, Mapping[str, str]]]) -> None:
            for p, (_, ref, _) in zip(pending, batch):
                p.size, p.checksums, p.origin = ref.size, list(ref.checksums), f"{ref.url}\n{ref.tag}"

        return self._commit_all(items, fill)

    def _commit_all(self, items: list[tuple[str, _T, Mapping[str, str]]],
                    fill: Callable[[list[_Pending], list[tuple[str, _T, Mapping[str, str]]]], None],
                    ) -> list[tuple[str, BlobRecord]]:
        """Begin a version of every key, ``fill`` in its chunks, commit them all; retry the
        keys whose compare-and-set lost to another process."""
        done: dict[str, BlobRecord] = {}
        remaining = items
        with self._locked([k for k, _, _ in items]):
            for _ in range(_ATTEMPTS):
                pending = self._begin([(k, a) for k, _, a in remaining])
                try:
                    fill(pending, remaining)
                    oks = self._commit(pending)
                finally:
                    self._forget(pending)
                done.update((p.key, rec) for p, (ok, rec) in zip(pending, oks) if ok)
                remaining = [v for v, (ok, _) in zip(remaining, oks) if not ok]
                if not remaining:
                    return [(k, done[k]) for k, _, _ in items]
        raise VersionConflict(f"gave up writing {remaining[0][0]!r}: other writers keep "
                              "committing new versions")

    # -- streams -------------------------------------------------------------------------
    def open(self, key: str, attrs: Mapping[str, str] | None = None) -> BlobWriter:
        validate_key(key)
        return BlobWriter(self, key, attrs or {})

    # -- steps ---------------------------------------------------------------------------
    def _check_size(self, key: str, size: int) -> None:
        if size > self.config.max_blob_bytes:
            raise InvalidRequest(f"{key}: {size} bytes exceeds the blob size limit "
                                 f"({self.config.max_blob_bytes})")

    def _locked(self, keys: Sequence[str]) -> _Stripes:
        return _Stripes(sorted({self._stripes[zlib.crc32(k.encode()) % _STRIPES] for k in keys},
                               key=id))

    def _begin(self, keys_attrs: Sequence[tuple[str, Mapping[str, str]]]) -> list[_Pending]:
        current = self._current([k for k, _ in keys_attrs])
        # Over a metadata service, blob ids come from it, with write grants for their chunks.
        blob_ids = self.metadata.new_blob_ids([k for k, _ in keys_attrs])
        out = []
        for (key, attrs), rec, blob_id in zip(keys_attrs, current, blob_ids):
            p = _Pending(key, attrs, blob_id)
            if rec is not None:
                p.version, p.expected = rec.version + 1, rec.version
            out.append(p)
        with self._inflight_lock:
            self._inflight.update(out)
        return out

    def _stage(self, p: _Pending, data: memoryview) -> list[tuple[ChunkKey, Buffer, int]]:
        """Cut ``data`` (appended to ``p``) into chunks and checksum them; no copies."""
        size, algo = self.config.chunk_size, self.config.checksum
        staged = []
        for start in range(0, len(data), size):
            chunk = data[start:start + size]
            h = checksum.xxh3(chunk)
            p.checksums.append(h if algo == "xxh3" else checksum.compute(algo, chunk))
            staged.append((ChunkKey(p.blob_id, p.version, len(p.checksums) - 1), chunk, h))
        p.size += len(data)
        return staged

    def _store(self, pending: Sequence[_Pending], chunks: list[tuple[ChunkKey, Buffer, int]]) -> None:
        if not chunks:
            return
        placements = iter(self.blocks.write_chunks(chunks))
        owner = {p.blob_id: p for p in pending}
        for key, _, _ in chunks:
            owner[key.blob_id].placement.append(next(placements))

    def _commit(self, pending: Sequence[_Pending]) -> list[tuple[bool, BlobRecord]]:
        """CAS every record at once; (committed?, record) per blob. A loser's chunks are
        left for ``gc``."""
        records = [p.record(self.config.chunk_size, self.config.checksum) for p in pending]
        try:
            self._check_age(pending)
            oks = self.metadata.commit_many([(p.key, r, p.expected) for p, r in zip(pending, records)])
        finally:
            self._forget(pending)
        return list(zip(oks, records))

    def _check_age(self, pending: Sequence[_Pending]) -> None:
        if self.commit_within_s is None:
            return
        now = time.time()
        for p in pending:
            if now - p.started > self.commit_within_s:
                raise TimedOut(f"{p.key}: not committed: the write began {now - p.started:.0f} s ago, "
                               f"more than {self.commit_within_s:.0f} s (half of client.gc_grace_s), "
                               "so another process's gc may have collected its chunks; write it again")

    def _forget(self, pending: Sequence[_Pending]) -> None:
        with self._inflight_lock:
            self._inflight.difference_update(pending)

    def inflight_digests(self) -> set[bytes]:
        """Chunks of writes not yet committed: ``gc`` must spare them."""
        with self._inflight_lock:
            pending = list(self._inflight)
        return {ChunkKey(p.blob_id, p.version, i).digest()
                for p in pending for i in range(len(p.checksums))}


    def _commit_stream(self, p: _Pending) -> BlobRecord:
        """Commit a streamed blob. Its version was chosen when the stream opened; if
        another write of the key committed since, the chunks are copied to the next
        version (last writer wins, as with any object store)."""
        with self._locked([p.key]):
            for _ in range(_ATTEMPTS):
                ((ok, rec),) = self._commit([p])
                if ok:
                    return rec
                p = self._rebase(p, rec)
        raise VersionConflict(f"gave up writing {p.key!r}: other writers keep committing")

    def _rebase(self, p: _Pending, written: BlobRecord) -> _Pending:
        (q,) = self._begin([(p.key, p.attrs)])
        group = max(1, _FLUSH_BYTES // max(1, written.chunk_size))
        for first in range(0, written.n_chunks, group):
            refs = [(written, i) for i in range(first, min(first + group, written.n_chunks))]
            staged = []
            for view in self.blocks.read_many(refs):
                staged += self._stage(q, view)
            self._store([q], staged)
        return q


class _Stripes:
    def __init__(self, locks: list[threading.Lock]) -> None:
        self.locks = locks

    def __enter__(self) -> None:
        for lock in self.locks:
            lock.acquire()

    def __exit__(self, *exc: object) -> None:
        for lock in reversed(self.locks):
            lock.release()


class BlobWriter(io.BufferedIOBase):
    """A writable file whose bytes become one blob when it is closed without error.

    Full chunks go to the block store as they fill (in groups of about 64 MiB, so memory
    stays bounded); nothing is visible until ``close`` commits the record. Leaving a
    ``with`` block by an exception, or calling ``abort``, commits nothing.
    """

    def __init__(self, path: WritePath, key: str, attrs: Mapping[str, str]) -> None:
        super().__init__()
        self._path = path
        self.key = key
        self._pending = path._begin([(key, attrs)])[0]
        self._buf = bytearray(path.config.chunk_size)
        self._fill = 0
        self._staged: list[tuple[ChunkKey, Buffer, int]] = []
        self._staged_bytes = 0
        self.record: BlobRecord | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: Buffer) -> int:
        if self.closed:
            raise ValueError("write to a closed blob writer")
        view = memoryview(data).cast("B")
        n = len(view)
        self._path._check_size(self.key, self._pending.size + self._fill + n)
        size = len(self._buf)
        while view:
            take = min(size - self._fill, len(view))
            self._buf[self._fill:self._fill + take] = view[:take]
            self._fill += take
            view = view[take:]
            if self._fill == size:
                self._cut()
        return n

    def _cut(self) -> None:
        chunk = bytes(self._buf[:self._fill])
        self._staged += self._path._stage(self._pending, memoryview(chunk))
        self._staged_bytes += len(chunk)
        self._fill = 0
        if self._staged_bytes >= _FLUSH_BYTES:
            self._flush_chunks()

    def _flush_chunks(self) -> None:
        self._path._store([self._pending], self._staged)
        self._staged, self._staged_bytes = [], 0

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self._fill:
                self._cut()
            self._flush_chunks()
            self.record = self._path._commit_stream(self._pending)
        finally:
            self._release()

    def __del__(self) -> None:
        # IOBase would close() (and so commit) a writer dropped unclosed: a half-written
        # blob must never become visible, so a forgotten writer aborts instead.
        if not self.closed:
            self.abort()

    def abort(self) -> None:
        """Drop everything written so far; the key keeps its current version."""
        if not self.closed:
            self._release()

    def _release(self) -> None:
        self._path._forget([self._pending])
        self._buf = bytearray()
        super().close()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()
