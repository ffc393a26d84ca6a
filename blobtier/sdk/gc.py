"""Garbage collection by mark and sweep.

Overwrites, deletes, lost compare-and-sets and crashed writes leave chunks no record
points to. ``collect`` marks every chunk the committed records reference, then deletes
from each chunk server the chunks that are unmarked, not part of a write in progress, and
older than the grace period: a reader that opened an old version keeps reading it for at
least that long. In an embedded region only the writer may collect; with a shared metadata
store (a metadata service or Redis) any client may, while others write (below).

Nothing is deleted on a partial view. The marks come from one full listing of a consistent
snapshot of the metadata (``MetadataStore.listing``); a listing that fails part way (a
corrupt table block, an I/O error, a record that fails its checksum) raises
``MetadataCorrupt`` and ``collect`` deletes nothing: a chunk the listing did not reach
would otherwise look like garbage.

The order makes writes in progress safe without trusting clocks: each server's chunks are
listed first, then the writes in progress are noted, then the metadata is listed. A chunk
in the first list was written by a write that had begun by then; it was either committed
before the note (so the metadata listing sees its record), or is in progress at the note
(spared), or was abandoned. Chunks written after the first list are not candidates at
all. Write times therefore only serve the grace period: with ``grace_s=0`` every
unreferenced chunk listed is collected, however young; otherwise a chunk is collected
once its write time, rounded up to the next second (stores keep whole seconds), is
``grace_s`` old, so never early.

A shared metadata store (``shared``) has neither: other processes, on any host, commit
while gc runs, its listing is pages with no snapshot, and their writes in progress are
not known here. Two rules make that safe:

- Grace period for chunks not yet committed: ``grace_s`` must be positive, and a writer
  commits within it of storing its first chunk (a writer over shared metadata refuses to
  commit a write older than half its ``client.gc_grace_s``, ``sdk/writer.py``; gc's grace
  must not be shorter than the writers'). A chunk gc may delete was then stored more than
  ``grace_s`` before gc began, so its write committed before the listing started, and a
  listing without a snapshot still sees every key committed before it started (with that
  version or a later one, whose chunks are new).
- Two passes: the metadata is listed a second time after the first, and a chunk is
  deleted only if neither listing references it, so a commit that landed during the
  first listing (a slow writer's) keeps its chunks.

Namespaces come first (``MetadataStore.maintain_namespaces``): the blobs past their
namespace's TTL are deleted, so the listing below no longer references their chunks and
this run collects them (once ``grace_s`` old); then each namespace's usage counter is
recomputed from a listing where no commit is in progress (``metadata/namespaces.py``:
the counter a crashed writer left high comes back to the truth).

Nothing is deleted on another region's view either. An empty listing of lost metadata
would make every chunk garbage, so the metadata and the chunk stores carry the region's id
(``blobtier.region_id``): gc refuses when a store is bound to another region than the
metadata's, and binds the embedded stores not bound yet. Chunk servers know no region (one
may serve several), so for a store with no id gc refuses when the complete listing is empty
while the store holds chunks, unless ``force`` (a region emptied on purpose): that is the
one view lost metadata gives, and a region that still lists blobs cannot have lost them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from blobtier.chunks import ChunkStore
from blobtier.errors import Forbidden, InvalidRequest, MetadataCorrupt, TierUnavailable
from blobtier.metadata.store import Maintenance, MetadataStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GcReport:
    live_chunks: int
    deleted_chunks: int
    spared_young: int
    skipped_servers: tuple[int, ...] = ()  # down: their garbage waits for the next run
    reclaimed_bytes: int = 0  # disk space compaction gave back (volume files)
    expired_blobs: int = 0  # records deleted because their namespace's TTL had passed
    busy_namespaces: tuple[str, ...] = ()  # usage not recounted: a commit was in progress


def live_digests(metadata: MetadataStore) -> set[bytes]:
    """Every chunk a committed record references, from one full listing (of a snapshot,
    where the store has one).

    Raises:
        MetadataCorrupt: the listing failed part way (never a partial set).
    """
    live: set[bytes] = set()
    for _, rec in metadata.listing(""):
        live.update(rec.chunk_key(i).digest() for i in range(rec.n_chunks))
    return live


def collect(metadata: MetadataStore, servers: Mapping[int, ChunkStore], grace_s: float,
            inflight: Callable[[], set[bytes]], *, shared: bool = False,
            force: bool = False) -> GcReport:
    """Delete unreferenced chunks older than ``grace_s`` seconds (0: any age).

    ``shared``: other processes may commit to ``metadata`` meanwhile (a metadata service
    or Redis); gc then lists it twice and deletes only what neither listing references.
    ``force``: collect even when the metadata lists nothing while stores that know no
    region hold chunks (the region was emptied on purpose).

    Raises:
        InvalidRequest: ``shared`` with ``grace_s`` 0 (writes in progress elsewhere would
            lose their chunks); nothing was deleted.
        MetadataCorrupt: the metadata could not be listed in full, a store belongs to
            another region, or (without ``force``) the metadata lists nothing while stores
            hold chunks; nothing was deleted.
    """
    if shared and grace_s <= 0:
        raise InvalidRequest("gc with a grace period of 0 is only safe in an embedded region: over "
                             "a shared metadata store it would delete the chunks of writes other "
                             "processes have not committed yet (client.gc_grace_s, --grace)")
    kept = _maintain(metadata)
    now = time.time()
    stored, skipped = _stored(servers)  # first: see the module docstring
    live = live_digests(metadata) | inflight()
    _check_region(metadata, servers, stored, live, force)
    dead, young = _unreferenced(stored, live, grace_s, now)
    if shared and any(dead.values()):  # the second pass: commits made during the first
        again = live_digests(metadata) | inflight()
        live |= again
        dead = {sid: [d for d in digests if d not in again] for sid, digests in dead.items()}
    deleted = reclaimed = 0
    for sid, digests in dead.items():
        store = servers[sid]
        try:
            store.delete_many(digests)
        except (TierUnavailable, OSError) as exc:
            log.warning("gc could not delete on chunk server %s: %s", sid, exc)
            skipped.append(sid)
            continue
        deleted += len(digests)
        reclaimed += _compact(sid, store)
    return GcReport(live_chunks=len(live), deleted_chunks=deleted, spared_young=young,
                    skipped_servers=tuple(skipped), reclaimed_bytes=reclaimed,
                    expired_blobs=kept.expired, busy_namespaces=tuple(kept.busy))


def _maintain(metadata: MetadataStore) -> Maintenance:
    """The namespaces' TTLs and usage (module docstring). A caller without the right to
    (a token without ``admin``: MaintainNamespaces) still collects garbage: told, not failed."""
    try:
        return metadata.maintain_namespaces()
    except Forbidden as exc:
        log.warning("gc left the namespaces' expired blobs and usage alone: %s", exc)
        return Maintenance()


def _check_region(metadata: MetadataStore, servers: Mapping[int, ChunkStore],
                  stored: Mapping[int, Sequence[tuple[bytes, float]]], live: set[bytes],
                  force: bool) -> None:
    """Refuse a gc whose metadata may not be the region's (module docstring); bind the
    stores that can record a region to the metadata's."""
    rid = getattr(metadata, "region_id", None)
    unbound = []
    for sid, store in servers.items():
        bound = store.bound_region() if hasattr(store, "bound_region") else None
        if bound is None:
            unbound.append(sid)
        elif bound != rid:
            raise MetadataCorrupt(
                f"gc refused: chunk server {sid} holds the chunks of region {bound}, but the "
                f"metadata is {'of region ' + rid if rid else 'of no region'}; nothing was deleted")
    holding = [sid for sid in unbound if stored.get(sid)]
    if holding and not live and not force:
        raise MetadataCorrupt(
            f"gc refused: the metadata lists no blob, but chunk servers {holding} hold chunks; if "
            "the metadata was lost or replaced, gc would delete all of them. Nothing was deleted; "
            "if the region is empty on purpose, run gc with force (blobtier gc --force)")
    for sid in unbound:
        bind = getattr(servers[sid], "bind_region", None)
        if rid and bind is not None:
            try:
                bind(rid)
            except OSError as exc:  # a full disk: gc must still give space back; bind next time
                log.warning("gc could not record region %s on chunk server %s (%s); the next gc "
                            "will try again", rid, sid, exc)


def _unreferenced(stored: Mapping[int, Sequence[tuple[bytes, float]]], live: set[bytes], grace_s: float,
                  now: float) -> tuple[dict[int, list[bytes]], int]:
    """Per server, the chunks ``live`` does not hold that are ``grace_s`` old at ``now``;
    and how many unreferenced ones were younger (spared)."""
    dead: dict[int, list[bytes]] = {}
    young = 0
    for sid, entries in stored.items():
        dead[sid] = []
        for digest, written in entries:
            if digest in live:
                continue
            if grace_s > 0 and math.floor(written) + 1 > now - grace_s:
                young += 1
            else:
                dead[sid].append(digest)
    return dead, young


def _stored(servers: Mapping[int, ChunkStore]) -> tuple[dict[int, Sequence[tuple[bytes, float]]], list[int]]:
    """Each reachable server's (digest, write time) list, and the servers that are down
    (their garbage waits for the next run)."""
    stored, skipped = {}, []
    for sid, store in servers.items():
        try:
            stored[sid] = store.digests()
        except (TierUnavailable, OSError) as exc:
            log.warning("gc skipped chunk server %s: %s", sid, exc)
            skipped.append(sid)
    return stored, skipped


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
