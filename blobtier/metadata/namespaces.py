"""Namespaces as managed objects: a quota, a TTL, cache shares and an eviction policy
per namespace (the first segment of a key), kept in the metadata store beside the records.

Key layout (every backend, see ``schema``)::

    b"N" + ns  ->  versioned JSON of a ``NamespaceSpec``
    b"U" + ns  ->  versioned JSON of its ``Usage`` (bytes and blobs committed, reservations)

A versioned value starts as an encoded record does (b"BT", 22 zero bytes, the version as
u64 LE), then holds its JSON: every backend's compare-and-set compares record versions
(RocksDB, a Redis script, the service) and so applies to these values unchanged.

**Usage is a counter, kept exact by reservations.** Computing usage on every write would
cost a listing of the namespace per commit; a counter costs two small compare-and-sets.
No backend commits two keys atomically everywhere (a Redis Cluster spreads a namespace's
records over every slot), so a commit into a namespace that has a spec goes in three
steps, each one compare-and-set:

1. reserve: the counter grows by what the commit adds (a size grown, a new blob) and
   names the commit's token with a lease; over the quota, ``QuotaExceeded`` is raised
   and nothing is written;
2. commit the records (the usual compare-and-set);
3. settle: the counter takes what was actually applied (removals, lost compare-and-sets
   given back) and drops the token.

A crash between the steps leaves the counter *over* the truth, never under it: a quota is
never exceeded. ``reconcile`` (run by ``gc``) recomputes a namespace's usage from a
listing and stores it by compare-and-set against the counter version read before the
listing; it gives up (for the next ``gc``) while any reservation's lease is live, so a
commit that landed during the listing cannot be miscounted. A reservation whose lease
expired belongs to a writer that died: a writer whose reservation took more than half the
lease gives it back and raises ``TimedOut`` (a process stopped between that check and its
commit for a minute could still land uncounted until the next ``gc``).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Protocol

from blobtier.errors import InvalidRequest, MetadataCorrupt, QuotaExceeded, TimedOut, VersionConflict
from blobtier.metadata.cas import ABSENT, ANY, version_matches
from blobtier.records import CorruptRecord, decode, peek_version


class MetadataStore(Protocol):
    """The raw key-value surface of a ``store.MetadataStore`` that namespace accounting
    works on (the store calls in here, so this module does not import it)."""

    def _get_raw(self, rkey: bytes) -> bytes | None: ...

    def _get_many_raw(self, rkeys: Sequence[bytes]) -> list[bytes | None]: ...

    def _cas_many(self, items: Sequence[tuple[bytes, int, bytes | None]]) -> list[bool]: ...

    def _listing_raw(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]: ...

SPEC_PREFIX = b"N"
USAGE_PREFIX = b"U"
LEASE_S = 120.0
"""A reservation's lease: the writer commits within half of it or gives the write up."""
REFRESH_S = 2.0
"""How long a store serves the specs it read (TTLs) before reading them again."""
POLICIES = ("sieve", "lru", "keep", "clairvoyant")  # blobtier.eviction.POLICIES (a tier part)
_HEAD = b"BT" + bytes(22)
_VERSION_AT = 24
_ATTEMPTS = 64


@dataclass(frozen=True)
class NamespaceSpec:
    """A namespace's settings; None: not set (no quota, no TTL, no share, the default
    policy).

    Attributes:
        name: the namespace (``schema.validate_namespace``).
        quota_bytes: most bytes of blobs it may hold (sum of their sizes).
        quota_blobs: most blobs it may hold.
        ttl_s: seconds after its commit a blob expires (reads miss it, listings skip it,
            ``gc`` deletes it).
        l1_share, l3_share: the fraction (0..1] of the L1 arena / the L3 flash cache kept
            for it: while it holds less, no other namespace's fill evicts its chunks.
        policy: its L1 eviction policy name.
    """

    name: str
    quota_bytes: int | None = None
    quota_blobs: int | None = None
    ttl_s: float | None = None
    l1_share: float | None = None
    l3_share: float | None = None
    policy: str | None = None

    def validate(self) -> NamespaceSpec:
        """Return self, or raise ``InvalidRequest`` naming the bad field."""
        from blobtier.metadata.schema import validate_namespace

        try:
            validate_namespace(self.name)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        for name in ("quota_bytes", "quota_blobs"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise InvalidRequest(f"{name} must be a whole number >= 0, got {value!r}")
        if self.ttl_s is not None and not (_number(self.ttl_s) and 0 < self.ttl_s < math.inf):
            raise InvalidRequest(f"ttl_s must be a number of seconds > 0, got {self.ttl_s!r}")
        for name in ("l1_share", "l3_share"):
            value = getattr(self, name)
            if value is not None and not (_number(value) and 0 < value <= 1):
                raise InvalidRequest(f"{name} must be a fraction in (0, 1], got {value!r}")
        if self.policy is not None and self.policy not in POLICIES:
            raise InvalidRequest(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        return self

    def encode(self, version: int) -> bytes:
        return encode_value(version, {k: v for k, v in asdict(self).items() if v is not None})

    @classmethod
    def decode(cls, raw: bytes) -> NamespaceSpec:
        body = decode_value(raw, "namespace")[1]
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in body.items() if k in known}).validate()
        except (TypeError, InvalidRequest) as exc:
            raise MetadataCorrupt(f"a stored namespace object is invalid: {exc}") from None


@dataclass
class Usage:
    """What a namespace holds as its counter says: ``bytes`` (sizes of its blobs) and
    ``blobs``, reservations included; ``pending``: token -> lease end (unix seconds)."""

    bytes: int = 0
    blobs: int = 0
    pending: dict[str, float] = field(default_factory=dict)

    def encode(self, version: int) -> bytes:
        return encode_value(version, asdict(self))

    @classmethod
    def decode(cls, raw: bytes) -> Usage:
        body = decode_value(raw, "usage")[1]
        try:
            return cls(int(body["bytes"]), int(body["blobs"]), dict(body.get("pending", {})))
        except (KeyError, TypeError, ValueError) as exc:
            raise MetadataCorrupt(f"a stored namespace usage is invalid: {exc}") from None


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


def encode_value(version: int, body: dict[str, Any]) -> bytes:
    return _HEAD + version.to_bytes(8, "little") + json.dumps(body, sort_keys=True).encode()


def decode_value(raw: bytes, what: str) -> tuple[int, dict[str, Any]]:
    """(version, body) of a versioned value; ``MetadataCorrupt`` when it is not one."""
    try:
        if raw[:len(_HEAD)] != _HEAD or len(raw) < _VERSION_AT + 8:
            raise ValueError("no header")
        body = json.loads(raw[_VERSION_AT + 8:])
        if not isinstance(body, dict):
            raise ValueError("not an object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise MetadataCorrupt(f"a stored namespace {what} value is corrupt: {exc}") from None
    return peek_version(raw), body


def spec_key(name: str) -> bytes:
    return SPEC_PREFIX + name.encode()


def usage_key(name: str) -> bytes:
    return USAGE_PREFIX + name.encode()


# -- accounting -----------------------------------------------------------------------------

Item = tuple[bytes, int, "bytes | None"]


def _size(raw: bytes | None) -> int:
    if raw is None:
        return 0
    try:
        return decode(raw).size
    except CorruptRecord:
        return 0  # a corrupt record is replaced; the compare-and-set decides if it may be


def _namespace(rkey: bytes) -> str | None:
    """The namespace of a record key (b"R" + key), None for other raw keys."""
    if rkey[:1] != b"R":
        return None
    slash = rkey.find(b"/")
    return rkey[1:slash].decode() if slash > 0 else None


def commit_accounted(store: MetadataStore, batch: Sequence[Item],
                     clock: Callable[[], float] = time.time) -> list[bool]:
    """``store._cas_many(batch)``, keeping the usage of the namespaces that have a spec
    exact and their quotas (module docstring). An item expecting ANY in such a namespace
    is retried against what is there until it lands.

    Raises: ``QuotaExceeded`` (nothing of the batch written), the store's errors.
    """
    names = sorted({ns for rkey, _, _ in batch if (ns := _namespace(rkey)) is not None})
    raws = store._get_many_raw([spec_key(n) for n in names]) if names else []
    specs = {n: NamespaceSpec.decode(raw) for n, raw in zip(names, raws) if raw is not None}
    if not specs:
        return store._cas_many(batch)
    out: list[bool | None] = [None] * len(batch)
    todo = list(range(len(batch)))
    for _ in range(_ATTEMPTS):
        retry = _commit_once(store, batch, todo, specs, out, clock)
        if not retry:
            return [bool(x) for x in out]
        todo = retry
    raise VersionConflict(f"gave up committing {len(todo)} records: others keep writing them")


def _commit_once(store: MetadataStore, batch: Sequence[Item], todo: list[int],
                 specs: dict[str, NamespaceSpec], out: list, clock: Callable[[], float]) -> list[int]:
    """One reserve-commit-settle round over ``batch[i] for i in todo``; returns the items
    expecting ANY to try again (their key changed between the read and the commit)."""
    keys = list(dict.fromkeys(batch[i][0] for i in todo if _namespace(batch[i][0]) in specs))
    stored = dict(zip(keys, store._get_many_raw(keys)))
    items = [batch[i] for i in todo]
    deltas: dict[int, tuple[str, int, int]] = {}
    for pos, i in enumerate(todo):
        rkey, expected, value = batch[i]
        if rkey not in stored:
            continue
        cur = stored[rkey]  # what an earlier item of the batch left, if it named this key
        if expected != ANY and not version_matches(cur, expected):
            continue  # its compare-and-set fails: it changes nothing
        if expected == ANY:
            try:
                items[pos] = (rkey, ABSENT if cur is None else peek_version(cur), value)
            except CorruptRecord:
                pass  # only an unconditional write replaces a corrupt record: left as asked
        stored[rkey] = value
        deltas[i] = (_namespace(rkey), _size(value) - _size(cur), (value is not None) - (cur is not None))
    token = os.urandom(8).hex()
    reserved = clock()
    grow = _reserve(store, specs, deltas, token, clock)
    if clock() - reserved > LEASE_S / 2:  # past half its lease, gc may recount without it
        _settle(store, grow, {}, token)
        raise TimedOut(f"the quota reservation of {len(deltas)} records took over {LEASE_S / 2:.0f} s; "
                       "nothing was committed")
    # If the commit raises, its outcome is unknown: the reservation stays (the counter
    # over the truth) until its lease ends and gc reconciles the namespace.
    applied = store._cas_many(items)
    _settle(store, grow, {i: deltas[i] for pos, i in enumerate(todo) if applied[pos] and i in deltas},
            token)
    retry = []
    for pos, i in enumerate(todo):
        if not applied[pos] and batch[i][1] == ANY and i in deltas:
            retry.append(i)
        else:
            out[i] = applied[pos]
    return retry


def _reserve(store: MetadataStore, specs: dict[str, NamespaceSpec],
             deltas: dict[int, tuple[str, int, int]], token: str,
             clock: Callable[[], float]) -> dict[str, tuple[int, int]]:
    """Add each namespace's growth to its counter under ``token``; what was added."""
    grow: dict[str, tuple[int, int]] = {}
    for ns, db, dn in deltas.values():
        b, n = grow.get(ns, (0, 0))
        grow[ns] = (b + max(db, 0), n + max(dn, 0))
    lease = clock() + LEASE_S

    def change(ns: str, usage: Usage) -> Usage:
        b, n = grow[ns]
        spec = specs[ns]
        if b and spec.quota_bytes is not None and usage.bytes + b > spec.quota_bytes:
            raise QuotaExceeded(f"namespace {ns!r}: {usage.bytes} + {b} bytes would pass its quota "
                                f"of {spec.quota_bytes} bytes; nothing was written")
        if n and spec.quota_blobs is not None and usage.blobs + n > spec.quota_blobs:
            raise QuotaExceeded(f"namespace {ns!r}: {usage.blobs} + {n} blobs would pass its quota "
                                f"of {spec.quota_blobs} blobs; nothing was written")
        return replace(usage, bytes=usage.bytes + b, blobs=usage.blobs + n,
                       pending={**usage.pending, token: lease})

    update_usage(store, sorted(grow), change)
    return grow


def _settle(store: MetadataStore, grow: dict[str, tuple[int, int]],
            done: dict[int, tuple[str, int, int]], token: str) -> None:
    """Replace each reservation by what was applied. Best effort: if the counter cannot
    be written now, it stays over the truth until ``reconcile``."""
    real: dict[str, tuple[int, int]] = {ns: (0, 0) for ns in grow}
    for ns, db, dn in done.values():
        b, n = real[ns]
        real[ns] = (b + db, n + dn)

    def change(ns: str, usage: Usage) -> Usage:
        pending = dict(usage.pending)
        if pending.pop(token, None) is None:
            return usage  # already settled (or reconciled away after its lease)
        return Usage(usage.bytes - grow[ns][0] + real[ns][0],
                     usage.blobs - grow[ns][1] + real[ns][1], pending)

    try:
        update_usage(store, sorted(grow), change)
    except (OSError, VersionConflict):  # the counter stays high (safe); gc reconciles it
        pass


def update_usage(store: MetadataStore, names: Sequence[str],
                 change: Callable[[str, Usage], Usage]) -> None:
    """Compare-and-set each namespace's counter to ``change(ns, current)`` until it holds."""
    todo = list(names)
    for _ in range(_ATTEMPTS):
        if not todo:
            return
        raws = store._get_many_raw([usage_key(n) for n in todo])
        items = []
        for ns, raw in zip(todo, raws):
            version = ABSENT if raw is None else peek_version(raw)
            usage = Usage() if raw is None else Usage.decode(raw)
            items.append((usage_key(ns), version, change(ns, usage).encode(version + 1)))
        oks = store._cas_many(items)
        todo = [ns for ns, ok in zip(todo, oks) if not ok]
    if todo:
        raise VersionConflict(f"namespace usage of {', '.join(todo)}: too many writers at once")


def usage_of(store: MetadataStore, name: str) -> Usage:
    raw = store._get_raw(usage_key(name))
    return Usage() if raw is None else Usage.decode(raw)


def reconcile(store: MetadataStore, name: str, now: float | None = None) -> bool:
    """Set ``name``'s counter to the usage a listing finds (module docstring); False when
    a live reservation (a commit in progress) or a commit during the listing made it give
    up for now."""
    now = time.time() if now is None else now
    raw = store._get_raw(usage_key(name))
    version = ABSENT if raw is None else peek_version(raw)
    usage = Usage() if raw is None else Usage.decode(raw)
    if any(end > now for end in usage.pending.values()):
        return False
    found = Usage()
    prefix = b"R" + name.encode() + b"/"
    for _, value in store._listing_raw(prefix):
        found.bytes += _size(value)
        found.blobs += 1
    return store._cas_many([(usage_key(name), version, found.encode(version + 1))])[0]


def expired_keys(store: MetadataStore, spec: NamespaceSpec, now: float) -> list[tuple[str, int]]:
    """(key, version) of the blobs of ``spec``'s namespace whose TTL has passed at ``now``."""
    if spec.ttl_s is None:
        return []
    out = []
    cutoff_ns = int((now - spec.ttl_s) * 1e9)
    for rkey, value in store._listing_raw(b"R" + spec.name.encode() + b"/"):
        try:
            rec = decode(value)
        except CorruptRecord:
            continue  # gc's listing reports it
        if rec.created_ns <= cutoff_ns:
            out.append((rkey[1:].decode(), rec.version))
    return out


def is_expired(created_ns: int, ttl_s: float | None, now: float) -> bool:
    return ttl_s is not None and created_ns / 1e9 + ttl_s <= now
