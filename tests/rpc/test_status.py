"""The status table maps every exception to a code and back to the same kind."""

from __future__ import annotations

import grpc
import pytest

from blobtier import errors
from blobtier.rpc import status

Code = grpc.StatusCode


class FakeCall(grpc.RpcError, grpc.Call):
    """What a failed call raises on the client: an RpcError that is also a Call."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details

    def initial_metadata(self):
        return ()

    def trailing_metadata(self):
        return ()

    def is_active(self):
        return False

    def time_remaining(self):
        return None

    def cancel(self):
        return False

    def add_callback(self, callback):
        return False


@pytest.mark.parametrize("exc, code", [
    (errors.BlobNotFound("x"), Code.NOT_FOUND),
    (errors.InvalidKey("x"), Code.INVALID_ARGUMENT),
    (errors.InvalidRequest("x"), Code.INVALID_ARGUMENT),
    (errors.OutOfRange("x"), Code.OUT_OF_RANGE),
    (errors.Forbidden("x"), Code.PERMISSION_DENIED),
    (PermissionError("read-only"), Code.PERMISSION_DENIED),
    (errors.TierUnavailable("x"), Code.UNAVAILABLE),
    (errors.TimedOut("x"), Code.DEADLINE_EXCEEDED),
    (errors.ChecksumError("x"), Code.DATA_LOSS),
    (errors.OriginChanged("x"), Code.DATA_LOSS),
    (errors.CorruptRecord("x"), Code.DATA_LOSS),
    (errors.VersionConflict("x"), Code.ABORTED),
    (errors.RegionLocked("x"), Code.FAILED_PRECONDITION),
    (OSError("disk"), Code.UNAVAILABLE),
    (RuntimeError("bug"), Code.INTERNAL),
])
def test_code_of(exc, code):
    assert status.code_of(exc) == code


@pytest.mark.parametrize("code, kind", [
    (Code.NOT_FOUND, errors.BlobNotFound),
    (Code.INVALID_ARGUMENT, errors.InvalidRequest),
    (Code.OUT_OF_RANGE, errors.OutOfRange),
    (Code.PERMISSION_DENIED, errors.Forbidden),
    (Code.UNAUTHENTICATED, errors.Forbidden),
    (Code.UNAVAILABLE, errors.TierUnavailable),
    (Code.DEADLINE_EXCEEDED, errors.TimedOut),
    (Code.DATA_LOSS, errors.ChecksumError),
    (Code.ABORTED, errors.VersionConflict),
    (Code.FAILED_PRECONDITION, errors.VersionConflict),
    (Code.INTERNAL, errors.TierUnavailable),
    (Code.UNKNOWN, errors.TierUnavailable),
    (Code.RESOURCE_EXHAUSTED, errors.TierUnavailable),
    (Code.CANCELLED, errors.TierUnavailable),
])
def test_error_of(code, kind):
    exc = status.error_of(FakeCall(code, "what went wrong"), "chunk server h:1")
    assert type(exc) is kind
    assert "chunk server h:1" in str(exc) and "what went wrong" in str(exc) and code.name in str(exc)


@pytest.mark.parametrize("kind", [errors.BlobNotFound, errors.OutOfRange, errors.InvalidRequest,
                                  errors.Forbidden, errors.TierUnavailable, errors.TimedOut,
                                  errors.ChecksumError, errors.VersionConflict])
def test_round_trip_keeps_the_kind(kind):
    back = status.error_of(FakeCall(status.code_of(kind("x")), "x"), "server")
    assert isinstance(back, kind)


def test_errors_stay_builtin_subclasses():
    assert issubclass(errors.OutOfRange, ValueError)
    assert issubclass(errors.OriginChanged, errors.ChecksumError)
    assert issubclass(errors.TimedOut, TimeoutError) and issubclass(errors.TimedOut, errors.TierUnavailable)


def test_importing_blobtier_loads_no_grpc():
    import subprocess
    import sys

    code = "import sys, blobtier, blobtier.sdk.client; print('grpc' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.parametrize("exc, echoed", [
    (errors.InvalidRequest("at most 512 chunks"), True),
    (errors.Forbidden("token lacks read"), True),
    (errors.ChecksumError("xxh3 0x1234 != 0x99"), False),
    (errors.OriginChanged("file:///x changed (mtime:1:size:5 then)"), False),
    (errors.TierUnavailable("chunk store /srv/blocks/003: EIO"), False),
    (errors.BlobNotFound("chunk ab not in /srv/blocks/003"), False),
    (OSError(5, "Input/output error", "/srv/flash/region-7"), False),
])
def test_statuses_carry_only_messages_about_the_request(exc, echoed):
    """A fault's message may hold checksums, tags, sizes or paths: only its kind goes out."""
    said = status.public_message(exc)
    assert (said == str(exc)) is echoed
    if not echoed:
        assert said == f"{type(exc).__name__} on the server"


def test_a_chunk_server_never_names_its_disk(tmp_path):
    from blobtier.blockstore_sim.chunk_server import ChunkServer
    from blobtier.blockstore_sim.remote import RemoteChunkStore

    server = ChunkServer(str(tmp_path / "disk-path"))
    store = RemoteChunkStore(server.address, timeout_s=10)
    try:
        with pytest.raises(errors.BlobNotFound) as err:
            store.get(b"\x01" * 16)
        assert "disk-path" not in str(err.value) and str(tmp_path) not in str(err.value)
    finally:
        store.close()
        server.stop(0)
