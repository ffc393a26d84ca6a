"""The one table between blobtier's exceptions and gRPC status codes, used both ways.

Servers answer an exception with ``abort(context, exc)``; clients turn a failed call back
into the matching exception with ``error_of(rpc_error)``. A code with no exception of its
own (``INTERNAL``, ``UNKNOWN``, ``CANCELLED``, ``RESOURCE_EXHAUSTED``...) means the server
could not answer: ``TierUnavailable``, which the read path treats as a miss and fails
over from.

An ``OSError`` carries its ``errno`` along, in the trailing metadata ``blobtier-errno``,
and the client's exception takes it (each exception of the tree has one of its own
otherwise): a chunk server whose disk is full answers ``RESOURCE_EXHAUSTED`` with ENOSPC,
and its client raises ``StorageFull``; ``RESOURCE_EXHAUSTED`` without it (gRPC's own, e.g.
a message over the size limit) stays ``TierUnavailable``.

A status carries the message of an exception about the request itself (a bad argument, a
refused right, a lost race). Any other (a checksum failure, an I/O error, a chunk not
found) is answered with its kind only: its message may hold checksums, an origin's tag,
sizes or paths that the caller was never allowed to read. The server logs the message.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from blobtier.errors import (
    BlobNotFound,
    BlobtierError,
    ChecksumError,
    CorruptRecord,
    Forbidden,
    InvalidKey,
    InvalidRequest,
    MetadataCorrupt,
    OutOfRange,
    QuotaExceeded,
    RegionLocked,
    StorageFull,
    TierUnavailable,
    TimedOut,
    TlsRefused,
    VersionConflict,
)
from blobtier.rpc import tls

Code = grpc.StatusCode
log = logging.getLogger(__name__)
ERRNO_KEY = "blobtier-errno"  # trailing metadata: the errno of the OSError answered
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})

# Most specific first: the first row an exception is an instance of gives its code.
TO_CODE: tuple[tuple[type[BaseException], Code], ...] = (
    (BlobNotFound, Code.NOT_FOUND),
    (OutOfRange, Code.OUT_OF_RANGE),
    (InvalidKey, Code.INVALID_ARGUMENT),
    (InvalidRequest, Code.INVALID_ARGUMENT),
    (CorruptRecord, Code.DATA_LOSS),
    (MetadataCorrupt, Code.DATA_LOSS),
    (ChecksumError, Code.DATA_LOSS),
    (Forbidden, Code.PERMISSION_DENIED),
    (PermissionError, Code.PERMISSION_DENIED),
    (VersionConflict, Code.ABORTED),
    (RegionLocked, Code.FAILED_PRECONDITION),
    (StorageFull, Code.RESOURCE_EXHAUSTED),
    (TimedOut, Code.DEADLINE_EXCEEDED),
    (TierUnavailable, Code.UNAVAILABLE),
)

FROM_CODE: dict[Code, type[BlobtierError]] = {
    Code.NOT_FOUND: BlobNotFound,
    Code.OUT_OF_RANGE: OutOfRange,
    Code.INVALID_ARGUMENT: InvalidRequest,
    Code.DATA_LOSS: ChecksumError,
    Code.PERMISSION_DENIED: Forbidden,
    Code.UNAUTHENTICATED: Forbidden,
    Code.ABORTED: VersionConflict,
    Code.FAILED_PRECONDITION: VersionConflict,
    Code.DEADLINE_EXCEEDED: TimedOut,
    Code.UNAVAILABLE: TierUnavailable,
}
# From a metadata service, DATA_LOSS is a corrupt record or store, not a chunk's bytes.
METADATA_FROM_CODE: dict[Code, type[BlobtierError]] = {**FROM_CODE, Code.DATA_LOSS: MetadataCorrupt}


def code_of(exc: BaseException) -> Code:
    """The status code a server answers ``exc`` with (``UNAVAILABLE`` for other I/O errors,
    ``INTERNAL`` for anything else)."""
    for kind, code in TO_CODE:
        if isinstance(exc, kind):
            return code
    if isinstance(exc, OSError):
        return Code.RESOURCE_EXHAUSTED if exc.errno in _NO_SPACE else Code.UNAVAILABLE
    return Code.INTERNAL


def exception_for(code: Code, table: dict[Code, type[BlobtierError]] = FROM_CODE) -> type[BlobtierError]:
    """The exception a client raises for ``code`` (``TierUnavailable`` for a code the
    server answers only when it cannot answer)."""
    return table.get(code, TierUnavailable)


def error_of(exc: grpc.RpcError, where: str,
             table: dict[Code, type[BlobtierError]] = FROM_CODE) -> BlobtierError:
    """The blobtier exception for a failed call to ``where`` (e.g. 'chunk server host:port'),
    with the errno the server sent, if any; ``table``: the service's codes (``FROM_CODE``,
    ``METADATA_FROM_CODE``)."""
    code = exc.code() if isinstance(exc, grpc.Call) else Code.UNKNOWN
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    number = _errno_of(exc)
    no_space = code == Code.RESOURCE_EXHAUSTED and number in _NO_SPACE
    full = QuotaExceeded if number == errno.EDQUOT else StorageFull  # a namespace's quota, or a disk
    kind = full if no_space else exception_for(code, table)
    message = f"{where}: {details or code.name} ({code.name})"
    refused = tls.refusal(details) if code == Code.UNAVAILABLE and details else None
    if refused is not None:  # a configuration error, not a server that is down: no retries
        return TlsRefused(f"{where}: {refused}")
    return kind(number, message) if number is not None and issubclass(kind, OSError) else kind(message)


def _errno_of(exc: grpc.RpcError) -> int | None:
    trailer = exc.trailing_metadata() if isinstance(exc, grpc.Call) else None
    for key, value in trailer or ():
        if key == ERRNO_KEY and str(value).isdigit():
            return int(value)
    return None


# Errors whose messages describe only what the caller sent or may know.
_ECHOED = (InvalidKey, InvalidRequest, CorruptRecord, Forbidden, VersionConflict, RegionLocked, TimedOut)


def public_message(exc: BaseException) -> str:
    """What a caller is told of ``exc``: its message if it is about the request, else its
    kind alone."""
    if isinstance(exc, _ECHOED):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__} on the server"


def abort(context: grpc.ServicerContext, exc: BaseException) -> None:
    """End the call with the code for ``exc``; raises, as ``context.abort`` does."""
    code = code_of(exc)
    if not isinstance(exc, _ECHOED):
        log.info("answered %s: %s", code.name, exc)
    if isinstance(exc, OSError) and isinstance(exc.errno, int):
        context.set_trailing_metadata(((ERRNO_KEY, str(exc.errno)),))
    context.abort(code, public_message(exc))


@contextmanager
def answering(context: grpc.ServicerContext,
              catch: tuple[type[BaseException], ...] = (BlobtierError, OSError)) -> Iterator[None]:
    """In a servicer: answer the exceptions in ``catch`` with their status codes (others
    reach gRPC as INTERNAL)."""
    try:
        yield
    except catch as exc:
        abort(context, exc)
