"""One exception tree for blobtier, built on builtins so callers can catch either.

::

    BlobtierError
    ├── BlobNotFound      (FileNotFoundError, ENOENT)  no such key / chunk
    ├── InvalidKey        (ValueError)         a key or prefix that breaks the key rules
    ├── InvalidRequest    (ValueError)         any other bad argument (range, size, config)
    │   └── OutOfRange                         a byte range outside the object it reads
    ├── CorruptRecord     (ValueError)         metadata bytes that fail to decode
    ├── MetadataCorrupt   (OSError, EIO)       a metadata read or scan failed part way (corrupt file, I/O
    │                                          error): never taken as "no such key" or "end of listing"
    ├── Forbidden         (PermissionError, EACCES)  a token without the right
    │   └── TlsRefused                         a TLS handshake failed (CA, client certificate)
    ├── VersionConflict   (FileExistsError, EEXIST)  a compare-and-set commit lost the race
    ├── RegionLocked      (BlockingIOError, EAGAIN)  another process holds the region's writer lock
    ├── UntrustedPath     (PermissionError, EACCES)  a socket or region directory another user could
    │                                          control
    ├── StorageFull       (OSError, ENOSPC)    a disk or store refused a write for lack of space
    ├── ChecksumError     (OSError, EIO)       bytes that fail their checksum, on every replica
    │   └── OriginChanged                      an origin object changed since it was registered
    └── TierUnavailable   (OSError, EIO)       a cache tier or chunk server cannot answer
        └── TimedOut      (TimeoutError, ETIMEDOUT)  a request ran past its deadline

Every ``OSError`` of the tree carries an ``errno`` (the one shown, or the one of the system
error it stands for, e.g. ``TierUnavailable(errno.ECONNREFUSED, message)``): raised with a
message alone, it takes its class's errno and still reads as just the message.

Inside the read path a ``ChecksumError`` or ``TierUnavailable`` from one tier or replica is
counted and turned into a miss; it only reaches the caller when no copy is left.
"""

from __future__ import annotations

import errno


class BlobtierError(Exception):
    """Base of every error blobtier raises on purpose."""


class _WithErrno(OSError):
    """An ``OSError`` raised with a message alone: its errno is the class's ``ERRNO``."""

    ERRNO = errno.EIO

    def __init__(self, *args: object) -> None:
        # (message) when raised, (errno, message[, filename]) when unpickled or given one
        super().__init__(self.ERRNO, *args) if len(args) == 1 else super().__init__(*args)

    def __str__(self) -> str:
        return self.strerror if isinstance(self.strerror, str) else super().__str__()


class BlobNotFound(BlobtierError, _WithErrno, FileNotFoundError):
    """The key (or chunk) does not exist."""

    ERRNO = errno.ENOENT


class InvalidKey(BlobtierError, ValueError):
    """The key or prefix breaks the key rules of ``metadata.schema``."""


class InvalidRequest(BlobtierError, ValueError):
    """A bad argument other than a key: a range, a size, a config value."""


class OutOfRange(InvalidRequest):
    """A byte range that starts or ends outside the chunk or object it reads."""


class CorruptRecord(BlobtierError, ValueError):
    """Stored metadata bytes are truncated, corrupted or of an unknown format version."""


class Forbidden(BlobtierError, _WithErrno, PermissionError):
    """The caller's token lacks the right for this namespace."""

    ERRNO = errno.EACCES


class TlsRefused(Forbidden):
    """A TLS handshake failed: the server's certificate is not signed by the CA this
    client trusts, or the server refused this client (plaintext, or no or another CA's
    client certificate). A configuration error: never retried as a transient one."""


class VersionConflict(BlobtierError, _WithErrno, FileExistsError):
    """A compare-and-set commit found another version than the one expected."""

    ERRNO = errno.EEXIST


class MetadataCorrupt(BlobtierError, _WithErrno):
    """A metadata read or scan failed part way (corrupt file, I/O error).

    Raised instead of returning ``None`` or ending a listing early, so nothing (``gc``
    above all) ever acts on a partial view of the region. ``errno`` is ``EIO``.
    """


class UntrustedPath(BlobtierError, _WithErrno, PermissionError):
    """A socket or region directory that another local user owns or can write."""

    ERRNO = errno.EACCES


class StorageFull(BlobtierError, _WithErrno):
    """A disk or store refused a write for lack of space (``errno`` ENOSPC)."""

    ERRNO = errno.ENOSPC


class QuotaExceeded(StorageFull):
    """A write would take a namespace past its quota of bytes or blobs (``errno``
    EDQUOT); nothing of it was committed."""

    ERRNO = errno.EDQUOT


class RegionLocked(BlobtierError, _WithErrno, BlockingIOError):
    """Another process holds the embedded region's writer lock."""

    ERRNO = errno.EAGAIN


class ChecksumError(BlobtierError, _WithErrno):
    """Bytes failed their checksum and no good copy was left."""


class OriginChanged(ChecksumError):
    """An origin object no longer holds the bytes it held when it was registered."""


class TierUnavailable(BlobtierError, _WithErrno):
    """A cache tier or chunk server could not answer (down, timed out, I/O error)."""


class TimedOut(TierUnavailable, TimeoutError):
    """A request to a tier or chunk server ran past its deadline."""

    ERRNO = errno.ETIMEDOUT
