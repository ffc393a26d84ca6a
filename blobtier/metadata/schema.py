"""The flat metadata schema: key rules and the key layout (``BlobRecord`` and its codec re-exported).

Key layout in every metadata store (one ordered key space, one byte of prefix per kind)::

    b"R" + utf8(key)   ->  encoded BlobRecord        one record per blob: open = one get
                                                      ls(prefix) = ordered scan of b"R"+prefix
    b"O" + utf8(url)   ->  b""                       an origin prefix registered by reference:
                                                      cache nodes read through only under these
    b"I"               ->  ascii(region id)          the region's identity (``blobtier.region_id``)

A key is ``namespace/path/inside``: UTF-8, at most ``MAX_KEY_BYTES`` bytes, at least two
segments, no empty, ``.`` or ``..`` segment, no NUL, no leading ``/``. The namespace (first
segment) is ``[A-Za-z0-9_-][A-Za-z0-9._-]*`` up to 64 characters: it names tenants and
token scopes, so it stays plain.

The record itself, its chunk keys and its binary codec live in ``blobtier.records`` (core:
every part needs them); they are re-exported here for the code that reads them as part of
the schema.
"""

from __future__ import annotations

import re

from blobtier.errors import InvalidKey
from blobtier.records import (  # noqa: F401  (re-exported: the schema's record and codec)
    FLAG_ORIGIN,
    FORMAT,
    MAX_ATTRS_BYTES,
    MAX_CHUNKS,
    BlobRecord,
    ChunkKey,
    chunk_count,
    decode,
    decode_many,
    encode,
    encoded,
    new_blob_id,
    peek_version,
)

MAX_KEY_BYTES = 1024
_NAMESPACE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
RECORD_PREFIX = b"R"
ORIGIN_PREFIX = b"O"
REGION_ID_KEY = b"I"


def validate_key(key: str) -> str:
    """Return ``key`` if it follows the key rules, else raise ``InvalidKey`` naming it."""
    if not isinstance(key, str):
        raise InvalidKey(f"key must be str, not {type(key).__name__}")
    try:
        raw = key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidKey(f"key {key!r} is not valid UTF-8") from None
    if not raw:
        raise InvalidKey("key is empty")
    if len(raw) > MAX_KEY_BYTES:
        raise InvalidKey(f"key {key[:64]!r}... is {len(raw)} bytes; the limit is {MAX_KEY_BYTES}")
    if "\x00" in key:
        raise InvalidKey(f"key {key!r} contains NUL")
    if key.startswith("/"):
        raise InvalidKey(f"key {key!r} starts with '/'; keys are 'namespace/path'")
    parts = key.split("/")
    if len(parts) < 2:
        raise InvalidKey(f"key {key!r} has no path; keys are 'namespace/path'")
    for part in parts:
        if part in ("", ".", ".."):
            raise InvalidKey(f"key {key!r} has an empty, '.' or '..' segment")
    validate_namespace(parts[0])
    return key


def validate_namespace(ns: str) -> str:
    if not _NAMESPACE.fullmatch(ns):
        raise InvalidKey(f"namespace {ns!r} must match {_NAMESPACE.pattern}")
    return ns


def validate_prefix(prefix: str) -> str:
    """A listing prefix: any leading part of a valid key ('' lists everything)."""
    if not isinstance(prefix, str):
        raise InvalidKey(f"prefix must be str, not {type(prefix).__name__}")
    try:
        raw = prefix.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidKey(f"prefix {prefix!r} is not valid UTF-8") from None
    if len(raw) > MAX_KEY_BYTES or "\x00" in prefix or prefix.startswith("/"):
        raise InvalidKey(f"prefix {prefix[:64]!r} is not a valid key prefix")
    return prefix


def record_key(key: str) -> bytes:
    return RECORD_PREFIX + key.encode("utf-8")
