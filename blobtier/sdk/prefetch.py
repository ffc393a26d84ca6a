"""Prefetch: fetch chunks through the tier chain before anyone asks for them.

Two uses share one mechanism:

- ``follow``: a sampler announced the order of the coming samples and reports how many
  it has handed out. The prefetcher keeps a window of samples ahead of that position
  fetched into the cache. The window is as deep as consumption rate x fetch latency
  (with a safety factor), and never more bytes than the memory bound, so prefetched
  chunks do not push out the ones about to be read.
- ``Client.prefetch(keys)``: hydrate the cache with named blobs in the background, as
  fast as the bound on requests in flight allows.

Fetching is done by a small thread pool calling ``TierChain.read`` on batches of
samples; the bytes land in the cache tiers (the shared L1 that DataLoader workers read)
and the prefetcher keeps no reference to them.

Its threads do not survive ``fork``: a forked child's copy is closed (it refuses new
work) before any code of the child runs; the child's client makes a prefetcher of its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from blobtier import forks
from blobtier.chunks import ChunkRef
from blobtier.errors import BlobtierError

log = logging.getLogger(__name__)

Sample = Sequence[ChunkRef]  # the chunks of one sample (one blob, usually one chunk)


def window(rate: float | None, latency: float | None, batch: int, concurrency: int) -> int:
    """Samples a follower keeps fetched ahead of a consumer taking ``rate`` samples/s when
    a batch of ``batch`` takes ``latency`` seconds (0.05 until measured): rate x latency
    x 2 plus a batch, at least ``batch x concurrency`` (``blobtier plan`` uses it too)."""
    latency = latency or 0.05
    return max(batch * concurrency, int(2 * (rate or 0.0) * latency) + batch)


class _Rate:
    """An exponentially weighted average."""

    def __init__(self, alpha: float = 0.2) -> None:
        self.alpha = alpha
        self.value: float | None = None

    def add(self, x: float) -> None:
        self.value = x if self.value is None else self.value + self.alpha * (x - self.value)


class PrefetchJob:
    """One announced sequence being fetched ahead of its consumer."""

    def __init__(self, samples: list[Sample], progress: Callable[[], int] | None,
                 deadline: float | None) -> None:
        self.samples = samples
        self.sizes = [sum(rec.chunk_range(i)[1] for rec, i in s) for s in samples]
        self.progress = progress
        self.deadline = deadline
        self.next = 0  # first sample not yet submitted
        self.fetched = 0  # samples whose fetch completed
        self.failed = 0
        self.skipped = 0  # consumed before the prefetcher got to them
        self.max_ahead_bytes = 0  # the most bytes ever fetched beyond the consumer
        self.cancelled = False
        self.done = threading.Event()

    @property
    def settled(self) -> int:
        return self.fetched + self.failed + self.skipped

    def consumed(self) -> int:
        """Samples the consumer has reached (none for a hydration with no consumer)."""
        return 0 if self.progress is None else max(0, min(self.progress(), len(self.samples)))

    def cancel(self) -> None:
        self.cancelled = True
        self.done.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self.done.wait(timeout)


class Prefetcher:
    """Args:
        chain: the read path to warm.
        memory_bytes: most bytes fetched ahead of a follower's consumer at any time.
        concurrency: batches in flight.
        batch: samples per ``TierChain.read``.
    """

    def __init__(self, read: Callable[[Sequence[ChunkRef]], list], memory_bytes: int,
                 concurrency: int = 8, batch: int = 32) -> None:
        self.read = read
        self.memory_bytes = memory_bytes
        self.concurrency = concurrency
        self.batch = batch
        self._jobs: list[PrefetchJob] = []
        self._cv = threading.Condition()
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="blobtier-prefetch")
        self._inflight = 0
        self._rate = _Rate()  # samples consumed per second
        self._latency = _Rate()  # seconds per fetched batch
        self._last = (time.monotonic(), 0)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="blobtier-prefetcher", daemon=True)
        self._thread.start()
        forks.register(self)

    def _after_fork_in_child(self) -> None:
        # No thread of the parent's runs here: nothing would ever fetch or finish a job.
        self._cv = threading.Condition()
        self._jobs = []
        self._closed = True
        self._pool = None  # the parent's: shutting it down here could wait on its locks

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("the prefetcher is closed (or was inherited through fork)")

    def follow(self, samples: list[Sample], progress: Callable[[], int]) -> PrefetchJob:
        """Replace the followed sequence (a new epoch replaces the last one)."""
        job = PrefetchJob(samples, progress, None)
        with self._cv:
            self._check_open()
            for old in self._jobs:
                if old.progress is not None:
                    old.cancel()
            self._jobs = [j for j in self._jobs if not j.cancelled] + [job]
            self._last = (time.monotonic(), 0)
            self._cv.notify_all()
        return job

    def hydrate(self, samples: list[Sample], deadline: float | None = None) -> PrefetchJob:
        """Fetch ``samples`` as fast as allowed; stop at ``deadline`` (seconds since the epoch)."""
        if deadline is not None:
            deadline = time.monotonic() + (deadline - time.time())
        job = PrefetchJob(samples, None, deadline)
        with self._cv:
            self._check_open()
            self._jobs.append(job)
            self._cv.notify_all()
        return job

    def depth(self, job: PrefetchJob) -> int:
        """Samples to keep fetched ahead: rate x latency x 2, within the memory bound."""
        if job.progress is None:
            return len(job.samples)
        return window(self._rate.value, self._latency.value, self.batch, self.concurrency)

    def _run(self) -> None:
        while True:
            with self._cv:
                if self._closed:
                    return
                work = self._next_batch()
                if work is None:
                    self._cv.wait(0.005)
                    continue
                self._inflight += 1
            job, lo, hi = work
            fut = self._pool.submit(self._fetch, job, lo, hi)
            fut.add_done_callback(lambda f, j=job, n=hi - lo: self._finished(j, n, f))

    def _next_batch(self) -> tuple[PrefetchJob, int, int] | None:
        """The next batch any job may fetch now; called with the lock held."""
        if self._inflight >= self.concurrency:
            return None
        now = time.monotonic()
        for job in list(self._jobs):
            if job.cancelled or job.next >= len(job.samples) or \
                    (job.deadline is not None and now > job.deadline):
                if not job.cancelled and job.settled < job.next:
                    continue  # its last batches are still being fetched
                self._jobs.remove(job)
                job.done.set()
                continue
            consumed = job.consumed()
            if job.progress is not None:
                self._observe(consumed, now)
            if consumed > job.next:  # never fetch what was already read
                job.skipped += consumed - job.next
                job.next = consumed
            limit = min(len(job.samples), consumed + self.depth(job))
            hi = min(job.next + self.batch, limit)
            while hi > job.next and sum(job.sizes[consumed:hi]) > self.memory_bytes:
                hi -= 1
            if hi <= job.next:
                continue
            lo, job.next = job.next, hi
            ahead = sum(job.sizes[consumed:hi])
            job.max_ahead_bytes = max(job.max_ahead_bytes, ahead)
            return job, lo, hi
        return None

    def _observe(self, consumed: int, now: float) -> None:
        t0, c0 = self._last
        if now - t0 >= 0.05:
            if consumed >= c0:
                self._rate.add((consumed - c0) / (now - t0))
            self._last = (now, consumed)

    def _fetch(self, job: PrefetchJob, lo: int, hi: int) -> None:
        refs = [ref for sample in job.samples[lo:hi] for ref in sample]
        start = time.monotonic()
        self.read(refs)  # the bytes stay in the cache tiers; nothing is held here
        self._latency.add(time.monotonic() - start)

    def _finished(self, job: PrefetchJob, n: int, fut: Future) -> None:
        exc = fut.exception()
        with self._cv:
            self._inflight -= 1
            if exc is None:
                job.fetched += n
            else:
                job.failed += n
                if not isinstance(exc, BlobtierError | OSError):
                    log.error("prefetch failed: %r", exc)
                else:
                    log.debug("prefetch of %d samples failed: %s", n, exc)
            if job.settled >= len(job.samples):
                job.done.set()
            self._cv.notify_all()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            for job in self._jobs:
                job.cancel()
            self._cv.notify_all()
        self._thread.join()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
