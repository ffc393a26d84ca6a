"""Read-through with single flight: a miss on the node is read from the block layer once.

However many requests ask for one missing chunk at the same time (eight DataLoader
processes on eight hosts starting the same epoch), the first one reads it from the
``ChunkSource`` and the others wait for that read. The bytes are verified against the
chunk's record, offered to the cache, and only then is the read marked done, so a request
that arrives a moment later finds the chunk cached instead of reading it again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from blobtier import checksum
from blobtier.chunks import ChunkKey, ChunkRef, ChunkSource
from blobtier.errors import BlobtierError, TierUnavailable
from blobtier.flash_l3.cache import FlashCache
from blobtier.rpc.cache_service import FAILED, FILLED, HIT, Answer

log = logging.getLogger(__name__)



class ReadThrough:
    """A ``FlashCache`` over a ``ChunkSource``.

    Args:
        cache: the node's cache.
        source: the block layer (or an origin) that every miss is read from.
        on_fill: told the seconds of every batch read from the source (a histogram).
    """

    def __init__(self, cache: FlashCache, source: ChunkSource,
                 on_fill: Callable[[float], None] | None = None) -> None:
        self.cache = cache
        self.source = source
        self.on_fill = on_fill
        self._lock = threading.Lock()
        self._inflight: dict[bytes, Future] = {}
        self.counters = {"fills": 0, "fill_failures": 0, "coalesced": 0}

    def read(self, refs: Sequence[ChunkRef], touch: bool = True, force: bool = False) -> list[Answer]:
        """Each chunk from the cache, else from the source (once across concurrent callers).

        ``force``: cache what is read past the admission policy (a prefetch).
        """
        answers: list[Answer | None] = [None] * len(refs)
        missing = []
        for i, (rec, index) in enumerate(refs):
            view = self.cache.get(rec.chunk_key(index), touch)
            if view is not None:
                answers[i] = Answer(HIT, view)
            else:
                missing.append(i)
        if missing:
            for i, answer in zip(missing, self.fill([refs[i] for i in missing], touch, force)):
                answers[i] = answer
        return answers  # type: ignore[return-value]

    def fill(self, refs: Sequence[ChunkRef], touch: bool = True, force: bool = False) -> list[Answer]:
        """Read chunks the cache missed: those nobody is reading yet from the source, in one
        batch; wait for the others."""
        keys = [rec.chunk_key(index) for rec, index in refs]
        own, waits, cached = self._claim(keys)
        answers: dict[int, Answer] = {}
        if own:
            answers.update(self._fetch([refs[i] for i in own], own, keys, force))
        for i in cached:  # cached while we looked: read it (or, if evicted since, fetch it)
            view = self.cache.get(keys[i], touch)
            if view is None:
                answers.update(self._fetch([refs[i]], [i], keys, force))
            else:
                answers[i] = Answer(HIT, view)
        for i, fut in waits:
            try:
                answers[i] = Answer(FILLED, fut.result())
            except (BlobtierError, OSError) as exc:
                answers[i] = Answer(FAILED, None, exc)
        return [answers[i] for i in range(len(refs))]

    def _claim(self, keys: list[ChunkKey]) -> tuple[list[int], list[tuple[int, Future]], list[int]]:
        own, waits, cached = [], [], []
        with self._lock:
            for i, key in enumerate(keys):
                digest = key.digest()
                fut = self._inflight.get(digest)
                if fut is not None:
                    waits.append((i, fut))
                elif self.cache.contains(key):
                    cached.append(i)  # filled by a read that finished after our lookup
                else:
                    self._inflight[digest] = Future()
                    own.append(i)
            self.counters["coalesced"] += len(waits)
        return own, waits, cached

    def _fetch(self, refs: list[ChunkRef], positions: list[int], keys: list[ChunkKey],
               force: bool) -> dict[int, Answer]:
        """Read ``refs`` from the source, cache them, then release their waiters."""
        started = time.perf_counter()
        answers: dict[int, Answer] = {}
        try:
            for i, result in zip(positions, self._read_source(refs)):
                if isinstance(result, BaseException):
                    answers[i] = Answer(FAILED, None, result)
                    continue
                if force:
                    self.cache.insert(keys[i], result)
                else:
                    self.cache.put(keys[i], result)
                answers[i] = Answer(FILLED, result)
        finally:
            self._settle(positions, keys, answers)
        if self.on_fill is not None:
            self.on_fill(time.perf_counter() - started)
        return answers

    def _settle(self, positions: list[int], keys: list[ChunkKey], answers: dict[int, Answer]) -> None:
        """Release the waiters of a fill, whatever became of it."""
        with self._lock:
            futs = [self._inflight.pop(keys[i].digest(), None) for i in positions]
            self.counters["fills"] += sum(1 for a in answers.values() if a.outcome == FILLED)
            self.counters["fill_failures"] += sum(1 for a in answers.values() if a.outcome == FAILED)
        for i, fut in zip(positions, futs):
            answer = answers.get(i)
            if fut is None:
                continue
            if answer is None:
                fut.set_exception(TierUnavailable(f"the fill of chunk {keys[i]} was abandoned"))
            elif answer.outcome == FAILED:
                fut.set_exception(answer.error)
            else:
                fut.set_result(answer.data)

    def _read_source(self, refs: list[ChunkRef]) -> list[memoryview | BaseException]:
        """Verified bytes of each chunk, or the error that kept it from being read.

        One batch first (the block layer reads it in parallel); if any chunk of it fails,
        each is read on its own so that one bad chunk does not fail the others.
        """
        try:
            views = self.source.read_many(refs)
        except (BlobtierError, OSError) as exc:
            if len(refs) == 1:
                return [exc]
            return [self._read_source([ref])[0] for ref in refs]
        out: list[memoryview | BaseException] = []
        for (rec, index), view in zip(refs, views):
            try:  # the source verifies too; the cache must never keep bytes it did not check
                checksum.verify(rec.checksum_algo, view, rec.checksums[index],
                                f"chunk {rec.chunk_key(index)} from the block layer")
                out.append(view)
            except BlobtierError as exc:
                out.append(exc)
        return out
