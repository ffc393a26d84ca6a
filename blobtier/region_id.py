"""A region's identity: one random id that its root, its metadata and its chunk stores share.

Lost metadata must never look like an empty region: a region whose metadata directory is
gone (deleted, a volume not mounted, a restore that forgot it) would otherwise be opened as
a fresh, empty database, and ``gc`` would delete every chunk. So when a region's metadata is
first created it gets an id, recorded three times:

- ``<root>/region.id`` (``MARKER``), a 0600 file of 32 hex digits;
- in the metadata, under the reserved key ``schema.REGION_ID_KEY``;
- in each embedded chunk store's directory (``<root>/blocks/NNN/region.id``), the first
  time ``gc`` runs over it (``VolumeStore.bind_region``).

A region whose marker exists but whose metadata is missing, empty or of another id is
damaged (``MetadataCorrupt`` naming the path), for readers and writers alike; a region with
no marker and no metadata was never created (empty). Regions made by older versions have no
marker: their first writer adopts them (gives the non-empty metadata an id and writes the
marker), in that order, so a crash in between leaves the id in the metadata, from where
the next writer writes the marker again.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets

from blobtier.errors import MetadataCorrupt
from blobtier.fsutil import private_file

MARKER = "region.id"
_ID = re.compile(r"[0-9a-f]{32}", re.ASCII)


def new_id() -> str:
    """A fresh region id (128 random bits, hex)."""
    return secrets.token_hex(16)


def read(directory: str) -> str | None:
    """The id recorded in ``directory``'s marker; None if it has none.

    Raises:
        MetadataCorrupt: the marker exists but is not an id (or cannot be read).
    """
    path = os.path.join(directory, MARKER)
    try:
        with open(path, "rb") as f:
            text = f.read(64).decode("ascii", "replace").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise MetadataCorrupt(f"region id marker {path} cannot be read: {exc}") from exc
    if not _ID.fullmatch(text):
        raise MetadataCorrupt(f"region id marker {path} does not hold a region id ({text[:40]!r})")
    return text


def write(directory: str, region_id: str) -> None:
    """Record ``region_id`` in ``directory``'s marker, durably and atomically (0600)."""
    if not _ID.fullmatch(region_id):
        raise ValueError(f"not a region id: {region_id!r}")
    path = os.path.join(directory, MARKER)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with private_file(tmp, "wb") as f:
            f.write(region_id.encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # a full disk leaves no half-written marker behind
        raise
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)  # the rename itself survives a power loss
    finally:
        os.close(fd)


def decode(raw: bytes | None, where: str) -> str | None:
    """The id stored in a metadata value (None: no id stored).

    Raises:
        MetadataCorrupt: the value is not an id.
    """
    if raw is None:
        return None
    text = raw.decode("ascii", "replace")
    if not _ID.fullmatch(text):
        raise MetadataCorrupt(f"{where}: the stored region id is not an id ({text[:40]!r})")
    return text
