"""Deep scrub: read every replica of every live chunk, verify it, and put back lost ones.

``Scrubber.run(prefix)`` walks the committed records under a prefix (one metadata scan,
page by page) and reads each chunk from every server its record places it on, checking
each copy against the record's checksum and length. A replica is

- ``good``: the bytes the record promises;
- ``missing``: the server does not hold it (deleted, lost with its disk, a write that
  failed below quorum);
- ``corrupt``: it fails its checksum or has the wrong length;
- ``unreachable``: the server did not answer, so nothing is known about that copy.

With ``repair``, a chunk that has a good copy gets that copy written to every server of
its placement that lost or damaged its own, read back from there and verified; only then
is the replica counted repaired. A chunk with no good copy left is *lost*: it is reported
and never written, because its bad bytes must not become a replica. Repairs go to the
servers the record names (where readers look), not to a fresh rendezvous choice.

The scrub runs online. Reading takes no lock, so readers and the writer go on. Over gRPC
chunk servers any client with a write token may write a replica; an embedded region's
volumes have one writer, so there the client's ``repair_stores`` takes the writer lock,
on the first repair only. A blob overwritten or deleted while the scrub runs is not
judged: before damage is counted, the record is read again, and a chunk whose version
is no longer current is counted as ``changed`` (its chunks may rightly be gone).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields

from prometheus_client import REGISTRY, CollectorRegistry, Counter

from blobtier import checksum
from blobtier.chunks import ChunkStore
from blobtier.errors import BlobNotFound, BlobtierError, ChecksumError, InvalidRequest
from blobtier.humanize import plural
from blobtier.metadata.schema import BlobRecord
from blobtier.metadata.store import MetadataStore

log = logging.getLogger(__name__)

GOOD, MISSING, CORRUPT, UNREACHABLE = "good", "missing", "corrupt", "unreachable"
STATES = (GOOD, MISSING, CORRUPT, UNREACHABLE)
MAX_NAMED = 20  # lost chunks named in a report; the count covers all of them
_PAGE = 1000

Progress = Callable[[int, int, int, int], None]  # (blobs, bytes, total blobs, total bytes)
Stores = Mapping[int, ChunkStore]


class ScrubMetrics:
    """The ``blobtier_scrub_*_total`` counters of one registry."""

    def __init__(self, registry: CollectorRegistry | None = None, namespace: str = "blobtier") -> None:
        registry = registry if registry is not None else REGISTRY
        p = f"{namespace}_scrub"
        self.blobs = Counter(f"{p}_blobs", "Blobs scrubbed", registry=registry)
        self.chunks = Counter(f"{p}_chunks", "Chunks scrubbed (every replica read)", registry=registry)
        self.bytes = Counter(f"{p}_bytes", "Bytes of good replicas read", registry=registry)
        self.replicas = Counter(f"{p}_replicas", "Replicas checked, by what was found",
                                ["state"], registry=registry)
        self.repaired = Counter(f"{p}_repaired", "Replicas written back and verified", registry=registry)
        self.repair_failed = Counter(f"{p}_repair_failed", "Replicas that could not be written back",
                                     registry=registry)
        self.lost = Counter(f"{p}_lost_chunks", "Chunks with no good replica left", registry=registry)
        self.changed = Counter(f"{p}_changed_chunks", "Chunks of blobs overwritten or deleted "
                               "during the scrub (not judged)", registry=registry)


_default_metrics: ScrubMetrics | None = None


def default_metrics() -> ScrubMetrics:
    """The series on the default registry, created once per process."""
    global _default_metrics
    if _default_metrics is None:
        _default_metrics = ScrubMetrics()
    return _default_metrics


@dataclass
class ServerTally:
    """What the scrub found on one chunk server (or, summed, on all of them)."""

    good: int = 0
    missing: int = 0
    corrupt: int = 0
    unreachable: int = 0
    repaired: int = 0
    repair_failed: int = 0

    def add(self, other: ServerTally) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass
class ScrubReport:
    """Counts of one scrub. Replica counts are what was found before any repair."""

    prefix: str
    repair: bool
    blobs: int = 0
    chunks: int = 0
    bytes: int = 0  # replica bytes read
    by_reference: int = 0  # blobs registered by reference: their origin holds them, not replicas
    changed: int = 0  # chunks of blobs overwritten or deleted during the scrub: not judged
    degraded: int = 0  # chunks found with fewer good replicas than placed (lost ones included)
    lost: int = 0  # chunks with no good replica
    short: int = 0  # chunks still short of a good replica when the scrub ended
    servers: dict[int, ServerTally] = field(default_factory=dict)
    lost_chunks: list[str] = field(default_factory=list)  # "key#index", the first MAX_NAMED

    @property
    def total(self) -> ServerTally:
        out = ServerTally()
        for tally in self.servers.values():
            out.add(tally)
        return out

    @property
    def clean(self) -> bool:
        """Every chunk checked has every replica good now (after repair, if asked)."""
        return self.short == 0

    def table(self) -> list[str]:
        """The summary printed by ``blobtier scrub``: one row per server, then the chunks."""
        head = f"{'server':<8} {'good':>9} {'missing':>8} {'corrupt':>8} {'unreachable':>11}"
        head += f" {'repaired':>9} {'failed':>7}" if self.repair else ""
        lines = [f"scrub {self.prefix or '(everything)'}: {plural(self.blobs, 'blob')}, "
                 f"{plural(self.chunks, 'chunk')}, "
                 f"{self.bytes / 2**20:,.1f} MiB of replicas read", head]
        rows = sorted(self.servers.items()) + [("all", self.total)]
        for name, t in rows:
            line = f"{name!s:<8} {t.good:>9} {t.missing:>8} {t.corrupt:>8} {t.unreachable:>11}"
            line += f" {t.repaired:>9} {t.repair_failed:>7}" if self.repair else ""
            lines.append(line)
        healthy = self.chunks - self.degraded
        lines.append(f"chunks: {healthy} healthy, {self.degraded} degraded, {self.lost} lost; "
                     f"{self.short} still short of replicas"
                     + ("" if self.repair else " (--repair writes good copies back)"))
        if self.changed or self.by_reference:
            lines.append(f"not judged: {self.changed} chunks changed during the scrub, "
                         f"{self.by_reference} blobs registered by reference")
        if self.lost_chunks:
            more = self.lost - len(self.lost_chunks)
            lines.append("lost: " + ", ".join(self.lost_chunks) + (f" and {more} more" if more > 0 else ""))
        return lines


@dataclass
class _Verdict:
    """One chunk's replicas: the state of each, and what repair did."""

    states: dict[int, str] = field(default_factory=dict)
    nbytes: int = 0
    repaired: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    changed: bool = False


class Scrubber:
    """Scrub the block replicas of the blobs in ``metadata``.

    Args:
        metadata: the region's records (scanned, and read again before damage is counted).
        stores: the chunk servers to read, by id (read-only stores are fine).
        repair_stores: None: report only. Else called once, on the first repair, for the
            stores to write (an embedded client takes its writer lock there: it may raise
            ``RegionLocked``).
        threads: chunks checked at once.
        metrics: the counters to add to (default: the process's default registry).
    """

    def __init__(self, metadata: MetadataStore, stores: Stores, *,
                 repair_stores: Callable[[], Stores] | None = None, threads: int = 8,
                 metrics: ScrubMetrics | None = None) -> None:
        self.metadata = metadata
        self._stores = stores
        self._repair_stores = repair_stores
        self._writable: Stores | None = None
        self._switch = threading.Lock()
        self._silent: set[int] = set()  # servers already reported unreachable in the log
        if not isinstance(threads, int) or threads < 1:
            raise InvalidRequest(f"scrub threads must be a whole number of at least 1, not {threads!r}")
        self.threads = threads
        self.metrics = metrics if metrics is not None else default_metrics()

    def run(self, prefix: str = "", progress: Progress | None = None) -> ScrubReport:
        """Scrub every blob whose key starts with ``prefix``; raises what the metadata scan
        raises (``MetadataCorrupt``), and ``RegionLocked`` when a repair needs the lock."""
        report = ScrubReport(prefix, self._repair_stores is not None)
        totals = self._totals(prefix) if progress is not None else (0, 0)
        done = [0, 0]
        if progress is not None:
            progress(0, 0, *totals)
        with ThreadPoolExecutor(self.threads, thread_name_prefix="blobtier-scrub") as pool:
            for page in self._pages(prefix):
                for key, rec, verdicts in self._check_page(pool, page):
                    self._account(report, key, rec, verdicts)
                    done[0] += 1
                    done[1] += rec.size
                    if progress is not None:
                        progress(done[0], done[1], *totals)
        return report

    # -- walking -----------------------------------------------------------------------
    def _pages(self, prefix: str) -> Iterator[list[tuple[str, BlobRecord]]]:
        after = None
        while True:
            rows = self.metadata.scan(prefix, after, _PAGE)
            if rows:
                yield rows
            if len(rows) < _PAGE:
                return
            after = rows[-1][0]

    def _totals(self, prefix: str) -> tuple[int, int]:
        """(blobs, bytes) under ``prefix``, for the progress bar: one extra metadata scan."""
        blobs = nbytes = 0
        for page in self._pages(prefix):
            blobs += len(page)
            nbytes += sum(rec.size for _, rec in page)
        return blobs, nbytes

    def _check_page(self, pool: ThreadPoolExecutor, page: Sequence[tuple[str, BlobRecord]]
                    ) -> Iterator[tuple[str, BlobRecord, list[_Verdict]]]:
        """(key, record, a verdict per chunk) for each blob of ``page``, in order, with at
        most a few chunks per thread in flight (a page may hold millions of chunks)."""
        tasks = ((key, rec, i) for key, rec in page for i in range(0 if rec.origin else rec.n_chunks))
        inflight: deque[Future] = deque()
        try:
            for key, rec in page:
                verdicts: list[_Verdict] = []
                while len(verdicts) < (0 if rec.origin else rec.n_chunks):
                    while len(inflight) < 4 * self.threads and (task := next(tasks, None)) is not None:
                        inflight.append(pool.submit(self._check, *task))
                    verdicts.append(inflight.popleft().result())
                yield key, rec, verdicts
        finally:
            for f in inflight:  # after a failure, chunks not yet checked are not worth it
                f.cancel()

    # -- one chunk ---------------------------------------------------------------------
    def _check(self, key: str, rec: BlobRecord, index: int) -> _Verdict:
        digest = rec.chunk_key(index).digest()
        length = rec.chunk_range(index)[1]
        verdict = _Verdict()
        good: memoryview | None = None
        stores = self._writable or self._stores
        for sid in dict.fromkeys(rec.placement[index]):
            state, data = self._read(stores.get(sid), sid, digest, rec, index, length)
            verdict.states[sid] = state
            verdict.nbytes += len(data) if data is not None else 0
            if state == GOOD and good is None:
                good = data
        if all(s == GOOD for s in verdict.states.values()):
            return verdict
        if not self._current(key, rec):
            return _Verdict(changed=True)
        if good is not None and self._repair_stores is not None:
            self._mend(rec, index, digest, good, verdict)
        return verdict

    def _read(self, store: ChunkStore | None, sid: int, digest: bytes, rec: BlobRecord, index: int,
              length: int) -> tuple[str, memoryview | None]:
        """(state, the bytes if good) of the replica on server ``sid``."""
        if store is None:  # the region has no such server (any more): the copy is gone
            return MISSING, None
        try:
            data = store.get(digest)
        except BlobNotFound:
            return MISSING, None
        except ChecksumError:
            return CORRUPT, None
        except PermissionError:
            raise  # a token without the right: every replica would say the same
        except (BlobtierError, OSError) as exc:
            if sid not in self._silent:  # once per server: a dead one fails every chunk
                self._silent.add(sid)
                log.warning("scrub: chunk server %s did not answer (chunk %s): %s", sid,
                            rec.chunk_key(index), exc)
            return UNREACHABLE, None
        if len(data) != length or checksum.compute(rec.checksum_algo, data) != rec.checksums[index]:
            return CORRUPT, None
        return GOOD, data

    def _current(self, key: str, rec: BlobRecord) -> bool:
        """Whether ``rec`` is still the committed version of ``key``."""
        now = self.metadata.get(key)
        return now is not None and now.blob_id == rec.blob_id and now.version == rec.version

    def _mend(self, rec: BlobRecord, index: int, digest: bytes, good: memoryview, verdict: _Verdict) -> None:
        """Write ``good`` (verified) to each server of the placement that lost or damaged its
        copy; a replica counts as repaired once it reads back verified from that server."""
        stores = self._stores_to_write()
        h = checksum.xxh3(good)  # what chunk servers check on receipt, whatever the record's algorithm
        for sid, state in verdict.states.items():
            if state not in (MISSING, CORRUPT):
                continue
            store = stores.get(sid)
            ok = False
            if store is not None:
                try:
                    store.put_many([(digest, good, h)])
                    ok = self._read(store, sid, digest, rec, index, len(good))[0] == GOOD
                except PermissionError:
                    raise
                except (BlobtierError, OSError) as exc:
                    log.warning("scrub: could not repair chunk %s on server %s: %s",
                                rec.chunk_key(index), sid, exc)
            (verdict.repaired if ok else verdict.failed).append(sid)

    def _stores_to_write(self) -> Stores:
        with self._switch:
            if self._writable is None:
                assert self._repair_stores is not None
                # From now on this scrub also reads through them: an embedded writer's
                # volumes index its own repairs at once.
                self._writable = self._repair_stores()
            return self._writable

    # -- counting ----------------------------------------------------------------------
    def _account(self, report: ScrubReport, key: str, rec: BlobRecord, verdicts: list[_Verdict]) -> None:
        m = self.metrics
        report.blobs += 1
        m.blobs.inc()
        if rec.origin:
            report.by_reference += 1
            return
        for index, v in enumerate(verdicts):
            if v.changed:
                report.changed += 1
                m.changed.inc()
                continue
            report.chunks += 1
            report.bytes += v.nbytes
            m.chunks.inc()
            m.bytes.inc(v.nbytes)
            for sid, state in v.states.items():
                tally = report.servers.setdefault(sid, ServerTally())
                setattr(tally, state, getattr(tally, state) + 1)
                m.replicas.labels(state).inc()
            for sid in v.repaired:
                report.servers[sid].repaired += 1
            for sid in v.failed:
                report.servers[sid].repair_failed += 1
            m.repaired.inc(len(v.repaired))
            m.repair_failed.inc(len(v.failed))
            good = sum(s == GOOD for s in v.states.values())
            if good < len(v.states):
                report.degraded += 1
            if good == 0:
                report.lost += 1
                m.lost.inc()
                if len(report.lost_chunks) < MAX_NAMED:
                    report.lost_chunks.append(f"{key}#{index}")
            if good + len(v.repaired) < len(v.states):
                report.short += 1
