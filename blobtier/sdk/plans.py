"""The read-plan cache: a client's records by key, over a remote metadata store.

Opening a blob through a metadata service or Redis costs a round trip, and a training job
opens the same keys every epoch. ``ReadPlanCache`` wraps the store and answers ``get`` and
``get_many`` from the records it looked up in the last ``ttl_s`` seconds
(``metadata.record_ttl_s``), so a warm lookup is a dictionary read.

Staleness, documented: another client's commit or delete of a cached key stays unseen for
at most ``ttl_s`` (an entry expires ``ttl_s`` after the lookup that fetched it was sent).
Misses are never cached: a new key is found at once, as an embedded reader catches up
after a miss. A cached record never outlives what this client knows of its version:

- its own commits and deletes drop the keys they name, whether their compare-and-set held
  or not (a lost one means the cached version is old), and a lookup that was under way
  while they ran caches nothing, so the client always reads its own writes;
- ``refresh(key)`` drops the entry and asks the store: the client does so when a read
  finds the chunks of a cached version gone (replaced, then collected by ``gc``).

Listings (``scan``, ``list_dir``, ``listing``) always ask the store. A reader that opened
a version keeps reading it whatever the cache does (``BlobReader`` holds the record).
Records are shared between callers, as read-only values.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from blobtier import forks
from blobtier.metadata.namespaces import NamespaceSpec, Usage
from blobtier.metadata.schema import BlobRecord
from blobtier.metadata.store import ANY, Commit, Maintenance, MetadataStore

MAX_RECORDS = 1 << 18
"""Records kept at most; past it, expired ones go, then the oldest (a few hundred MB of
large records at worst; most records are a few hundred bytes)."""


class ReadPlanCache(MetadataStore):
    """``store`` with its records cached by key for ``ttl_s`` seconds (see the module doc).

    Args:
        store: the remote store; closed with this one.
        ttl_s: how long a looked-up record is served without asking again (> 0).
        max_records: entries kept at most.
        clock: monotonic seconds (tests pass their own).

    Raises: whatever ``store`` raises.
    """

    def __init__(self, store: MetadataStore, ttl_s: float, max_records: int = MAX_RECORDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.where = store.where
        self.ttl_s = ttl_s
        self.max_records = max_records
        self._clock = clock
        self._records: dict[str, tuple[float, BlobRecord]] = {}  # key -> (expires, record)
        self._lock = threading.Lock()
        self._epoch = 0  # bumped by every drop: a lookup begun before one caches nothing
        self._closed = False
        forks.register(self)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # a parent thread may have held it; the entries stay valid

    # -- lookups ---------------------------------------------------------------------------
    def get(self, key: str) -> BlobRecord | None:
        hit = self._cached(key, self._clock())
        if hit is not None:
            return hit
        epoch, sent = self._epoch, self._clock()
        rec = self.store.get(key)
        if rec is not None:
            self._keep(epoch, sent, [(key, rec)])
        return rec

    def get_many(self, keys: Sequence[str]) -> list[BlobRecord | None]:
        now = self._clock()
        out = [self._cached(k, now) for k in keys]
        missing = [i for i, rec in enumerate(out) if rec is None]
        if missing:
            epoch, sent = self._epoch, self._clock()
            got = self.store.get_many([keys[i] for i in missing])
            for i, rec in zip(missing, got):
                out[i] = rec
            self._keep(epoch, sent, [(keys[i], rec) for i, rec in zip(missing, got) if rec is not None])
        return out

    def refresh(self, key: str) -> BlobRecord | None:
        """The key's record from the store, never from the cache (which it then holds)."""
        return self.refresh_many([key])[0]

    def refresh_many(self, keys: Sequence[str]) -> list[BlobRecord | None]:
        """``get_many`` from the store, never from the cache (which then holds them)."""
        self.forget(keys)
        return self.get_many(keys)

    def _cached(self, key: str, now: float) -> BlobRecord | None:
        try:
            hit = self._records.get(key)
        except TypeError:  # not a key at all: the store says why
            return None
        if hit is None or hit[0] <= now or self._expired(key, hit[1]):
            return None
        return hit[1]

    def _keep(self, epoch: int, sent: float, found: list[tuple[str, BlobRecord]]) -> None:
        expires = sent + self.ttl_s
        with self._lock:
            if self._epoch != epoch:
                return  # a write of this client ran meanwhile: what was read may predate it
            for key, rec in found:
                self._records.pop(key, None)  # re-inserted last: the dict stays oldest-first
                self._records[key] = (expires, rec)
            if len(self._records) > self.max_records:
                self._shrink()

    def _shrink(self) -> None:
        now = self._clock()
        for key in [k for k, (expires, _) in self._records.items() if expires <= now]:
            del self._records[key]
        while len(self._records) > self.max_records * 3 // 4:
            del self._records[next(iter(self._records))]

    def forget(self, keys: Sequence[str]) -> None:
        """Drop ``keys``; lookups under way when this runs cache nothing."""
        with self._lock:
            self._epoch += 1
            for key in keys:
                self._records.pop(key, None)

    def _forget_all(self) -> None:
        with self._lock:
            self._epoch += 1
            self._records.clear()

    # -- writes: through, then drop what they name ---------------------------------------------
    def commit_many(self, items: Sequence[Commit]) -> list[bool]:
        try:
            return self.store.commit_many(items)
        finally:
            self.forget([key for key, _, _ in items])

    def delete(self, key: str, expected: int = ANY) -> BlobRecord | None:
        try:
            return self.store.delete(key, expected)
        finally:
            self.forget([key])

    def register_origins(self, urls: Sequence[str]) -> None:
        self.store.register_origins(urls)

    def new_blob_ids(self, keys: Sequence[str]) -> list[bytes]:
        return self.store.new_blob_ids(keys)

    # -- listings and the rest: the store's own ------------------------------------------------
    def scan(self, prefix: str = "", after: str | None = None,
             limit: int = 1000) -> list[tuple[str, BlobRecord]]:
        return self.store.scan(prefix, after, limit)

    def listing(self, prefix: str = "") -> Iterator[tuple[str, BlobRecord]]:
        return self.store.listing(prefix)

    def list_dir(self, prefix: str = "", after: str | None = None,
                 limit: int = 1000) -> list[tuple[str, BlobRecord | None]]:
        return self.store.list_dir(prefix, after, limit)

    def origins(self) -> list[str]:
        return self.store.origins()

    # -- namespaces: the store's (quotas are checked and TTLs known there) ----------------------
    def namespaces(self) -> list[NamespaceSpec]:
        return self.store.namespaces()

    def namespace(self, name: str) -> NamespaceSpec | None:
        return self.store.namespace(name)

    def create_namespace(self, spec: NamespaceSpec) -> NamespaceSpec:
        return self.store.create_namespace(spec)

    def update_namespace(self, name: str, changes: Mapping[str, Any]) -> NamespaceSpec:
        return self.store.update_namespace(name, changes)

    def namespace_usage(self, names: Sequence[str]) -> dict[str, Usage]:
        return self.store.namespace_usage(names)

    def maintain_namespaces(self) -> Maintenance:
        try:
            return self.store.maintain_namespaces()
        finally:
            self._forget_all()  # expired blobs were deleted

    def _ttls(self) -> dict[str, float]:
        # A cached record may outlive its TTL: the cache checks it (the store's answers
        # are checked where the store stands, a remote one's by its server).
        return self.store._ttl_table()

    def _commit_raw(self, batch: Sequence[tuple[bytes, int, bytes | None]]) -> list[bool]:
        try:
            return self.store._commit_raw(batch)
        finally:
            self._forget_all()

    def _get_raw(self, rkey: bytes) -> bytes | None:
        return self.store._get_raw(rkey)

    def _get_many_raw(self, rkeys: Sequence[bytes]) -> list[bytes | None]:
        return self.store._get_many_raw(rkeys)

    def _cas_many(self, items: Sequence[tuple[bytes, int, bytes | None]]) -> list[bool]:
        try:
            return self.store._cas_many(items)
        finally:
            self._forget_all()  # raw keys: drop everything rather than decode them

    def _scan_raw(self, prefix: bytes, start: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        return self.store._scan_raw(prefix, start, limit)

    def close(self) -> None:
        """Close the store (once, however often called: a client's reader and writer paths
        share one)."""
        if not self._closed:
            self._closed = True
            self._records = {}
            self.store.close()

    def __repr__(self) -> str:
        return f"<ReadPlanCache ttl={self.ttl_s}s over {self.store!r}>"
