"""Grants: what the metadata service allows a client to read or write, signed with the
region key, checked by every data service (chunk servers, flash nodes, L2 peers).

A grant is a capability: whoever holds it may read (or write) the chunks of one blob
version until it expires. The metadata service hands one out with each record it returns
(after checking the caller's token on the record's namespace, ``rpc/auth.py``) and one
for each new blob id a writer asks for; a data service that has the region key serves a
chunk only under a valid, unexpired grant covering the chunk's blob id and version. The
grant says which namespace it was issued for: where tokens are checked, a data service
also requires the caller's token to have the right on that namespace, so a leaked grant
does not let another namespace's token read.

Wire format (little-endian), the MAC covering every byte before it::

    magic "GR" | format u8 | key_id 4s | blob_id 16s | version u64 | rights u8 |
    expires u64 (unix s) | ns_len u16 | namespace utf8 | hmac_sha256 32s

``version`` 0 is a write grant's "any version of this blob id" (the service mints the blob
id, so nobody else's chunks share it). ``rights``: bit 1 read, bit 2 write.

The region key file (``KeyRing``) holds one or two keys, one per line as
``key_id_hex:secret_hex``: the first signs, every one verifies. Rotation
(``KeyRing.rotate``) puts a new key first and keeps the old one, so grants signed before
keep working until ``retire`` removes it. The file is 0600 (``fsutil``); a key that other
users can read is refused. Keys never appear in argv, logs or errors: servers are given
the file's path.

Clients keep the grants they were given in ``BOOK`` (one per process, by blob id, bounded;
a forked worker inherits it), which the remote stores and caches read when they build a
request; one near its expiry is refreshed by fetching its record again (``GrantBook.get``),
and one the book dropped is fetched again by the record's key (``GrantBook.ensure``).
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
import struct
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple, Protocol

from blobtier import forks
from blobtier.errors import BlobtierError, Forbidden, InvalidRequest
from blobtier.fsutil import private_file
from blobtier.records import ChunkKey

READ, WRITE = 1, 2
ANY_VERSION = 0
DEFAULT_TTL_S = 3600.0
"""How long a grant the metadata service signs stays valid (seconds)."""
REFRESH_MARGIN_S = 30.0
"""A client refreshes a grant this close to its expiry, so it never sends a stale one."""
_HEAD = struct.Struct("<2sB4s16sQBQH")
_MAGIC, _FORMAT, _MAC = b"GR", 1, 32
MAX_GRANT_BYTES = _HEAD.size + 255 + _MAC
_RIGHT_BITS = {"read": READ, "write": WRITE}


class Grant(NamedTuple):
    """A grant as read from its bytes (``raw``); trust it only after ``KeyRing.verify``.
    (A tuple: made once per request on a data service's hot path.)"""

    key_id: bytes
    blob_id: bytes
    version: int
    rights: int
    expires: float
    namespace: str
    raw: bytes

    def __repr__(self) -> str:  # the raw bytes are a capability: never in a log line
        return (f"Grant(blob_id={self.blob_id.hex()}, version={self.version}, rights={self.rights}, "
                f"expires={self.expires:.0f}, namespace={self.namespace!r})")

    def covers(self, blob_id: bytes, version: int, right: int) -> bool:
        return (self.blob_id == blob_id and self.rights & right == right
                and self.version in (version, ANY_VERSION))


def parse(raw: bytes) -> Grant:
    """The fields of a grant's bytes (not checked: see ``KeyRing.verify``).

    Raises: ``Forbidden`` for bytes that are not a grant.
    """
    if len(raw) < _HEAD.size + _MAC or len(raw) > MAX_GRANT_BYTES:
        raise Forbidden("malformed grant")
    magic, fmt, key_id, blob_id, version, rights, expires, ns_len = _HEAD.unpack_from(raw)
    if magic != _MAGIC or fmt != _FORMAT or len(raw) != _HEAD.size + ns_len + _MAC:
        raise Forbidden("malformed grant")
    try:
        ns = raw[_HEAD.size:_HEAD.size + ns_len].decode()
    except UnicodeDecodeError:
        raise Forbidden("malformed grant") from None
    return Grant(key_id, blob_id, version, rights, float(expires), ns, bytes(raw))


def rights_bits(rights: Iterable[str]) -> int:
    return sum(_RIGHT_BITS[r] for r in set(rights) if r in _RIGHT_BITS)


class KeyRing:
    """The region's signing keys: the first signs, each verifies (rotation keeps two).

    Args:
        keys: ``(key_id 4 bytes, secret)`` pairs, current first.
        ttl_s: how long the grants it signs are valid.
    """

    def __init__(self, keys: Sequence[tuple[bytes, bytes]], ttl_s: float = DEFAULT_TTL_S) -> None:
        if not keys:
            raise InvalidRequest("a grant key ring needs at least one key")
        self.keys = list(keys)
        self._by_id = dict(self.keys)
        self.ttl_s = ttl_s

    def __repr__(self) -> str:  # never the secrets
        return f"<KeyRing ids={[k.hex() for k, _ in self.keys]}>"

    # -- the key file ----------------------------------------------------------------------
    @classmethod
    def load(cls, path: str, ttl_s: float = DEFAULT_TTL_S) -> KeyRing:
        """Read a key file (``grant_key_file``).

        Raises:
            InvalidRequest: the file is open to other users, or not a key file (the
                message names the path and line, never a key).
            OSError: it cannot be read.
        """
        st = os.stat(path)
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise InvalidRequest(f"grant key file {path} is readable by other users "
                                 f"(mode {stat.S_IMODE(st.st_mode):03o}); chmod 600 it")
        keys = []
        with open(path) as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                key_id, _, secret = line.partition(":")
                try:
                    kid, sec = bytes.fromhex(key_id), bytes.fromhex(secret)
                except ValueError:
                    kid = sec = b""
                if len(kid) != 4 or len(sec) < 16:
                    raise InvalidRequest(f"grant key file {path} line {n}: expected "
                                         "key_id:secret (8 and at least 32 hex digits)")
                keys.append((kid, sec))
        if not keys or len(keys) > 2:
            raise InvalidRequest(f"grant key file {path}: expected one or two keys, found {len(keys)}")
        return cls(keys, ttl_s)

    @staticmethod
    def create(path: str) -> None:
        """Write a new key file with one fresh key (0600), unless one is there."""
        if os.path.exists(path):
            return
        _write(path, [(secrets.token_bytes(4), secrets.token_bytes(32))])

    @staticmethod
    def rotate(path: str) -> None:
        """Put a fresh key first; the current one stays, to verify grants it signed (an
        older one is dropped). Servers see it when they load the file again (restart)."""
        current = KeyRing.load(path).keys[0]
        _write(path, [(secrets.token_bytes(4), secrets.token_bytes(32)), current])

    @staticmethod
    def retire(path: str) -> None:
        """Drop every key but the current one: grants signed with the others stop working."""
        _write(path, KeyRing.load(path).keys[:1])

    # -- signing and checking ------------------------------------------------------------
    def sign(self, blob_id: bytes, version: int, namespace: str, rights: int,
             expires: float | None = None) -> bytes:
        """A grant of ``rights`` on (blob_id, version) in ``namespace``, valid ``ttl_s``."""
        key_id, secret = self.keys[0]
        ns = namespace.encode()
        until = int(expires if expires is not None else time.time() + self.ttl_s)
        body = _HEAD.pack(_MAGIC, _FORMAT, key_id, blob_id, version, rights, max(0, until), len(ns)) + ns
        return body + hmac.digest(secret, body, "sha256")

    def verify(self, raw: bytes, now: float | None = None) -> Grant:
        """The grant in ``raw`` if a key of this ring signed it and it has not expired.

        Raises: ``Forbidden`` (malformed, unknown key, bad signature, expired); the
        message says which, never the grant's bytes.
        """
        grant = parse(raw)
        secret = self._by_id.get(grant.key_id)
        if secret is None:
            raise Forbidden("grant signed with a key this server does not hold")
        body, mac = raw[:-_MAC], raw[-_MAC:]
        if not hmac.compare_digest(hmac.digest(secret, body, "sha256"), mac):
            raise Forbidden("grant signature is not valid")
        if grant.expires < (time.time() if now is None else now):
            raise Forbidden(f"grant for namespace {grant.namespace!r} expired")
        return grant


def _write(path: str, keys: Sequence[tuple[bytes, bytes]]) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with private_file(tmp, "w") as f:
        for kid, sec in keys:
            f.write(f"{kid.hex()}:{sec.hex()}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Bearer(Protocol):
    """The caller's token (``rpc/auth.Token``), as far as grants care."""

    name: str

    def allows(self, namespace: str, right: str) -> bool: ...


def _check_bearer(grant: Grant, right: int, bearer: Bearer | None) -> None:
    """A grant is used by a token with the same rights on its namespace (a leaked grant
    does not let another namespace's token read): defence in depth, where tokens are
    checked at all (``bearer`` None: no token table)."""
    if bearer is None:
        return
    for name, bit in _RIGHT_BITS.items():
        if right & bit and not bearer.allows(grant.namespace, name):
            raise Forbidden(f"token {bearer.name!r} has no {name} right on namespace {grant.namespace!r}")


def check_chunk(ring: KeyRing, raw: bytes, digest: bytes, version: int, index: int,
                right: int, seen: dict[bytes, Grant] | None = None, bearer: Bearer | None = None) -> Grant:
    """Check that ``raw`` grants ``right`` on the chunk named ``digest`` (a chunk server's
    name for ChunkKey(blob id, version, index)); ``seen``: grants verified earlier in
    the same request, each checked once; ``bearer``: the caller's token, which must have
    ``right`` on the grant's namespace too.

    Raises: ``Forbidden`` (no grant, a bad one, one for another chunk, or a token of
    another namespace).
    """
    if not raw:
        raise Forbidden("this server serves chunks only under a grant from the metadata service")
    grant = seen.get(raw) if seen is not None else None
    if grant is None:
        grant = ring.verify(raw)
        if seen is not None:
            seen[raw] = grant
    if not grant.covers(grant.blob_id, version, right) or \
            ChunkKey(grant.blob_id, version, index).digest() != digest:
        raise Forbidden(f"the grant for namespace {grant.namespace!r} does not cover this chunk")
    _check_bearer(grant, right, bearer)
    return grant


class GrantCheck:
    """What a data service checks once per request: every chunk it is asked for is
    covered by one of the request's grants. Without a key ring it checks nothing
    (embedded regions, regions without auth)."""

    def __init__(self, ring: KeyRing | None) -> None:
        self.ring = ring

    @property
    def on(self) -> bool:
        return self.ring is not None

    def covered(self, raws: Iterable[bytes], wanted: Iterable[tuple[bytes, int]],
                right: int = READ, bearer: Bearer | None = None) -> list[Grant]:
        """Check that each (blob_id, version) of ``wanted`` has a grant among ``raws``
        with ``right`` (and that ``bearer``, the caller's token, has it on each grant's
        namespace); return the verified grants.

        Raises: ``Forbidden`` for a bad grant or an uncovered chunk (naming neither keys
        nor grant bytes).
        """
        if self.ring is None:
            return []
        grants = [self.ring.verify(raw) for raw in dict.fromkeys(raws)]
        for g in grants:
            _check_bearer(g, right, bearer)
        usable = [g for g in grants if g.rights & right == right]
        exact = {(g.blob_id, g.version) for g in usable}
        any_version = {g.blob_id for g in usable if g.version == ANY_VERSION}
        for blob_id, version in dict.fromkeys(wanted):  # set lookups: a batch costs its grants
            if (blob_id, version) not in exact and blob_id not in any_version:
                what = "read" if right == READ else "write"
                raise Forbidden(f"no valid {what} grant covers chunk {blob_id.hex()}@{version}")
        return grants


Refresher = Callable[[], Callable[[], object] | None]
"""Resolves to a call that fetches a blob's record (and so its grant) again, or None."""


class GrantBook:
    """The grants this process was given, by blob id (bounded, least recently used out).

    ``add`` takes a grant's bytes with a way to get a fresh one (a callable that fetches
    the record again, held weakly: a closed store does not stay alive for it). ``get``
    returns a grant for the blob valid for at least ``REFRESH_MARGIN_S`` more, refreshing
    an expiring one first; None when there is none (the server then refuses, or needs
    none).
    """

    def __init__(self, capacity: int = 1 << 18) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._grants: OrderedDict[bytes, tuple[Grant, Refresher | None]] = OrderedDict()
        self._fetchers: list[weakref.WeakMethod] = []
        # Blob ids whose records came back unsigned (a service without a grant key, or
        # one of several regions): fetching them again would only repeat the answer.
        self._unsigned: OrderedDict[bytes, None] = OrderedDict()
        self._signed = False  # any grant seen: until then no service of ours signs
        forks.register(self)

    def _after_fork_in_child(self) -> None:
        """A forked DataLoader worker keeps the grants (its parent's to give) but not the
        lock, which a parent thread may have held at the fork."""
        self._lock = threading.Lock()

    def add(self, raw: bytes, refresh: Refresher | None = None) -> None:
        """Keep ``raw`` (ignored if malformed or empty)."""
        if not raw:
            return
        try:
            grant = parse(raw)
        except Forbidden:
            return
        with self._lock:
            self._signed = True
            self._unsigned.pop(grant.blob_id, None)
            old = self._grants.pop(grant.blob_id, None)
            if refresh is None and old is not None:
                refresh = old[1]
            self._grants[grant.blob_id] = (grant, refresh)
            while len(self._grants) > self.capacity:
                self._grants.popitem(last=False)

    def get(self, blob_id: bytes, now: float | None = None) -> bytes | None:
        with self._lock:
            entry = self._grants.get(blob_id)
            if entry is not None:
                self._grants.move_to_end(blob_id)
        if entry is None:
            return None
        grant, refresh = entry
        if grant.expires - REFRESH_MARGIN_S < (time.time() if now is None else now) and refresh:
            fn = refresh()
            try:
                if fn is not None:
                    fn()  # fetches the record again; its new grant replaces this one
            except BlobtierError:
                pass  # no fresher grant: the old one goes, and the server says what is wrong
            with self._lock:
                entry = self._grants.get(blob_id, entry)
            grant = entry[0]
        return grant.raw

    def add_fetcher(self, method: Callable[[str], object]) -> None:
        """A bound method that fetches the record of a key (and so its grant) from a
        metadata service: ``ensure`` uses it for a grant the book no longer holds. Held
        weakly."""
        with self._lock:
            self._fetchers = [f for f in self._fetchers if f() is not None]
            self._fetchers.append(weakref.WeakMethod(method))  # type: ignore[arg-type]

    def ensure(self, records: Iterable[object]) -> None:
        """Fetch the records again whose grants the book lacks (evicted: the read-plan
        cache may hold a record longer), by their keys (``BlobRecord.key``), before a
        request that needs their grants is built."""
        if not self._signed:
            return  # no service of this process signs: there is nothing to fetch again
        for rec in records:
            blob_id, key = rec.blob_id, rec.key  # type: ignore[attr-defined]
            if blob_id in self._grants or blob_id in self._unsigned or not key:
                continue
            for ref in list(self._fetchers):
                fetch = ref()
                try:
                    if fetch is not None:
                        fetch(key)
                except BlobtierError:
                    continue  # that service does not answer for it: the next one may
                if blob_id in self._grants:
                    break
            else:
                with self._lock:
                    self._unsigned[blob_id] = None
                    while len(self._unsigned) > self.capacity:
                        self._unsigned.popitem(last=False)

    def many(self, blob_ids: Iterable[bytes]) -> list[bytes]:
        """The grants of these blobs (each once; those the book lacks left out)."""
        out = []
        for blob_id in dict.fromkeys(blob_ids):
            raw = self.get(blob_id)
            if raw is not None:
                out.append(raw)
        return out

    def clear(self) -> None:
        with self._lock:
            self._grants.clear()


def refresher(method: Callable[..., object], *args: object) -> Refresher:
    """A weak handle on ``method(*args)`` for ``GrantBook.add``: resolves to None once the
    method's object is gone."""
    ref = weakref.WeakMethod(method)  # type: ignore[arg-type]

    def resolve() -> Callable[[], object] | None:
        bound = ref()
        return None if bound is None else (lambda: bound(*args))
    return resolve


BOOK = GrantBook()
"""This process's grants (shared by its clients: a grant is a capability already held)."""
