"""``Client``: the user API (``sdk/wiring.py`` builds the parts it reads and writes through).

``connect()`` opens the embedded region at ``$BLOBTIER_HOME`` (else ``~/.blobtier``);
``connect(path)`` opens another region directory or a region TOML file.

A client is safe to share between threads and survives ``fork``: in a forked child the
parent's handles are dropped before any code of the child runs (``blobtier.forks``), and
the first use opens the child's own (never touching the parent's RocksDB handle, threads,
lock or L1 owner); a pickled client reconnects where it is unpickled.
Counters (``client.stats()``) live in shared memory, so forked workers add to them.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import IO, Any, TypeVar

from blobtier import forks
from blobtier.chunks import Buffer
from blobtier.config import RegionConfig, with_overrides
from blobtier.errors import BlobNotFound, BlobtierError, InvalidRequest
from blobtier.metadata.schema import BlobRecord, validate_key, validate_prefix
from blobtier.metrics import TierStats
from blobtier.runstate import resolve_running
from blobtier.sdk import gc
from blobtier.sdk.info import BlobInfo
from blobtier.sdk.namespaces import Namespaces
from blobtier.sdk.plans import ReadPlanCache
from blobtier.sdk.prefetch import Prefetcher, PrefetchJob
from blobtier.sdk.reader import BlobReader
from blobtier.sdk.scrub import Progress, Scrubber, ScrubMetrics, ScrubReport, Stores
from blobtier.sdk.wiring import ReadPath, Wiring
from blobtier.sdk.writer import BlobWriter, Reference, WritePath

_T = TypeVar("_T")


def connect(target: str | os.PathLike | RegionConfig | None = None,
            **sections: Mapping[str, Any]) -> Client:
    """Open a region: the default home, a region directory, or a region TOML file.

    Keyword arguments override config sections, e.g. ``connect(cache={"l1_bytes": "1GiB"})``.
    """
    config = resolve_running(target)
    if sections:
        config = with_overrides(config, **sections)
    return Client(config)


Item = tuple[str, Buffer] | tuple[str, Buffer, Mapping[str, str] | None]


class Client:
    """Read and write blobs of one region through the cache tiers."""

    def __init__(self, config: RegionConfig) -> None:
        self.config = config
        self.tier_stats = TierStats()
        self._wiring = Wiring(config, self.tier_stats)  # builds every part (sdk/wiring.py)
        self._mutex = threading.RLock()
        self._prefetch: Prefetcher | None = None
        self._retired: list[object] = []
        self._pid = os.getpid()
        self._closed = False
        self._use(self._wiring.build(writable=False))
        forks.register(self)

    # -- wiring (sdk/wiring.py builds the parts) ----------------------------------------
    def _use(self, path: ReadPath) -> None:
        self._path = path
        self._metadata, self._blocks, self._chain, self._writer = path

    # This process's host tiers and the client's own arena (tests and tools look at them).
    _l1 = property(lambda self: self._wiring.l1)
    _l2 = property(lambda self: self._wiring.l2)
    _arena = property(lambda self: self._wiring.arena)

    def _live(self) -> None:
        if self._closed:
            raise ValueError("operation on a closed blobtier client")
        if self._pid != os.getpid():
            self._after_fork()

    def _after_fork(self) -> None:
        """Open this process's handles: the first use in a forked child."""
        with self._mutex:
            if self._pid == os.getpid():
                return
            self._use(self._wiring.build(writable=False))
            # Published last: ``_live`` reads it without the lock, and a thread that sees
            # this process's pid sees every handle stored above (the GIL orders the stores).
            self._pid = os.getpid()

    def _after_fork_in_child(self) -> None:
        """In a forked child, before any of its code runs: drop the parent's handles, so
        no thread of the child can reach them (the parent's L1 owner above all: the child
        attaches to it through its socket). They are kept, not closed: closing a RocksDB
        handle or a channel is the parent's business."""
        forks.keep_inherited(self._metadata, self._blocks, self._chain, self._writer,
                             self._prefetch, *self._retired)  # L1 and L2: the wiring drops its own
        self._path = self._metadata = self._blocks = self._chain = self._writer = None
        self._prefetch = None
        self._retired = []
        self._mutex = threading.RLock()  # another parent thread may have held it
        self._pid = -1  # the next use opens the child's own (``_after_fork``)

    def _write_path(self) -> WritePath:
        self._live()
        with self._mutex:
            if self._writer is None:
                # Take the lock before dropping the reader handles: on RegionLocked the
                # client simply stays a reader. Over remote metadata there is no lock.
                self._wiring.stores.take_writer_lock()
                self._retired += self._path.handles()
                self._use(self._wiring.build(writable=True))
            return self._writer

    # -- reading ---------------------------------------------------------------------
    def _record(self, key: str) -> BlobRecord:
        self._live()
        rec = self._metadata.get(key)
        if rec is None:
            raise BlobNotFound(f"no such blob: {key}")
        return rec

    def stat(self, key: str) -> BlobInfo:
        return BlobInfo.from_record(key, self._record(key))

    def exists(self, key: str) -> bool:
        self._live()
        return self._metadata.get(key) is not None

    def _reading(self, key: str, read: Callable[[BlobRecord], _T]) -> _T:
        """``read(record)`` of the key's current record. When its chunks are gone and the
        record came from the read-plan cache, the version may have been replaced and
        collected since: the store is asked again, and a newer version read once."""
        rec = self._record(key)
        try:
            with _about(key):
                return read(rec)
        except BlobNotFound:
            if not isinstance(self._metadata, ReadPlanCache):
                raise
            fresh = self._metadata.refresh(key)
            if fresh is None:
                raise BlobNotFound(f"no such blob: {key}") from None
            if (fresh.blob_id, fresh.version) == (rec.blob_id, rec.version):
                raise
        with _about(key):
            return read(fresh)

    def get(self, key: str) -> memoryview:
        """The blob's bytes as a read-only buffer (zero-copy for single-chunk blobs).

        Raises: ``BlobNotFound`` (no such key, or no replica holds a chunk); ``InvalidKey``;
        ``ChecksumError`` (no good copy of a chunk); ``TierUnavailable``.
        """
        return self._reading(key, self._whole)

    def _whole(self, rec: BlobRecord) -> memoryview:
        return _join(rec, self._chain.read([(rec, i) for i in range(rec.n_chunks)]))

    def get_many(self, keys: Sequence[str]) -> list[memoryview]:
        """Several blobs with one metadata multi-get and one batched chunk fetch (raises
        as ``get``; records of the read-plan cache whose chunks are gone as ``_reading``)."""
        self._live()
        records = self._metadata.get_many(keys)
        try:
            return self._fetch_many(keys, records)
        except BlobNotFound:
            if not isinstance(self._metadata, ReadPlanCache):
                raise
            fresh = self._metadata.refresh_many(keys)
            if [(r.blob_id, r.version) if r else None for r in fresh] == \
                    [(r.blob_id, r.version) if r else None for r in records]:
                raise
        return self._fetch_many(keys, fresh)

    def _fetch_many(self, keys: Sequence[str], records: Sequence[BlobRecord | None]) -> list[memoryview]:
        refs = []
        for key, rec in zip(keys, records):
            if rec is None:
                raise BlobNotFound(f"no such blob: {key}")
            refs += [(rec, i) for i in range(rec.n_chunks)]
        with _about(keys[0] if len(keys) == 1 else f"{len(keys)} blobs"):
            views = self._chain.read(refs)
        out, at = [], 0
        for rec in records:
            out.append(_join(rec, views[at:at + rec.n_chunks]))
            at += rec.n_chunks
        return out

    def read_range(self, key: str, offset: int, length: int) -> memoryview:
        """``length`` bytes from byte ``offset`` (fewer at the end of the blob), read-only.

        Raises: ``InvalidRequest`` for a negative range or an offset past the end; else as
        ``get``.
        """
        return self._reading(key, lambda rec: self._range(key, rec, offset, length))

    def _range(self, key: str, rec: BlobRecord, offset: int, length: int) -> memoryview:
        if offset < 0 or length < 0:
            raise InvalidRequest(f"{key}: negative range {offset}+{length}")
        if offset > rec.size:
            raise InvalidRequest(f"{key}: offset {offset} past the end ({rec.size} bytes)")
        end = min(rec.size, offset + length)
        if end == offset:
            return memoryview(b"")
        cs = rec.chunk_size
        first, last = offset // cs, (end - 1) // cs
        with _about(key):
            views = self._chain.read([(rec, i) for i in range(first, last + 1)])
        if first == last:
            return views[0][offset - first * cs:end - first * cs]
        parts = [v[max(0, offset - i * cs):end - i * cs] for i, v in zip(range(first, last + 1), views)]
        return memoryview(b"".join(parts))

    def open(self, key: str, mode: str = "rb", *,
             attrs: Mapping[str, str] | None = None) -> BlobReader | BlobWriter:
        """A seekable reader of the current version (``rb``), or a writer that commits on
        close (``wb``).

        Raises: ``InvalidRequest`` for another mode; ``InvalidKey``; for ``rb``
        ``BlobNotFound`` at once, and what ``get`` raises as it reads; for ``wb``
        ``RegionLocked`` (another process holds an embedded region's writer lock) and, on
        close, what ``put`` raises.
        """
        if mode == "rb":
            return BlobReader(key, self._record(key), self._chain, self.config.client.readahead_chunks)
        if mode == "wb":
            return self._write_path().open(key, attrs)
        raise InvalidRequest(f"mode must be 'rb' or 'wb', not {mode!r}")

    def ls(self, prefix: str = "", *, limit: int | None = None) -> list[BlobInfo]:
        """Blobs whose key starts with ``prefix``, in key order."""
        out = []
        for info in self.iter_ls(prefix):
            if limit is not None and len(out) >= limit:
                break
            out.append(info)
        return out

    def iter_ls(self, prefix: str = "", page: int = 1000) -> Iterator[BlobInfo]:
        """Every blob whose key starts with ``prefix``, in key order, page by page."""
        for key, rec in self._pages(lambda *at: self._metadata.scan(*at), prefix, page):
            yield BlobInfo.from_record(key, rec)

    def iter_dir(self, prefix: str = "", page: int = 1000) -> Iterator[BlobInfo | str]:
        """One directory level under ``prefix``, in key order: a ``BlobInfo`` for each blob,
        and for each subdirectory its name ending in "/" (``"ns/train/"``), once however
        many keys lie below it. ``prefix`` names a directory (``"ns/"``) or the start of
        names in one (``"ns/img_"``). A delimiter listing, page by page: what it reads is
        the directory's entries, never the keys below its subdirectories.

        Raises: ``InvalidKey`` for a bad prefix; ``MetadataCorrupt``/``TierUnavailable``
        when the store cannot list (never a silently short listing).
        """
        for key, rec in self._pages(lambda *at: self._metadata.list_dir(*at), prefix, page):
            yield key if rec is None else BlobInfo.from_record(key, rec)

    def _pages(self, list_page: Callable[[str, str | None, int], list], prefix: str,
               page: int) -> Iterator[tuple[str, BlobRecord | None]]:
        """The rows of ``list_page(prefix, after, page)``, one page after another."""
        self._live()  # before list_page reads self._metadata: a forked child opens its own
        validate_prefix(prefix)
        after = None
        while True:
            rows = list_page(prefix, after, page)
            yield from rows
            if len(rows) < page:
                return
            after = rows[-1][0]

    # -- knowing the future ---------------------------------------------------------------
    def _samples(self, keys: Sequence[str]) -> list[list[tuple[BlobRecord, int]]]:
        """Each existing key's chunks, in order (missing keys are left out)."""
        out = []
        for start in range(0, len(keys), 4096):
            for rec in self._metadata.get_many(keys[start:start + 4096]):
                if rec is not None:
                    out.append([(rec, i) for i in range(rec.n_chunks)])
        return out

    def _prefetcher(self) -> Prefetcher:
        with self._mutex:
            if self._prefetch is None:
                cc = self.config.client
                # Prefetched chunks wait in L1 for their reader: a window deeper than a
                # quarter of L1 would evict chunks it fetched before they are read.
                l1 = self.config.cache.l1_bytes
                window = min(cc.prefetch_bytes, l1 // 4) if l1 else cc.prefetch_bytes
                self._prefetch = Prefetcher(lambda refs: self._chain.warm(refs), window,
                                            cc.prefetch_threads)
            return self._prefetch

    def announce(self, keys: Sequence[str], progress: Callable[[], int] | None = None,
                 job: int = 0) -> PrefetchJob | None:
        """Tell the cache the order in which ``keys`` will be read next.

        The eviction policy learns every chunk's next use (the clairvoyant policy acts on
        it). With ``progress`` (how many of ``keys`` the reader has reached), a
        background prefetcher keeps the next samples fetched ahead of it, as far ahead
        as consumption rate x fetch latency needs and the ``prefetch_bytes`` bound allows.
        ``BlobSampler`` calls this at the start of every epoch.
        """
        self._live()
        samples = self._samples(list(keys))
        if self._l1 is not None:  # each namespace's policy learns the order of its own chunks
            by_namespace: dict[str, list] = {}
            for sample in samples:
                for rec, i in sample:
                    by_namespace.setdefault(rec.namespace, []).append(rec.chunk_key(i))
            for namespace, chunk_keys in by_namespace.items():
                self._l1.announce(chunk_keys, job, namespace=namespace)
        if progress is None:
            return None
        return self._prefetcher().follow(samples, progress)

    def prefetch(self, keys: Sequence[str], deadline: float | None = None) -> PrefetchJob:
        """Hydrate the cache with ``keys`` in the background and return at once.

        ``deadline`` (seconds since the epoch) is when the data is needed: what has not
        been fetched by then is left to be read on demand. ``job.wait()`` blocks until done.
        """
        self._live()
        return self._prefetcher().hydrate(self._samples(list(keys)), deadline)

    # -- writing ---------------------------------------------------------------------
    def put(self, key: str, data: Buffer | IO[bytes], *, attrs: Mapping[str, str] | None = None) -> BlobInfo:
        """Store ``data`` (bytes-like or a binary file) as the new version of ``key``.

        Raises: ``InvalidKey``; ``InvalidRequest`` (more bytes than ``client.max_blob_bytes``);
        ``ValueError`` (attributes over 4 KiB encoded); ``RegionLocked``; ``TierUnavailable`` (fewer than
        ``block.write_quorum`` replicas written); ``StorageFull`` (ENOSPC); ``TimedOut`` or
        ``VersionConflict`` (nothing committed: other writers kept winning). On any of them
        no new version is visible.
        """
        validate_key(key)
        if hasattr(data, "read"):
            with self.open(key, "wb", attrs=attrs) as out:
                shutil.copyfileobj(data, out, self.config.client.chunk_size)
            return BlobInfo.from_record(key, out.record)
        return self.put_many([(key, data, attrs)])[0]

    def put_many(self, items: Iterable[Item] | Mapping[str, Buffer]) -> list[BlobInfo]:
        """Store several blobs with one durable group commit."""
        if isinstance(items, Mapping):
            items = items.items()
        batch = [(it[0], it[1], it[2] if len(it) > 2 else None) for it in items]
        if not batch:
            return []
        done = self._write_path().put_many(batch)
        return [BlobInfo.from_record(k, rec) for k, rec in done]

    def delete(self, key: str) -> None:
        """Remove ``key``; its chunks are reclaimed by ``gc`` after the grace period."""
        writer = self._write_path()
        if writer.metadata.delete(key) is None:
            raise BlobNotFound(f"no such blob: {key}")

    @property
    def namespaces(self) -> Namespaces:
        """Namespace objects: quotas, TTLs, cache shares (``sdk/namespaces.py``); changes
        go through the write path (an embedded region's writer lock)."""
        self._live()
        return Namespaces(lambda: self._metadata, lambda: self._write_path().metadata)

    def gc(self, grace_s: float | None = None, *, force: bool = False) -> gc.GcReport:
        """Delete chunks no committed record references (and older than the grace period,
        ``client.gc_grace_s`` unless given, in seconds). Over a shared metadata store it
        runs while other processes write (``sdk/gc.py``). ``force``: collect even when the
        metadata lists no blob while chunk servers hold chunks (a region emptied on purpose).

        Raises: ``InvalidRequest`` for a grace of 0 over a shared metadata store;
        ``MetadataCorrupt`` or ``TierUnavailable`` when the metadata cannot be listed in
        full, is not the chunk stores' region, or lists nothing while chunk servers hold
        chunks (without ``force``): nothing is deleted then; ``RegionLocked`` when another process writes an
        embedded region.
        """
        writer = self._write_path()
        grace = self.config.client.gc_grace_s if grace_s is None else grace_s
        return gc.collect(writer.metadata, self._blocks.servers, grace, writer.inflight_digests,
                          shared=self._wiring.stores.remote is not None, force=force)

    def scrub(self, prefix: str = "", *, repair: bool = False, progress: Progress | None = None,
              threads: int = 8, metrics: ScrubMetrics | None = None) -> ScrubReport:
        """Read every replica of every blob under ``prefix`` and verify it against its record;
        with ``repair``, write a good copy back wherever one is missing or corrupt
        (``sdk/scrub.py``). Reading takes no lock; in an embedded region the first repair
        takes the writer lock (``RegionLocked`` if another process writes)."""
        self._live()
        validate_prefix(prefix)
        scrubber = Scrubber(self._metadata, self._blocks.servers, threads=threads, metrics=metrics,
                            repair_stores=self._repair_stores if repair else None)
        return scrubber.run(prefix, progress)

    def _repair_stores(self) -> Stores:
        if not self.config.block.endpoints:
            self._write_path()  # an embedded region's volumes have one writer: this process
        return self._blocks.servers  # chunk servers take writes from any client with a token

    def put_references(self, refs: Sequence[Reference]) -> list[BlobInfo]:
        """Register origin objects as blobs without copying them (``sdk.ingest.register``
        builds the references); reads fetch byte ranges of the origin, checksum-verified."""
        done = self._write_path().put_references(refs)
        return [BlobInfo.from_record(k, rec) for k, rec in done]

    # -- housekeeping ----------------------------------------------------------------
    def stats(self) -> dict[str, dict[str, int]]:
        """Per-tier hits, misses, bytes, errors and corrupt chunks (all processes that
        share this client through fork)."""
        return self.tier_stats.snapshot()

    @property
    def tiers(self) -> list[str]:
        """The cache tiers reads go through, fastest first (e.g. ``["l1", "l3"]``)."""
        self._live()
        return [tier.name for tier in self._chain.tiers]

    def close(self) -> None:
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            if self._pid != os.getpid():
                return  # inherited handles belong to the parent
            # Every handle is closed and the writer lock released even when a close fails
            # (a full disk, an I/O error): the first failure is raised after all of it.
            failure: BaseException | None = None
            handles = [self._prefetch, *self._path.handles(), *self._retired, *self._wiring.handles()]
            closed: set[int] = set()  # a remote metadata store serves both modes: close it once
            for handle in handles:
                if handle is None or id(handle) in closed:
                    continue
                closed.add(id(handle))
                try:
                    handle.close()
                except Exception as exc:  # noqa: BLE001 - raised below, once the lock is free
                    failure = failure or exc
            self._wiring.stores.release()
            if failure is not None:
                raise failure

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple:
        return (Client, (self.config,))

    def __repr__(self) -> str:
        return f"<blobtier.Client root={self.config.root!r}{' writer' if self._writer else ''}>"


def _join(rec: BlobRecord, views: list[memoryview]) -> memoryview:
    if len(views) == 1:
        return views[0]
    return memoryview(b"".join(views))  # one copy, straight into the result


@contextmanager
def _about(what: str) -> Iterator[None]:
    """Name the blob in errors raised about its chunks."""
    try:
        yield
    except BlobtierError as exc:
        if what not in str(exc):
            raise type(exc)(f"{what}: {exc}") from exc
        raise
