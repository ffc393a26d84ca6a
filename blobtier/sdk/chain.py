"""The read path: cache tiers in order, then the source, filling upwards on the way back.

``TierChain.read(refs)`` answers a batch of chunks with one ``get_many`` per tier: each
tier is asked only for what the tiers above it missed. Bytes from an untrusted tier (on
disk or over the wire) are verified against the record once, here, and so is the share
``verify_rate`` of a trusted tier's hits (the host L1: ``cache.verify_l1``); a corrupt
chunk is reported to its tier (which drops it) and read from below, and a failing tier
counts as a miss: the chain moves down. Chunks fetched from below fill every tier
above: trusted (local memory) tiers at once, others in the background so that the caller
never waits for a remote fill. Concurrent reads of one chunk reach the source once
(single flight).
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from blobtier import checksum
from blobtier.chunks import (
    ChunkCache,
    ChunkKey,
    ChunkRef,
    ChunkSource,
    ClaimingCache,
    ReadThroughCache,
    RecordedFills,
    ReportsCorrupt,
    SampledVerify,
)
from blobtier.errors import ChecksumError, TierUnavailable
from blobtier.metrics import TierStats

log = logging.getLogger(__name__)
_NONE: frozenset[ChunkKey] = frozenset()


@dataclass(frozen=True, slots=True)
class _Tier:
    """One tier and the capabilities it has (``chunks.py``), found once when the chain is
    built, so that a read never probes a tier for them."""

    cache: ChunkCache
    depth: int
    through: ReadThroughCache | None
    claims: ClaimingCache | None
    fills: RecordedFills | None
    reports: ReportsCorrupt | None
    sampled: SampledVerify | None
    # Offers a batch of chunks in one call (a remote node: one Put stream, not one per chunk).
    put_many: Callable[[list[tuple[ChunkKey, memoryview]], bool], object] | None

    @classmethod
    def of(cls, cache: ChunkCache, depth: int) -> _Tier:
        def able(kind: type) -> object | None:
            return cache if isinstance(cache, kind) else None

        return cls(cache, depth, able(ReadThroughCache), able(ClaimingCache), able(RecordedFills),
                   able(ReportsCorrupt), able(SampledVerify) if cache.trusted else None,
                   getattr(cache, "put_many", None))

    @property
    def name(self) -> str:
        return self.cache.name

    def verify_rate(self) -> float:
        """The share of this tier's hits the chain checks: every one of an untrusted tier."""
        if not self.cache.trusted:
            return 1.0
        return self.sampled.verify_rate if self.sampled is not None else 0.0


class TierChain:
    """Cache tiers (fastest first) above one source.

    Args:
        tiers: the ``ChunkCache`` tiers, L1 first.
        source: where every miss ends (the block layer or an origin).
        stats: per-tier counters.
    """

    def __init__(self, tiers: Sequence[ChunkCache], source: ChunkSource, stats: TierStats) -> None:
        self.tiers = list(tiers)
        self._tiers = [_Tier.of(t, depth) for depth, t in enumerate(self.tiers)]
        self.source = source
        self.stats = stats
        self._inflight: dict[ChunkKey, Future] = {}
        self._lock = threading.Lock()
        self._fill_pool: ThreadPoolExecutor | None = None

    def read(self, refs: Sequence[ChunkRef], touch: bool = True) -> list[memoryview]:
        """Verified bytes of each (record, index), in order.

        ``touch=False`` reads ahead of the reader: the caches' eviction policies do not
        count it as a use. Raises what the source raises for a chunk no tier holds
        (``BlobNotFound``, ``ChecksumError``, ``TierUnavailable``).
        """
        keys = [rec.chunk_key(index) for rec, index in refs]
        found = self._read(refs, touch, warm=False)
        return [found[k] for k in keys]

    def warm(self, refs: Sequence[ChunkRef]) -> int:
        """Bring chunks into the caches ahead of their readers (a prefetch). A chunk the
        first shared tier refuses to admit is not fetched at all: nobody would keep it.
        Returns how many chunks are now cached or on their way."""
        return len(self._read(refs, touch=False, warm=True))

    def _read(self, refs: Sequence[ChunkRef], touch: bool, warm: bool) -> dict[ChunkKey, memoryview]:
        ref_of: dict[ChunkKey, ChunkRef] = {}
        for rec, index in refs:
            ref_of[rec.chunk_key(index)] = (rec, index)
        found: dict[ChunkKey, memoryview] = {}
        missing = list(ref_of)
        claims: list[tuple[_Tier, set[ChunkKey]]] = []
        rejected: set[ChunkKey] = set()  # found corrupt in this read: never taken from a tier again
        try:
            for tier in self._tiers:
                if not missing:
                    break
                got = self._lookup(tier, missing, ref_of, touch, rejected=rejected)
                if got:
                    found.update(got)
                    self._fill(self._tiers[:tier.depth], got, touch, ref_of)
                    missing = [k for k in missing if k not in got]
                if missing and tier.claims is not None:
                    missing = self._claim(tier, missing, ref_of, found, claims, touch, warm, rejected)
            if missing:
                found.update(self._from_source(missing, ref_of, touch))
        finally:
            for tier, claimed in claims:
                self._unclaim(tier, claimed)
        return found

    def _unclaim(self, tier: _Tier, claimed: set[ChunkKey]) -> None:
        """Give back the claims a failure left unfilled (the tier forgets the filled ones).
        A tier that died meanwhile took its claims with it: nothing to give back, and
        nothing the read must fail for."""
        try:
            tier.claims.unclaim(list(claimed))
        except (TierUnavailable, OSError) as exc:
            log.debug("tier %s: claims not given back: %s", tier.name, exc)
            self.stats.add(tier.name, errors=1)

    def _claim(self, tier: _Tier, missing: list[ChunkKey], ref_of: dict[ChunkKey, ChunkRef],
               found: dict[ChunkKey, memoryview], claims: list, touch: bool, warm: bool,
               rejected: set[ChunkKey]) -> list[ChunkKey]:
        """Claim ``tier``'s slots for the misses; wait for those another process is filling
        (not for a chunk found corrupt: a tier that could not drop it holds it still).

        Returns what is still missing (for a warm-up, only what the tier will keep).
        """
        try:
            # Each claim names its blob's namespace, whose eviction policy then rules the chunk.
            claimed, busy = tier.claims.claim([(k, ref_of[k][0].chunk_range(ref_of[k][1])[1],
                                                ref_of[k][0].namespace) for k in missing])
        except (TierUnavailable, OSError) as exc:
            log.debug("tier %s skipped: %s", tier.name, exc)
            return missing
        claims.append((tier, claimed))
        if warm:
            missing = [k for k in missing if k in claimed or k in busy]
        busy -= rejected
        if not busy:
            return missing
        waited = self._lookup(tier, list(busy), ref_of, touch, count=False, rejected=rejected)
        if waited:
            self.stats.add(tier.name, hits=len(waited), misses=-len(waited),
                           nbytes=sum(len(v) for v in waited.values()))
            found.update(waited)
            self._fill(self._tiers[:tier.depth], waited, touch, ref_of)
        return [k for k in missing if k not in waited]

    def _lookup(self, tier: _Tier, keys: list[ChunkKey], ref_of: dict[ChunkKey, ChunkRef],
                touch: bool = True, count: bool = True,
                rejected: set[ChunkKey] | None = None) -> dict[ChunkKey, memoryview]:
        """``tier``'s verified hits among ``keys``; the corrupt ones are added to ``rejected``."""
        filled: set[ChunkKey] | frozenset[ChunkKey] = _NONE
        verified: set[ChunkKey] | frozenset[ChunkKey] = _NONE
        corrupt = 0
        try:
            if tier.through is not None:  # it fetches its misses itself
                answer = tier.through.read_through(keys, [ref_of[k] for k in keys], touch)
                got, filled, verified, corrupt = answer.found, answer.filled, answer.verified, answer.corrupt
            else:
                got = tier.cache.get_many(keys, touch=touch)
        except (TierUnavailable, OSError) as exc:
            log.debug("tier %s skipped: %s", tier.name, exc)
            self.stats.add(tier.name, misses=len(keys) if count else 0, errors=1)
            return {}
        bad = self._verify(tier, got, ref_of, verified)
        if rejected is not None:
            rejected.update(bad)
        if bad and tier.reports is not None:  # so that it drops them, not serves them again
            try:
                tier.reports.report_corrupt(bad)
            except (TierUnavailable, OSError) as exc:
                log.debug("tier %s not told of corrupt chunks: %s", tier.name, exc)
        if count:  # chunks a read-through tier fetched from below for us were its misses
            n_filled = len(filled.intersection(got)) if filled else 0
            self.stats.add(tier.name, hits=len(got) - n_filled, misses=len(keys) - len(got) + n_filled,
                           nbytes=sum(len(v) for v in got.values()), corrupt=len(bad) + corrupt)
        return got

    def _verify(self, tier: _Tier, got: dict[ChunkKey, memoryview], ref_of: dict[ChunkKey, ChunkRef],
                verified: set[ChunkKey] | frozenset[ChunkKey] | tuple[()]) -> list[ChunkKey]:
        """Check ``got`` against the records: every chunk of an untrusted tier, the share
        ``verify_rate`` (drawn at random) of a trusted one's, none the tier ``verified``
        itself. Corrupt chunks leave ``got`` and are returned."""
        rate = tier.verify_rate()
        if not rate or not got:
            return []
        verified = verified or ()  # no hashing of every key when the tier checked none
        bad = []
        for key in list(got):
            if key in verified or (rate < 1.0 and random.random() >= rate):
                continue
            rec, index = ref_of[key]
            try:
                checksum.verify(rec.checksum_algo, got[key], rec.checksums[index],
                                f"chunk {key} from {tier.name}")
            except ChecksumError as exc:
                log.warning("%s; treating it as a miss", exc)
                del got[key]
                bad.append(key)
        return bad

    def _from_source(self, keys: list[ChunkKey], ref_of: dict[ChunkKey, ChunkRef],
                     touch: bool = True) -> dict[ChunkKey, memoryview]:
        own: list[ChunkKey] = []
        waits: list[tuple[ChunkKey, Future]] = []
        with self._lock:
            for key in keys:
                fut = self._inflight.get(key)
                if fut is None:
                    self._inflight[key] = Future()
                    own.append(key)
                else:
                    waits.append((key, fut))
        got: dict[ChunkKey, memoryview] = {}
        if own:
            try:
                views = self.source.read_many([ref_of[k] for k in own])
                if len(views) != len(own):
                    raise TierUnavailable(f"the source answered {len(views)} of {len(own)} chunks")
            except BaseException as exc:
                self._settle(own, None, exc)
                raise
            got = dict(zip(own, views))
            try:
                self.stats.add("origin", hits=len(own), nbytes=sum(len(v) for v in views))
                self._fill(self._tiers, got, touch, ref_of)
            finally:  # whatever a fill raised, the chunks were read: their waiters get them
                self._settle(own, got, None)
        for key, fut in waits:
            got[key] = fut.result()
        return got

    def _settle(self, keys: list[ChunkKey], got: dict | None, exc: BaseException | None) -> None:
        with self._lock:
            futs = [self._inflight.pop(k) for k in keys]
        for key, fut in zip(keys, futs):
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(got[key])

    def _fill(self, tiers: Sequence[_Tier], chunks: dict[ChunkKey, memoryview],
              touch: bool = True, ref_of: dict[ChunkKey, ChunkRef] | None = None) -> None:
        for tier in tiers:
            if tier.cache.trusted:
                self._put_all(tier, chunks, touch, ref_of)
            else:
                with self._lock:  # two first fills at once must not make two pools
                    if self._fill_pool is None:
                        self._fill_pool = ThreadPoolExecutor(2, thread_name_prefix="blobtier-fill")
                    pool = self._fill_pool
                pool.submit(self._put_all, tier, dict(chunks), touch)

    def _put_all(self, tier: _Tier, chunks: dict[ChunkKey, memoryview], touch: bool,
                 ref_of: dict[ChunkKey, ChunkRef] | None = None) -> None:
        """Offer ``chunks`` to ``tier``, with what it takes of their records (``RecordedFills``)."""
        try:
            if tier.fills is not None and ref_of is not None:
                fill = tier.fills.fill
                for key, view in chunks.items():
                    rec, index = ref_of[key]
                    fill(key, view, touch=touch, namespace=rec.namespace,
                         checksum=(rec.checksum_algo, rec.checksums[index]))
            elif tier.put_many is not None:
                tier.put_many(list(chunks.items()), touch)
            else:
                put = tier.cache.put
                for key, view in chunks.items():
                    put(key, view, touch)
        except (TierUnavailable, OSError) as exc:
            log.debug("fill of tier %s failed: %s", tier.name, exc)
            self.stats.add(tier.name, errors=1)

    def close(self) -> None:
        """Finish background fills; the tiers belong to whoever built the chain."""
        if self._fill_pool is not None:
            self._fill_pool.shutdown(wait=True)
