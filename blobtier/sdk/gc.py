"""Garbage collection by mark and sweep.

Overwrites, deletes, lost compare-and-sets and crashed writes leave chunks no record
points to. ``collect`` marks every chunk the committed records reference, then deletes
from each chunk server the chunks that are unmarked, not part of a write in progress, and
older than the grace period: a reader that opened an old version keeps reading it for at
least that long. Only the writer may collect.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from blobtier.chunks import ChunkStore
from blobtier.errors import TierUnavailable
from blobtier.metadata.store import MetadataStore

log = logging.getLogger(__name__)

_PAGE = 1000


@dataclass(frozen=True)
class GcReport:
    live_chunks: int
    deleted_chunks: int
    spared_young: int
    skipped_servers: tuple[int, ...] = ()  # down: their garbage waits for the next run
    reclaimed_bytes: int = 0  # disk space compaction gave back (volume files)


def live_digests(metadata: MetadataStore) -> set[bytes]:
    live: set[bytes] = set()
    after = None
    while True:
        rows = metadata.scan("", after, _PAGE)
        for _, rec in rows:
            live.update(rec.chunk_key(i).digest() for i in range(rec.n_chunks))
        if len(rows) < _PAGE:
            return live
        after = rows[-1][0]


def collect(metadata: MetadataStore, servers: Mapping[int, ChunkStore], grace_s: float,
            inflight: Callable[[], set[bytes]]) -> GcReport:
    # Writes in progress are noted before the scan: one that commits during the scan is
    # then spared either way, and one that begins after it writes chunks younger than
    # the cutoff (write times are whole seconds, hence the extra second).
    spare = inflight()
    cutoff = int(time.time() - grace_s) - 1
    live = live_digests(metadata) | spare
    deleted = young = reclaimed = 0
    skipped = []
    for sid, store in servers.items():
        dead = []
        try:
            stored = store.digests()
        except (TierUnavailable, OSError) as exc:  # a server that is down keeps its garbage
            log.warning("gc skipped chunk server %s: %s", sid, exc)
            skipped.append(sid)
            continue
        for digest, written in stored:
            if digest in live:
                continue
            if written > cutoff:
                young += 1
            else:
                dead.append(digest)
        try:
            store.delete_many(dead)
        except (TierUnavailable, OSError) as exc:
            log.warning("gc could not delete on chunk server %s: %s", sid, exc)
            skipped.append(sid)
            continue
        deleted += len(dead)
        reclaimed += _compact(sid, store)
    return GcReport(live_chunks=len(live), deleted_chunks=deleted, spared_young=young,
                    skipped_servers=tuple(skipped), reclaimed_bytes=reclaimed)


def _compact(sid: int, store: ChunkStore) -> int:
    """Have a store give back the space of what was deleted; bytes reclaimed. A failure
    only postpones that to the next run."""
    compact = getattr(store, "compact", None)  # stores that cannot compact keep their bytes
    if compact is None:
        return 0
    try:
        return compact().reclaimed
    except (TierUnavailable, OSError) as exc:
        log.warning("gc could not compact chunk server %s: %s", sid, exc)
        return 0
