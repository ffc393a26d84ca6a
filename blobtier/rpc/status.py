"""The one table between blobtier's exceptions and gRPC status codes, used both ways.

Servers answer an exception with ``abort(context, exc)``; clients turn a failed call back
into the matching exception with ``error_of(rpc_error)``. A code with no exception of its
own (``INTERNAL``, ``UNKNOWN``, ``CANCELLED``, ``RESOURCE_EXHAUSTED``...) means the server
could not answer: ``TierUnavailable``, which the read path treats as a miss and fails
over from.
"""

from __future__ import annotations

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
    OutOfRange,
    RegionLocked,
    TierUnavailable,
    TimedOut,
    VersionConflict,
)

Code = grpc.StatusCode

# Most specific first: the first row an exception is an instance of gives its code.
TO_CODE: tuple[tuple[type[BaseException], Code], ...] = (
    (BlobNotFound, Code.NOT_FOUND),
    (OutOfRange, Code.OUT_OF_RANGE),
    (InvalidKey, Code.INVALID_ARGUMENT),
    (InvalidRequest, Code.INVALID_ARGUMENT),
    (CorruptRecord, Code.DATA_LOSS),
    (ChecksumError, Code.DATA_LOSS),
    (Forbidden, Code.PERMISSION_DENIED),
    (PermissionError, Code.PERMISSION_DENIED),
    (VersionConflict, Code.ABORTED),
    (RegionLocked, Code.FAILED_PRECONDITION),
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


def code_of(exc: BaseException) -> Code:
    """The status code a server answers ``exc`` with (``UNAVAILABLE`` for other I/O errors,
    ``INTERNAL`` for anything else)."""
    for kind, code in TO_CODE:
        if isinstance(exc, kind):
            return code
    return Code.UNAVAILABLE if isinstance(exc, OSError) else Code.INTERNAL


def exception_for(code: Code) -> type[BlobtierError]:
    return FROM_CODE.get(code, TierUnavailable)


def error_of(exc: grpc.RpcError, where: str) -> BlobtierError:
    """The blobtier exception for a failed call to ``where`` (e.g. 'chunk server host:port')."""
    code = exc.code() if isinstance(exc, grpc.Call) else Code.UNKNOWN
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    return exception_for(code)(f"{where}: {details or code.name} ({code.name})")


def abort(context: grpc.ServicerContext, exc: BaseException) -> None:
    """End the call with the code for ``exc``; raises, as ``context.abort`` does."""
    context.abort(code_of(exc), str(exc) or type(exc).__name__)


@contextmanager
def answering(context: grpc.ServicerContext,
              catch: tuple[type[BaseException], ...] = (BlobtierError, OSError)) -> Iterator[None]:
    """In a servicer: answer the exceptions in ``catch`` with their status codes (others
    reach gRPC as INTERNAL)."""
    try:
        yield
    except catch as exc:
        abort(context, exc)
