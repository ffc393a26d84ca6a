"""Replication over chunk servers: placement and a write quorum on write, verified,
hedged failover on read.

Works over any ``ChunkStore``: local volume directories, or gRPC chunk servers
(``RemoteChunkStore``). A chunk's replicas go to the servers rendezvous hashing ranks best
for its digest (skipping servers that just failed); a write succeeds once ``write_quorum``
replicas of every chunk are durable. A read verifies every copy against the record's
checksum: a replica that is missing, down or corrupt is counted and skipped, so the
caller gets wrong bytes never and an error only when no good copy is left.

Over local stores a read is a memory-mapped lookup, so chunks are read inline, one after
another, as fast as the disk allows. Over remote stores the read path is the one the
block layer needs against real servers:

- chunks are read in parallel by a bounded pool, each directly from a server that holds
  a replica (no proxy);
- a request whose first byte has not come after the hedge threshold
  (``hedging.HedgeTimer``) gets a second request to the next replica (and, should that
  one be slow to start too, a third); the first good answer wins and the others are
  cancelled. The threshold is on time to first byte, not
  to the last: a straggler is a server slow to start answering, and time to first byte
  does not grow with the chunk size, so one threshold fits chunks of every size;
- an error or checksum failure moves on to the next replica at once and benches the bad
  server for a while (``backoff.ReplicaHealth``);
- when every replica failed transiently, the read is retried a bounded number of times
  after an exponential backoff with jitter (``backoff.Backoff``);
- the number of requests in flight follows an AIMD limit (``congestion.AdaptiveLimit``)
  that errors, timeouts, retries and rising latency cut, so many clients that restart at
  once do not turn into a storm of retries.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from blobtier import checksum, placement
from blobtier.backoff import Backoff, ReplicaHealth
from blobtier.blockstore_sim.congestion import AdaptiveLimit
from blobtier.blockstore_sim.hedging import HedgeTimer
from blobtier.chunks import Buffer, ChunkKey, ChunkRef, ChunkStore
from blobtier.errors import (
    BlobNotFound,
    BlobtierError,
    ChecksumError,
    InvalidRequest,
    TierUnavailable,
    TimedOut,
)
from blobtier.grants import BOOK
from blobtier.metrics import TierStats

log = logging.getLogger(__name__)

COUNTERS = ("requests", "hedges", "hedge_wins", "failovers", "retries", "timeouts", "errors",
            "corrupt", "missing")


class PendingGet(Protocol):
    cancelled: bool

    def result(self, on_first: Callable[[], None] | None = None) -> memoryview:
        """The bytes; ``on_first`` is called when the first of them arrives."""
        ...

    def cancel(self) -> None: ...


@runtime_checkable
class CancellableStore(Protocol):
    """A chunk store whose reads can be started and abandoned (a remote chunk server)."""

    def start_get(self, digest: bytes, offset: int = 0, length: int = -1,
                  timeout_s: float | None = None, key: ChunkKey | None = None) -> PendingGet:
        """``key``: the chunk's key, whose grant the request carries (``remote.py``)."""
        ...


@dataclass(frozen=True)
class ReadPolicy:
    """How reads from remote chunk servers behave.

    Args:
        concurrency: chunk reads in flight at most (also the ceiling of the adaptive limit).
        hedge_after_ms: > 0: hedge a request with no answer after this long; 0:
            automatically (a high percentile of recent times to first byte); < 0: never.
        max_retries: extra rounds over the replicas after every one failed transiently.
        timeout_s: deadline of one request.
        backoff: delays between retry rounds.
    """

    concurrency: int = 16
    hedge_after_ms: float = 0.0
    max_retries: int = 3
    timeout_s: float = 30.0
    backoff: Backoff = field(default_factory=Backoff)


class _Request:
    """One request in flight to one replica."""

    __slots__ = ("sid", "call", "started", "changed", "answered", "first_byte_s")

    def __init__(self, sid: int, call: PendingGet, started: float, changed: threading.Event) -> None:
        self.sid = sid
        self.call = call
        self.started = started
        self.changed = changed
        self.answered = False
        self.first_byte_s = 0.0

    def first_byte(self) -> None:
        self.first_byte_s = time.perf_counter() - self.started
        self.answered = True
        self.changed.set()

    def remaining(self, delay: float) -> float:
        return max(0.0, delay - (time.perf_counter() - self.started))


@dataclass
class _Tally:
    """What went wrong with the replicas of one chunk."""

    corrupt: int = 0
    missing: int = 0
    unavailable: int = 0
    last: BaseException | None = None

    def error(self, key: ChunkKey, attempts: int = 1) -> Exception:
        counts = f"{self.corrupt} corrupt, {self.unavailable} unavailable, {self.missing} missing"
        tried = f" in {attempts} rounds" if attempts > 1 else ""
        if self.corrupt:
            return ChecksumError(f"chunk {key}: no good replica ({counts}{tried})")
        if self.unavailable:
            return TierUnavailable(f"chunk {key}: no replica could be read ({counts}{tried}); "
                                   f"last error: {self.last}")
        return BlobNotFound(f"chunk {key}: no replica holds it ({counts})")


class ReplicatedBlockStore:
    """A ``BlockStore`` over ``servers`` (id -> ChunkStore).

    Args:
        servers: every chunk server that may hold replicas, by id.
        replicas: copies written per chunk.
        writable_ids: the servers new chunks may go to (default: all).
        stats: counters; read failures are counted under tier ``origin``.
        write_quorum: replicas of each chunk that must be durable for a write to succeed
            (0: all of them).
        policy: how reads from remote servers hedge, retry and limit themselves.
    """

    def __init__(self, servers: Mapping[int, ChunkStore], replicas: int = 3, *,
                 writable_ids: Sequence[int] | None = None, stats: TierStats | None = None,
                 write_quorum: int = 0, policy: ReadPolicy | None = None) -> None:
        self.servers = dict(servers)
        self.replicas = replicas
        self.writable_ids = sorted(writable_ids if writable_ids is not None else self.servers)
        self.stats = stats
        self.write_quorum = write_quorum or replicas
        if not 1 <= self.write_quorum <= replicas:
            raise InvalidRequest(f"write quorum {write_quorum} must be between 1 and {replicas}")
        self.policy = policy or ReadPolicy()
        self.health = ReplicaHealth()
        self.hedge = HedgeTimer(self.policy.hedge_after_ms)
        self.limit = AdaptiveLimit(self.policy.concurrency)
        self._remote = any(isinstance(s, CancellableStore) for s in self.servers.values())
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self.servers)),
                                        thread_name_prefix="blobtier-replica")
        self._chunk_pool: ThreadPoolExecutor | None = None
        self._request_pool: ThreadPoolExecutor | None = None
        self._pools_lock = threading.Lock()
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._counts_lock = threading.Lock()

    # -- writing -----------------------------------------------------------------------
    def place(self, key: ChunkKey) -> tuple[int, ...]:
        """The servers rendezvous hashing picks for ``key`` (ignoring server health)."""
        return tuple(placement.choose(key.digest(), self.writable_ids, self.replicas))

    def _plan(self, digest: bytes) -> list[int]:
        """Every writable server, best first for ``digest``: healthy ones before benched."""
        return self.health.order(placement.rank(digest, self.writable_ids))

    def write_chunks(self, chunks: Sequence[tuple[ChunkKey, Buffer, int]]) -> list[tuple[int, ...]]:
        if len(self.writable_ids) < self.replicas:
            raise InvalidRequest(f"{self.replicas} replicas need at least {self.replicas} "
                                 f"writable chunk servers, have {len(self.writable_ids)}")
        plans = [self._plan(key.digest()) for key, _, _ in chunks]
        holders: list[list[int]] = [[] for _ in chunks]
        failed: list[list[int]] = [[] for _ in chunks]
        errors: dict[int, BaseException] = {}
        wanted = {i: plan[:self.replicas] for i, plan in enumerate(plans)}
        for _ in range(2):  # the placement, then substitutes for replicas that failed
            self._put_round(chunks, wanted, holders, failed, errors)
            wanted = {}
            for i, plan in enumerate(plans):
                short = self.replicas - len(holders[i])
                spare = [s for s in plan[self.replicas:] if s not in errors and s not in holders[i]]
                if short and spare:
                    wanted[i] = spare[:short]
            if not wanted:
                break
        out = []
        for i, (key, _, _) in enumerate(chunks):
            if len(holders[i]) < self.write_quorum:
                first = next(iter(errors.values()), None)
                raise TierUnavailable(f"chunk {key}: {len(holders[i])} of {self.replicas} replicas "
                                      f"durable, write quorum is {self.write_quorum}: {first}")
            # Replicas in rank order: reads start at the first, which spreads them over
            # the servers. A replica that failed stays listed (last) so that every chunk
            # names ``replicas`` servers; reads find it missing and move on.
            rank = plans[i].index
            out.append(tuple((sorted(holders[i], key=rank) + failed[i])[:self.replicas]))
        return out

    def _put_round(self, chunks: Sequence[tuple[ChunkKey, Buffer, int]], wanted: dict[int, list[int]],
                   holders: list[list[int]], failed: list[list[int]],
                   errors: dict[int, BaseException]) -> None:
        per_server: dict[int, list[int]] = {}
        for i, sids in wanted.items():
            for sid in sids:
                per_server.setdefault(sid, []).append(i)
        futures = {sid: self._pool.submit(self._put_on, sid, [chunks[i] for i in idx])
                   for sid, idx in per_server.items()}
        for sid, fut in futures.items():
            try:
                fut.result()
            except PermissionError:
                raise
            except (TierUnavailable, OSError) as exc:  # this replica failed; the quorum decides
                log.warning("chunk server %s failed a write: %s", sid, exc)
                errors[sid] = exc
                self.health.failed(sid)
                for i in per_server[sid]:
                    failed[i].append(sid)
            else:
                self.health.ok(sid)
                for i in per_server[sid]:
                    holders[i].append(sid)

    def _put_on(self, sid: int, chunks: Sequence[tuple[ChunkKey, Buffer, int]]) -> None:
        """Store ``chunks`` on server ``sid``; a remote one is told their keys, whose
        grants the requests carry."""
        server = self.servers[sid]
        items = [(key.digest(), data, h) for key, data, h in chunks]
        if isinstance(server, CancellableStore):
            server.put_many(items, keys=[key for key, _, _ in chunks])
        else:
            server.put_many(items)

    def _delete_on(self, sid: int, keys: list[ChunkKey]) -> None:
        server = self.servers[sid]
        digests = [key.digest() for key in keys]
        if isinstance(server, CancellableStore):
            server.delete_many(digests, keys=keys)
        else:
            server.delete_many(digests)

    def delete_chunks(self, placed: Iterable[tuple[ChunkKey, Sequence[int]]]) -> None:
        per_server: dict[int, list[ChunkKey]] = {}
        for key, where in placed:
            for sid in where:
                if sid in self.servers:
                    per_server.setdefault(sid, []).append(key)
        for f in [self._pool.submit(self._delete_on, sid, k) for sid, k in per_server.items()]:
            f.result()

    # -- reading -----------------------------------------------------------------------
    def read_many(self, refs: Sequence[ChunkRef]) -> list[memoryview]:
        if not self._remote:
            return [self._read_local(rec, index) for rec, index in refs]
        BOOK.ensure(rec for rec, _ in refs)  # the grants the requests carry
        if len(refs) == 1:
            return [self._read_remote(*refs[0])]
        pool = self._pools()[0]
        futures = [pool.submit(self._read_remote, rec, index) for rec, index in refs]
        try:
            return [f.result() for f in futures]
        finally:
            for f in futures:
                f.cancel()  # after a failure, chunks not yet started are not worth reading

    def _read_local(self, rec, index: int) -> memoryview:
        key = rec.chunk_key(index)
        digest, expected = key.digest(), rec.checksums[index]
        tally = _Tally()
        try:
            for sid in rec.placement[index]:
                server = self.servers.get(sid)
                if server is None:
                    tally.missing += 1
                    continue
                try:
                    data = server.get(digest)
                    checksum.verify(rec.checksum_algo, data, expected, f"chunk {key} on server {sid}")
                    return data
                except ChecksumError as exc:
                    tally.corrupt += 1
                    log.warning("%s; trying the next replica", exc)
                except BlobNotFound:
                    tally.missing += 1
                except (TierUnavailable, OSError) as exc:
                    tally.unavailable += 1
                    tally.last = exc
                    log.debug("replica %s of chunk %s unavailable: %s", sid, key, exc)
        finally:
            self._account(tally)
        raise tally.error(key)

    def _read_remote(self, rec, index: int) -> memoryview:
        key = rec.chunk_key(index)
        tally = _Tally()
        try:
            for attempt in range(self.policy.max_retries + 1):
                if attempt:
                    self._count("retries")
                    self.limit.signal()
                    time.sleep(self.policy.backoff.delay(attempt - 1))
                before = tally.unavailable
                data = self._race(rec, index, key, tally)
                if data is not None:
                    return data
                if tally.unavailable == before:
                    break  # missing or corrupt everywhere: another round cannot help
            raise tally.error(key, attempt + 1)
        finally:
            self._account(tally)

    def _race(self, rec, index: int, key: ChunkKey, tally: _Tally) -> memoryview | None:
        """One round over the replicas. The primary first; while no request has started
        answering, another replica is asked each time the hedge threshold passes; after
        a failure the next replica at once. The first verified answer wins."""
        digest = key.digest()
        queue = deque()
        for sid in self.health.order(rec.placement[index]):
            if sid in self.servers:
                queue.append(sid)
            else:
                tally.missing += 1
        running: dict[Future, _Request] = {}
        changed = threading.Event()  # a request's first byte or its end
        primary = last = self._launch(queue, running, digest, rec, index, changed, hedge=False)
        try:
            while running:
                done = [f for f in running if f.done()]
                if not done:
                    delay = self.hedge.delay() if queue and last is not None else None
                    answering = any(r.answered for r in running.values())
                    if delay is not None and not answering:
                        if not changed.wait(last.remaining(delay)):
                            hedge = self._launch(queue, running, digest, rec, index, changed, hedge=True)
                            if hedge is not None:
                                self._count("hedges")
                                last = hedge
                            else:
                                last = None  # no room for a hedge now: just wait
                            continue
                    else:
                        changed.wait()
                    changed.clear()
                    continue
                for fut in done:
                    req = running.pop(fut)
                    data, exc = fut.result()
                    if isinstance(exc, PermissionError):
                        raise exc  # refused (a grant, a token): every replica would refuse it
                    if exc is None:
                        self.health.ok(req.sid)
                        self.hedge.observe(req.first_byte_s)
                        if req is not primary:
                            self._count("hedge_wins")
                        return data
                    self._judge(req.sid, key, exc, tally)
                if queue and not running:
                    self._count("failovers")
                    primary = last = self._launch(queue, running, digest, rec, index, changed,
                                                  hedge=False)
            return None
        finally:
            for req in running.values():
                req.call.cancel()

    def _launch(self, queue: deque, running: dict, digest: bytes, rec, index: int,
                changed: threading.Event, hedge: bool) -> _Request | None:
        """Start a request to the next replica in ``queue``; a hedge only if the limit
        has room right now."""
        if not queue:
            return None
        if hedge:
            if not self.limit.try_acquire():
                return None
        else:
            self.limit.acquire()
        sid = queue.popleft()
        self._count("requests")
        started = time.perf_counter()
        try:
            req = _Request(sid, self.servers[sid].start_get(digest, timeout_s=self.policy.timeout_s,
                                                            key=rec.chunk_key(index)),
                           started, changed)
        except BaseException:
            self.limit.release()
            raise
        fut = self._pools()[1].submit(self._fetch, req, rec, index)
        fut.add_done_callback(lambda _: changed.set())
        running[fut] = req
        return req

    def _fetch(self, req: _Request, rec, index: int) -> tuple[memoryview | None, BaseException | None]:
        """Collect and verify one answer (in a request thread); release its room."""
        data = exc = None
        try:
            data = req.call.result(on_first=req.first_byte)
            checksum.verify(rec.checksum_algo, data, rec.checksums[index],
                            f"chunk {rec.chunk_key(index)} on server {req.sid}")
        except (BlobtierError, OSError) as e:  # any answer but the bytes: try another replica
            data, exc = None, e
        congested = isinstance(exc, TierUnavailable) and not req.call.cancelled
        self.limit.release(time.perf_counter() - req.started if exc is None else None, congested)
        return data, exc

    def _judge(self, sid: int, key: ChunkKey, exc: BaseException, tally: _Tally) -> None:
        if isinstance(exc, ChecksumError):
            tally.corrupt += 1
            self._count("corrupt")
            self.health.failed(sid)
            log.warning("%s; trying the next replica", exc)
        elif isinstance(exc, BlobNotFound):
            tally.missing += 1
            self._count("missing")
        else:
            tally.unavailable += 1
            tally.last = exc
            self._count("timeouts" if isinstance(exc, TimedOut) else "errors")
            self.health.failed(sid)
            log.debug("replica %s of chunk %s unavailable: %s", sid, key, exc)

    def _pools(self) -> tuple[ThreadPoolExecutor, ThreadPoolExecutor]:
        """(chunk pool, request pool), made on first use. Requests run in their own pool
        so that a chunk waiting on its requests never starves them."""
        if self._request_pool is None:
            with self._pools_lock:
                if self._request_pool is None:
                    n = self.policy.concurrency
                    self._chunk_pool = ThreadPoolExecutor(n, thread_name_prefix="blobtier-read")
                    self._request_pool = ThreadPoolExecutor(2 * n + 2, thread_name_prefix="blobtier-req")
        return self._chunk_pool, self._request_pool

    # -- accounting --------------------------------------------------------------------
    def _account(self, tally: _Tally) -> None:
        if self.stats is not None and (tally.corrupt or tally.missing or tally.unavailable):
            self.stats.add("origin", errors=tally.missing + tally.unavailable, corrupt=tally.corrupt)

    def _count(self, name: str) -> None:
        with self._counts_lock:
            self._counts[name] += 1

    def counters(self) -> dict[str, float]:
        """Requests, hedges, failovers, retries... since start, plus the current
        concurrency limit and hedge threshold."""
        with self._counts_lock:
            out: dict[str, float] = dict(self._counts)
        delay = self.hedge.delay()
        out["limit"] = self.limit.limit
        out["hedge_after_ms"] = -1.0 if delay is None else delay * 1000
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for pool in (self._chunk_pool, self._request_pool):
            if pool is not None:
                pool.shutdown(wait=True)
        for server in self.servers.values():
            server.close()
