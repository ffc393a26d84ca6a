"""The metadata store interface: every backend passes ``tests/contracts/metadata_store.py``.

Backends work on encoded bytes under ``schema.record_key``; this base class owns key
validation and the record codec so that each backend stays a thin adapter.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from blobtier.errors import VersionConflict
from blobtier.metadata import schema
from blobtier.metadata.schema import BlobRecord

ABSENT = 0
"""``expected`` value meaning "the key must not exist"."""
ANY = -1
"""``expected`` value meaning "whatever is there" (an unconditional write)."""

Commit = tuple[str, BlobRecord, int]
"""(key, record, expected current version)."""


class MetadataStore(ABC):
    """Flat key -> ``BlobRecord`` store with compare-and-set commits and ordered scans."""

    # Reads validate a key only when it is not found: every stored key was validated when
    # it was written, so the hit path (the hot one) skips the rules and a bad key still
    # gets its InvalidKey instead of a plain miss.
    def get(self, key: str) -> BlobRecord | None:
        raw = self._get_raw(_lookup_key(key))
        if raw is None:
            schema.validate_key(key)
            return None
        rec = schema.decode(raw)
        rec.key = key
        return rec

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
        decode = schema.decode
        out: list[BlobRecord | None] = []
        for key, raw in zip(keys, raws):
            if raw is None:
                out.append(None)
            else:
                rec = decode(raw)
                rec.key = key
                out.append(rec)
        return out

    def commit(self, key: str, record: BlobRecord, expected: int = ANY) -> None:
        """Make ``record`` the key's current version if its version is ``expected`` now."""
        if not self.commit_many([(key, record, expected)])[0]:
            raise VersionConflict(f"{key}: expected version {expected}, found another")

    def commit_many(self, items: Sequence[Commit]) -> list[bool]:
        """Commit several records at once (one durable write); True where the CAS held."""
        batch = [(schema.record_key(schema.validate_key(k)), expected, schema.encode(rec))
                 for k, rec, expected in items]
        return self._cas_many(batch)

    def delete(self, key: str, expected: int = ANY) -> BlobRecord | None:
        """Remove the key if its version is ``expected``; return the removed record."""
        rkey = schema.record_key(schema.validate_key(key))
        raw = self._get_raw(rkey)
        if raw is None:
            return None
        if not self._cas_many([(rkey, expected if expected != ANY else schema.peek_version(raw),
                                None)])[0]:
            raise VersionConflict(f"{key}: expected version {expected}, found another")
        return schema.decode(raw)

    def scan(self, prefix: str = "", after: str | None = None,
             limit: int = 1000) -> list[tuple[str, BlobRecord]]:
        """Up to ``limit`` (key, record) pairs in key order, starting after ``after``."""
        schema.validate_prefix(prefix)
        start = schema.record_key(prefix)
        if after is not None:
            start = max(start, schema.record_key(after) + b"\x00")
        rows = self._scan_raw(schema.record_key(prefix), start, limit)
        return [(k[1:].decode(), schema.decode(v)) for k, v in rows]

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

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> MetadataStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _lookup_key(key: str) -> bytes:
    try:
        return schema.RECORD_PREFIX + key.encode()
    except (AttributeError, UnicodeEncodeError):
        schema.validate_key(key)  # raises the precise InvalidKey
        raise


def version_matches(current: bytes | None, expected: int) -> bool:
    """The compare of compare-and-set, shared by every backend."""
    if expected == ANY:
        return True
    if current is None:
        return expected == ABSENT
    return schema.peek_version(current) == expected
