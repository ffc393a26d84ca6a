"""Read-through with single flight: a miss on the node is read from the block layer once.

However many requests ask for one missing chunk at the same time (eight DataLoader
processes on eight hosts starting the same epoch), the first one reads it from the
``ChunkSource`` and the others wait for that read. The bytes are verified against the
chunk's record, offered to the cache, and only then is the read marked done, so a request
that arrives a moment later finds the chunk cached instead of reading it again.

The records come from the requests, so they are not trusted: before anything is read
(``check``), each must name only places this node reads from, its own chunk servers or
an origin its ``OriginAllowList`` covers. Anything else is ``Forbidden``: a node that
read what a request names would read ``file:///etc/shadow`` for anyone who asked.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING

from blobtier import checksum
from blobtier.chunks import ChunkKey, ChunkRef, ChunkSource
from blobtier.errors import BlobtierError, Forbidden, TierUnavailable
from blobtier.flash_l3.cache import FlashCache
from blobtier.rpc.cache_service import FAILED, FILLED, HIT, Answer

if TYPE_CHECKING:
    from blobtier.origins import OriginAllowList

log = logging.getLogger(__name__)


class ReadThrough:
    """A ``FlashCache`` over a ``ChunkSource``.

    Args:
        cache: the node's cache.
        source: the block layer (or an origin) that every miss is read from.
        on_fill: told the seconds of every batch read from the source (a histogram).
        origins: the origin locations records may name (None: no origin is read; records
            registered by reference are refused).

    The chunk servers records may name are the keys of ``source.servers`` when the source
    has them (the block layer); a source without them is trusted with any placement.
    """

    def __init__(self, cache: FlashCache, source: ChunkSource,
                 on_fill: Callable[[float], None] | None = None,
                 origins: OriginAllowList | None = None) -> None:
        self.cache = cache
        self.source = source
        self.on_fill = on_fill
        self.origins = origins
        servers = getattr(source, "servers", None)
        self._servers = frozenset(servers) if servers is not None else None
        self._lock = threading.Lock()
        self._inflight: dict[bytes, Future] = {}
        self.counters = {"fills": 0, "fill_failures": 0, "coalesced": 0, "refused": 0}

    def check(self, refs: Sequence[ChunkRef]) -> None:
        """Raise ``Forbidden`` unless every chunk lies where this node reads from: on its
        chunk servers, or in an allowed origin. The message names nothing of the request."""
        seen: set[int] = set()
        for rec, index in refs:
            if rec.origin:
                if id(rec) not in seen and not self._origin_allowed(rec.origin):
                    self._refuse("an origin this node does not read from", rec.origin.partition("\n")[0])
                seen.add(id(rec))
            elif self._servers is not None and index < len(rec.placement) and \
                    not self._servers.issuperset(rec.placement[index]):
                self._refuse("chunk servers this node does not read from", str(rec.placement[index]))

    def _origin_allowed(self, origin: str) -> bool:
        url, sep, _ = origin.partition("\n")
        return bool(sep) and self.origins is not None and self.origins.allows(url)

    def _refuse(self, what: str, named: str) -> None:
        with self._lock:
            self.counters["refused"] += 1
        log.warning("refused a read-through naming %s: %r", what, named[:256])
        raise Forbidden(f"a record names {what}")

    def read(self, refs: Sequence[ChunkRef], touch: bool = True, force: bool = False) -> list[Answer]:
        """Each chunk from the cache, else from the source (once across concurrent callers).

        ``force``: cache what is read past the admission policy (a prefetch). Raises
        ``Forbidden`` as ``check`` does, before anything is read.
        """
        self.check(refs)
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
        batch; wait for the others. Raises ``Forbidden`` as ``check`` does."""
        self.check(refs)
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
            for i, (rec, _), result in zip(positions, refs, self._read_source(refs)):
                if isinstance(result, BaseException):
                    answers[i] = Answer(FAILED, None, result)
                    continue
                # Filed under its blob's namespace (per-namespace shares, ``cache.py``).
                if force:
                    self.cache.insert(keys[i], result, namespace=rec.namespace)
                else:
                    self.cache.put(keys[i], result, namespace=rec.namespace)
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
