"""``Client``: the user API, and the one place the client side is wired together.

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
from typing import IO, Any

from blobtier import forks
from blobtier.cache_l1_l2.daemon import daemon_info
from blobtier.cache_l1_l2.l1 import OwnedArena, SharedL1Cache
from blobtier.chunks import Buffer, ChunkCache
from blobtier.config import RegionConfig, resolve, with_overrides
from blobtier.errors import BlobNotFound, BlobtierError, InvalidRequest
from blobtier.metadata.schema import BlobRecord, validate_key, validate_prefix
from blobtier.metrics import TierStats
from blobtier.sdk import gc
from blobtier.sdk.chain import TierChain
from blobtier.sdk.embedded import EmbeddedRegion
from blobtier.sdk.info import BlobInfo
from blobtier.sdk.prefetch import Prefetcher, PrefetchJob
from blobtier.sdk.reader import BlobReader
from blobtier.sdk.scrub import Progress, Scrubber, ScrubMetrics, ScrubReport, Stores
from blobtier.sdk.writer import BlobWriter, Reference, WritePath


def connect(target: str | os.PathLike | RegionConfig | None = None,
            **sections: Mapping[str, Any]) -> Client:
    """Open a region: the default home, a region directory, or a region TOML file.

    Keyword arguments override config sections, e.g. ``connect(cache={"l1_bytes": "1GiB"})``.
    """
    config = resolve(target)
    if sections:
        config = with_overrides(config, **sections)
    return Client(config)


Item = tuple[str, Buffer] | tuple[str, Buffer, Mapping[str, str] | None]


class Client:
    """Read and write blobs of one region through the cache tiers."""

    def __init__(self, config: RegionConfig) -> None:
        self.config = config
        self.tier_stats = TierStats()
        self._region = EmbeddedRegion(config)
        self._mutex = threading.RLock()
        self._arena: OwnedArena | None = None
        self._prefetch: Prefetcher | None = None
        self._l1, self._l2 = self._host_tiers()
        self._retired: list[object] = []
        self._writer: WritePath | None = None
        self._pid = os.getpid()
        self._closed = False
        self._open(writable=False)
        forks.register(self)

    # -- wiring ----------------------------------------------------------------------
    def _host_tiers(self) -> tuple[SharedL1Cache | None, ChunkCache | None]:
        """This process's view of the host L1, and the L2 when the host daemon has peers.

        L1 is the host daemon's arena when one runs, the parent's in a forked worker, else
        an arena of its own (none when ``cache.l1_bytes`` is 0). L2 is the arenas of the
        daemon's peers, each chunk at its home daemon (``cache_l1_l2/peers.py``).
        """
        daemon = daemon_info(self.config.cache.daemon)
        verify = self.config.cache.verify_l1
        if daemon is not None:
            l2 = None
            if daemon.get("peers"):
                from blobtier.rpc.sharded_cache import ShardedChunkCache

                l2 = ShardedChunkCache.connect([(p, 1.0) for p in daemon["peers"]], name="l2",
                                               timeout_s=self.config.flash.request_timeout_s,
                                               retry_after_s=self.config.flash.retry_after_s,
                                               read_through=False, local=daemon["peer"],
                                               token=self.config.auth.token or None)
            return SharedL1Cache(socket_path=daemon["socket"], verify=verify), l2
        if not self.config.cache.l1_bytes:
            return None, None
        if self._arena is not None:  # inherited: attach to the parent's
            return SharedL1Cache(socket_path=self._arena.socket_path, verify=verify), None
        self._arena = OwnedArena(self.config.cache.l1_bytes, self.config.cache.l1_policy)
        self._arena_pid = os.getpid()
        return SharedL1Cache(owner=self._arena.owner, verify=verify), None

    def _open(self, writable: bool) -> None:
        self._metadata, self._blocks = self._region.open(writable, self.tier_stats)
        tiers = [t for t in (self._l1, self._l2, self._region.flash()) if t is not None]
        self._chain = TierChain(tiers, self._blocks, self.tier_stats)
        self._writer = WritePath(self._metadata, self._blocks, self.config.client) if writable else None

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
            self._l1, self._l2 = self._host_tiers()
            self._open(writable=False)
            # Published last: ``_live`` reads it without the lock, and a thread that sees
            # this process's pid sees every handle stored above (the GIL orders the stores).
            self._pid = os.getpid()

    def _after_fork_in_child(self) -> None:
        """In a forked child, before any of its code runs: drop the parent's handles, so
        no thread of the child can reach them (the parent's L1 owner above all: the child
        attaches to it through its socket). They are kept, not closed: closing a RocksDB
        handle or a channel is the parent's business."""
        forks.keep_inherited(self._metadata, self._blocks, self._chain, self._l1, self._l2,
                             self._writer, self._prefetch, *self._retired)
        self._metadata = self._blocks = self._chain = self._l1 = self._l2 = None
        self._writer = self._prefetch = None
        self._retired = []
        self._mutex = threading.RLock()  # another parent thread may have held it
        self._pid = -1  # the next use opens the child's own (``_after_fork``)

    def _write_path(self) -> WritePath:
        self._live()
        with self._mutex:
            if self._writer is None:
                # Take the lock before dropping the reader handles: on RegionLocked the
                # client simply stays a reader.
                self._region.lock.acquire()
                self._retired += [self._metadata, self._blocks, self._chain]
                self._open(writable=True)
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

    def get(self, key: str) -> memoryview:
        """The blob's bytes as a read-only buffer (zero-copy for single-chunk blobs)."""
        rec = self._record(key)
        with _about(key):
            return _join(rec, self._chain.read([(rec, i) for i in range(rec.n_chunks)]))

    def get_many(self, keys: Sequence[str]) -> list[memoryview]:
        """Several blobs with one metadata multi-get and one batched chunk fetch."""
        self._live()
        records = self._metadata.get_many(keys)
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
        """``length`` bytes from ``offset`` (fewer at the end of the blob)."""
        rec = self._record(key)
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
        close (``wb``)."""
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
        self._live()
        validate_prefix(prefix)
        after = None
        while True:
            rows = self._metadata.scan(prefix, after, page)
            for key, rec in rows:
                yield BlobInfo.from_record(key, rec)
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
        """Store ``data`` (bytes-like or a binary file) as the new version of ``key``."""
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

    def gc(self, grace_s: float | None = None, *, force: bool = False) -> gc.GcReport:
        """Delete chunks no committed record references (and older than the grace period).
        ``force``: collect even when the metadata lists no blob while chunk servers hold
        chunks (a region emptied on purpose); ``MetadataCorrupt`` otherwise, and when the
        metadata is not the chunk stores' region: nothing is deleted then."""
        writer = self._write_path()
        grace = self.config.client.gc_grace_s if grace_s is None else grace_s
        return gc.collect(writer.metadata, self._blocks.servers, grace, writer.inflight_digests,
                          force=force)

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
            arena = self._arena if self._arena is not None and self._arena_pid == os.getpid() else None
            for handle in [self._prefetch, self._chain, self._l1, self._l2, self._metadata,
                           self._blocks, *self._retired, arena, self._region]:
                try:
                    if handle is not None:
                        handle.close()
                except Exception as exc:  # noqa: BLE001 - raised below, once the lock is free
                    failure = failure or exc
            self._region.lock.release()
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
