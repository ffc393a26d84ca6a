"""Compare-and-set, the one write every metadata backend offers: the ``expected`` values
and the compare itself. Its own module so that both the store's interface
(``store.py``) and the namespace accounting it calls (``namespaces.py``) use it without
importing each other."""

from __future__ import annotations

from blobtier.errors import CorruptRecord, MetadataCorrupt
from blobtier.records import peek_version

ABSENT = 0
"""``expected`` value meaning "the key must not exist"."""
ANY = -1
"""``expected`` value meaning "whatever is there" (an unconditional write)."""


def version_matches(current: bytes | None, expected: int) -> bool:
    """The compare of compare-and-set, shared by every backend."""
    if expected == ANY:
        return True
    if current is None:
        return expected == ABSENT
    try:
        return peek_version(current) == expected
    except CorruptRecord as exc:  # only an unconditional write may replace a corrupt record
        raise MetadataCorrupt(f"a stored record is corrupt: {exc}") from exc
