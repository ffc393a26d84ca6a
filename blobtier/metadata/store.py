"""The metadata store interface: every backend passes ``tests/contracts/metadata_store.py``.

Backends work on encoded bytes under ``schema.record_key``; this base class owns key
validation and the record codec so that each backend stays a thin adapter.

A stored record that fails its codec (checksum, truncation, unknown format) is corruption
of the store, not a bad argument: reads raise ``MetadataCorrupt`` for it (the codec's own
``CorruptRecord`` is its cause), never ``None``, and a listing never skips it.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from blobtier.errors import (
    BlobNotFound,
    CorruptRecord,
    Forbidden,
    InvalidRequest,
    MetadataCorrupt,
    TierUnavailable,
    VersionConflict,
)
from blobtier.metadata import namespaces as nsmod
from blobtier.metadata import schema
from blobtier.metadata.cas import ABSENT, ANY, version_matches  # noqa: F401  (re-exported)
from blobtier.metadata.namespaces import NamespaceSpec, Usage
from blobtier.metadata.schema import BlobRecord

Commit = tuple[str, BlobRecord, int]
"""(key, record, expected current version)."""


_PAGE = 1000
_Row = tuple[str, "BlobRecord | None"]
log = logging.getLogger(__name__)


@dataclass
class Maintenance:
    """What ``maintain_namespaces`` did: blobs deleted for their TTL, namespaces whose
    usage was recomputed, and those left for the next run (a commit was in progress)."""

    expired: int = 0
    reconciled: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)


class MetadataStore(ABC):
    """Flat key -> ``BlobRecord`` store with compare-and-set commits and ordered scans.

    Reads raise ``MetadataCorrupt`` (an ``OSError``, EIO) when the store cannot read a
    record or a scan fails part way: a failure is never a miss nor the end of a listing.
    """

    where = "metadata store"  # names the store in errors; backends say which one
    clock: Callable[[], float] = staticmethod(time.time)
    """Unix seconds: when a blob expires by its namespace's TTL (tests set a fake clock)."""
    _ttl_cache: tuple[float, dict[str, float]] | None = None
    ns_refresh_s = nsmod.REFRESH_S
    """Seconds the namespaces' TTLs read are used before they are read again."""

    # Reads validate a key only when it is not found: every stored key was validated when
    # it was written, so the hit path (the hot one) skips the rules and a bad key still
    # gets its InvalidKey instead of a plain miss.
    def get(self, key: str) -> BlobRecord | None:
        """The current record of ``key``, or None when it has none.

        Raises: ``InvalidKey``; ``MetadataCorrupt`` (an ``OSError``, EIO: the record or the
        store is damaged; never reported as an absent key); ``TierUnavailable`` (a remote
        store that no server answers).
        """
        try:
            raw = self._get_raw(_RECORD + key.encode())
        except (AttributeError, UnicodeEncodeError, TypeError):
            schema.validate_key(key)  # raises the precise InvalidKey
            raise
        if raw is None:
            schema.validate_key(key)
            return None
        try:
            rec = schema.decode(raw)
        except CorruptRecord:
            rec = self._decode(key, raw)  # raises, naming the key
        rec.key = key
        return None if self._expired(key, rec) else rec

    def get_many(self, keys: Sequence[str]) -> list[BlobRecord | None]:
        """One batched lookup (a RocksDB multi-get, a Redis pipeline)."""
        prefix = schema.RECORD_PREFIX
        try:
            rkeys = [prefix + k.encode() for k in keys]
        except (AttributeError, UnicodeEncodeError):
            rkeys = [_lookup_key(k) for k in keys]  # raises the precise InvalidKey
        raws = self._get_many_raw(rkeys)
        if None in raws:
            for key, raw in zip(keys, raws):
                if raw is None:
                    schema.validate_key(key)
        try:
            out = schema.decode_many(raws, keys)
        except CorruptRecord:
            out = [None if raw is None else self._decode(key, raw)  # raises, naming the key
                   for key, raw in zip(keys, raws)]
        return self._unexpired_many(out) if self._ttls() else out

    def commit(self, key: str, record: BlobRecord, expected: int = ANY) -> None:
        """Make ``record`` the key's current version if its version is ``expected`` now
        (``ANY``: whatever it is), in one durable write.

        Raises: ``VersionConflict`` (the key's version is not ``expected``; nothing written);
        ``InvalidKey``; ``ValueError`` (a record whose checksums or placement do not match
        its size); ``StorageFull`` (ENOSPC); ``MetadataCorrupt``; ``TierUnavailable``.
        """
        if not self.commit_many([(key, record, expected)])[0]:
            raise VersionConflict(f"{key}: expected version {expected}, found another")

    def commit_many(self, items: Sequence[Commit]) -> list[bool]:
        """Commit several records at once (one durable write); True where the CAS held."""
        batch = [(schema.record_key(schema.validate_key(k)), expected, schema.encode(rec))
                 for k, rec, expected in items]
        return self._commit_raw(batch)

    def _commit_raw(self, batch: Sequence[tuple[bytes, int, bytes | None]]) -> list[bool]:
        """``_cas_many`` of record writes, keeping namespace usage and quotas
        (``namespaces.commit_accounted``). Raises ``QuotaExceeded`` (nothing written)."""
        return nsmod.commit_accounted(self, batch, self.clock)

    def delete(self, key: str, expected: int = ANY) -> BlobRecord | None:
        """Remove the key if its version is ``expected``; return the removed record."""
        rkey = schema.record_key(schema.validate_key(key))
        raw = self._get_raw(rkey)
        if raw is None:
            return None
        removed = self._decode(key, raw)
        if not self._commit_raw([(rkey, expected if expected != ANY else removed.version, None)])[0]:
            raise VersionConflict(f"{key}: expected version {expected}, found another")
        return removed

    def scan(self, prefix: str = "", after: str | None = None,
             limit: int = 1000) -> list[tuple[str, BlobRecord]]:
        """Up to ``limit`` (key, record) pairs in key order, starting after ``after``."""
        schema.validate_prefix(prefix)
        start = schema.record_key(prefix)
        if after is not None:
            start = max(start, schema.record_key(after) + b"\x00")
        rows = self._scan_raw(schema.record_key(prefix), start, limit)
        return self._unexpired_rows([(key, self._decode(key, v))
                                     for key, v in ((k[1:].decode(), v) for k, v in rows)])

    def listing(self, prefix: str = "") -> Iterator[tuple[str, BlobRecord]]:
        """Every (key, record) under ``prefix`` in key order, from one consistent view of
        the store where the backend has one (a RocksDB snapshot; pages of ``scan``
        otherwise). It ends only at the true end: a failure part way raises
        ``MetadataCorrupt``, so what was yielded before it is known to be partial."""
        schema.validate_prefix(prefix)
        for rkey, raw in self._listing_raw(schema.record_key(prefix)):
            key = rkey[1:].decode()
            rec = self._decode(key, raw)
            if not self._expired(key, rec):
                yield key, rec

    def list_dir(self, prefix: str = "", after: str | None = None,
                 limit: int = 1000) -> list[tuple[str, BlobRecord | None]]:
        """One page of a delimiter ("/") listing: the entries of ``prefix``'s directory that
        start with the rest of ``prefix``, after ``after``, in bytewise order: (key, record)
        for a blob, ("dir/", None) for a subdirectory, once however many keys lie below it.
        Pass the last entry of a page as ``after`` for the next; an ``after`` inside a
        subdirectory resumes past that subdirectory.

        Raises: ``InvalidKey`` for a bad prefix or ``after``; ``InvalidRequest`` for
        ``limit`` < 1; ``MetadataCorrupt`` as ``scan``.
        """
        schema.validate_prefix(prefix)
        if after is not None:
            schema.validate_prefix(after)
        if limit < 1:
            raise InvalidRequest(f"list_dir limit must be at least 1, got {limit}")
        pb = schema.record_key(prefix)
        d = pb[:pb.rfind(b"/") + 1]
        start = pb if after is None else max(pb, _resume_after(d, schema.record_key(after)))
        out: list[tuple[str, BlobRecord | None]] = []
        for rkey, raw in self._dir_raw(pb, d, start, limit):
            key = rkey[1:].decode()
            rec = None if raw is None else self._decode(key, raw)
            if rec is not None:
                rec.key = key
            out.append((key, rec))
        return self._unexpired_rows(out)

    def _decode(self, key: str, raw: bytes) -> BlobRecord:
        try:
            return schema.decode(raw)
        except CorruptRecord as exc:
            raise MetadataCorrupt(f"{self.where}: the record of {key!r} is corrupt: {exc}") from exc

    def new_blob_ids(self, keys: Sequence[str]) -> list[bytes]:
        """A fresh blob id for a new version of each key. A metadata service mints them
        and signs write grants for them (``remote.py``); a local store has none to sign."""
        return [schema.new_blob_id() for _ in keys]

    def register_origins(self, urls: Sequence[str]) -> None:
        """Record origin prefixes (fsspec URLs) the region reads by reference: the only
        places its cache nodes read through from besides the block layer (``origins.py``).

        Raises:
            Forbidden: a URL with no canonical form (chained, ``..`` segments...).
        """
        from blobtier.origins import canonical

        keys = {schema.ORIGIN_PREFIX + canonical(u).encode() for u in urls}
        self._cas_many([(k, ANY, b"") for k in sorted(keys)])

    def origins(self) -> list[str]:
        """Every registered origin prefix, in canonical form."""
        out: list[str] = []
        start = schema.ORIGIN_PREFIX
        while rows := self._scan_raw(schema.ORIGIN_PREFIX, start, 1000):
            out += [k[1:].decode() for k, _ in rows]
            start = rows[-1][0] + b"\x00"
        return out

    # -- namespaces (quota, TTL, cache shares: ``namespaces.py``) -----------------------
    def namespaces(self) -> list[NamespaceSpec]:
        """Every namespace object, by name. Raises: ``MetadataCorrupt``; ``TierUnavailable``."""
        out: list[NamespaceSpec] = []
        start = nsmod.SPEC_PREFIX
        while rows := self._scan_raw(nsmod.SPEC_PREFIX, start, 1000):
            out += [NamespaceSpec.decode(v) for _, v in rows]
            start = rows[-1][0] + b"\x00"
        return out

    def namespace(self, name: str) -> NamespaceSpec | None:
        """The object of namespace ``name``, None when it has none."""
        raw = self._get_raw(nsmod.spec_key(name))
        return None if raw is None else NamespaceSpec.decode(raw)

    def create_namespace(self, spec: NamespaceSpec) -> NamespaceSpec:
        """Store a new namespace object and count what the namespace already holds.

        Raises: ``InvalidRequest`` naming a bad field (or shares of all namespaces summing
        past 1); ``VersionConflict`` (it exists already).
        """
        spec.validate()
        self._check_shares(spec)
        if not self._cas_many([(nsmod.spec_key(spec.name), ABSENT, spec.encode(1))])[0]:
            raise VersionConflict(f"namespace {spec.name!r} exists already (change it with set)")
        self._ttl_cache = None
        for _ in range(8):  # a writer's reservation in flight: try again; else gc counts it
            if nsmod.reconcile(self, spec.name, self.clock()):
                break
        return spec

    def update_namespace(self, name: str, changes: Mapping[str, Any]) -> NamespaceSpec:
        """Change some fields of a namespace object (a value None clears one).

        Raises: ``BlobNotFound`` (no such namespace); ``InvalidRequest`` naming a bad or
        unknown field; ``VersionConflict`` (others keep changing it).
        """
        known = {f.name for f in fields(NamespaceSpec)} - {"name"}
        for bad in set(changes) - known:
            raise InvalidRequest(f"namespace field {bad!r} is not one of {', '.join(sorted(known))}")
        for _ in range(16):
            raw = self._get_raw(nsmod.spec_key(name))
            if raw is None:
                raise BlobNotFound(f"namespace {name!r} does not exist (create it first)")
            new = replace(NamespaceSpec.decode(raw), **changes).validate()
            self._check_shares(new)
            version = schema.peek_version(raw)
            if self._cas_many([(nsmod.spec_key(name), version, new.encode(version + 1))])[0]:
                self._ttl_cache = None
                return new
        raise VersionConflict(f"namespace {name!r}: others keep changing it")

    def _check_shares(self, spec: NamespaceSpec) -> None:
        specs = [s for s in self.namespaces() if s.name != spec.name] + [spec]
        for name in ("l1_share", "l3_share"):
            total = sum(getattr(s, name) or 0 for s in specs)
            if total > 1 + 1e-9:
                raise InvalidRequest(f"{name} {getattr(spec, name)} of {spec.name!r}: the shares of "
                                     f"all namespaces would sum to {total:.3g}, more than 1")

    def namespace_usage(self, names: Sequence[str]) -> dict[str, Usage]:
        """Each namespace's usage counter (zero for one never counted)."""
        raws = self._get_many_raw([nsmod.usage_key(n) for n in names])
        return {n: Usage() if r is None else Usage.decode(r) for n, r in zip(names, raws)}

    def maintain_namespaces(self) -> Maintenance:
        """What ``gc`` runs first: delete every blob whose namespace's TTL has passed (by
        compare-and-set: a newer version stays; their chunks become garbage), then
        recompute each namespace's usage from a listing (``namespaces.reconcile``)."""
        now = self.clock()
        report = Maintenance()
        for spec in self.namespaces():
            expired = nsmod.expired_keys(self, spec, now)
            for i in range(0, len(expired), 256):
                batch = [(schema.record_key(k), v, None) for k, v in expired[i:i + 256]]
                report.expired += sum(self._commit_raw(batch))
            (report.reconciled if nsmod.reconcile(self, spec.name, now) else report.busy).append(spec.name)
        return report

    def _ttls(self) -> dict[str, float]:
        """The TTLs this store's answers must apply (a remote store's server applies them)."""
        return self._ttl_table()

    def _ttl_table(self) -> dict[str, float]:
        """{namespace: TTL seconds}, read again every ``ns_refresh_s``."""
        now = time.monotonic()
        cached = self._ttl_cache
        if cached is None or now - cached[0] > self.ns_refresh_s:
            try:
                ttls = {s.name: s.ttl_s for s in self.namespaces() if s.ttl_s}
            except (TierUnavailable, InvalidRequest, Forbidden) as exc:  # reads go on; try later
                log.debug("%s: cannot read the namespaces' TTLs: %s", self.where, exc)
                ttls = cached[1] if cached is not None else {}
            cached = self._ttl_cache = (now, ttls)
        return cached[1]

    def _expired(self, key: str, rec: BlobRecord) -> bool:
        ttls = self._ttls()
        if not ttls:
            return False
        return nsmod.is_expired(rec.created_ns, ttls.get(key.split("/", 1)[0]), self.clock())

    def _unexpired_many(self, recs: list[BlobRecord | None]) -> list[BlobRecord | None]:
        return [None if rec is None or self._expired(rec.key, rec) else rec for rec in recs]

    def _unexpired_rows(self, rows: list[_Row]) -> list[_Row]:
        if not self._ttls():
            return rows
        return [(k, r) for k, r in rows if r is None or not self._expired(k, r)]

    # -- backend surface -------------------------------------------------------------
    @abstractmethod
    def _get_raw(self, rkey: bytes) -> bytes | None: ...

    @abstractmethod
    def _get_many_raw(self, rkeys: Sequence[bytes]) -> list[bytes | None]: ...

    @abstractmethod
    def _cas_many(self, items: Sequence[tuple[bytes, int, bytes | None]]) -> list[bool]:
        """Apply each (key, expected version, new bytes or None to delete) whose expected
        version holds (ABSENT: no key; ANY: always), atomically and durably; earlier items
        of the batch are visible to the checks of later ones."""

    @abstractmethod
    def _scan_raw(self, prefix: bytes, start: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` pairs with keys >= ``start`` that begin with ``prefix``, in order."""

    def _listing_raw(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """All pairs under ``prefix`` in order; backends with snapshots read one."""
        start = prefix
        while True:
            rows = self._scan_raw(prefix, start, _PAGE)
            yield from rows
            if len(rows) < _PAGE:
                return
            start = rows[-1][0] + b"\x00"

    def _dir_raw(self, prefix: bytes, d: bytes, start: bytes,
                 limit: int) -> Iterator[tuple[bytes, bytes | None]]:
        """Up to ``limit`` entries of directory ``d`` from ``start`` on, under ``prefix``:
        (key, value) for a record, (subdirectory, None) for one. Generic: pages of
        ``_scan_raw`` that seek past each subdirectory found. A page after a subdirectory
        is small and doubles while records follow, so few keys below one are read."""
        n, page = 0, 16
        while n < limit:
            asked = min(page, limit - n)
            rows = self._scan_raw(prefix, start, asked)
            for rkey, raw in rows:
                n += 1
                slash = rkey.find(b"/", len(d))
                if slash >= 0:
                    sub = rkey[:slash + 1]
                    yield sub, None
                    start, page = _past(sub), 2
                    break
                yield rkey, raw
                start = rkey + b"\x00"
            else:
                if len(rows) < asked:
                    return
                page = min(2 * page, _PAGE)

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> MetadataStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _past(subdir: bytes) -> bytes:
    """The first key after every key below ``subdir`` (which ends in "/"; "0" follows "/")."""
    return subdir[:-1] + b"0"


def _resume_after(d: bytes, after: bytes) -> bytes:
    """Where a listing of directory ``d`` resumes after the entry ``after``: past the
    subdirectory of ``d`` that holds it, if any, else just after it."""
    if after.startswith(d):
        slash = after.find(b"/", len(d))
        if slash >= 0:
            return _past(after[:slash + 1])
    return after + b"\x00"


_RECORD = schema.RECORD_PREFIX


def _lookup_key(key: str) -> bytes:
    try:
        return schema.RECORD_PREFIX + key.encode()
    except (AttributeError, UnicodeEncodeError):
        schema.validate_key(key)  # raises the precise InvalidKey
        raise
