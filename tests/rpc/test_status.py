"""The status table maps every exception to a code and back to the same kind."""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys

import grpc
import pytest

from blobtier import errors
from blobtier.rpc import status

Code = grpc.StatusCode


class FakeCall(grpc.RpcError, grpc.Call):
    """What a failed call raises on the client: an RpcError that is also a Call."""

    def __init__(self, code: grpc.StatusCode, details: str, trailer: tuple = ()) -> None:
        self._code, self._details, self._trailer = code, details, trailer

    def code(self):
        return self._code

    def details(self):
        return self._details

    def initial_metadata(self):
        return ()

    def trailing_metadata(self):
        return self._trailer

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


@pytest.mark.parametrize("code, kind, number", [
    (Code.NOT_FOUND, errors.BlobNotFound, errno.ENOENT),
    (Code.PERMISSION_DENIED, errors.Forbidden, errno.EACCES),
    (Code.UNAVAILABLE, errors.TierUnavailable, errno.EIO),
    (Code.DEADLINE_EXCEEDED, errors.TimedOut, errno.ETIMEDOUT),
    (Code.DATA_LOSS, errors.ChecksumError, errno.EIO),
    (Code.ABORTED, errors.VersionConflict, errno.EEXIST),
])
def test_every_os_error_a_client_raises_has_an_errno(code, kind, number):
    exc = status.error_of(FakeCall(code, "why"), "server")
    assert type(exc) is kind and exc.errno == number
    assert str(exc) == f"server: why ({code.name})"  # the errno does not change the message


def test_the_servers_errno_comes_back_and_picks_storage_full():
    sent = ((status.ERRNO_KEY, str(errno.ENOSPC)),)
    exc = status.error_of(FakeCall(Code.RESOURCE_EXHAUSTED, "full", sent), "server")
    assert isinstance(exc, errors.StorageFull) and exc.errno == errno.ENOSPC
    refused = ((status.ERRNO_KEY, str(errno.ECONNREFUSED)),)
    exc = status.error_of(FakeCall(Code.UNAVAILABLE, "down", refused), "server")
    assert type(exc) is errors.TierUnavailable and exc.errno == errno.ECONNREFUSED
    # gRPC's own RESOURCE_EXHAUSTED (a message too large) carries no errno: not a full disk.
    assert type(status.error_of(FakeCall(Code.RESOURCE_EXHAUSTED, "too big"), "s")) is errors.TierUnavailable
    assert status.code_of(OSError(errno.EFBIG, "File too large")) == Code.RESOURCE_EXHAUSTED


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))


def test_a_chunk_server_with_a_full_disk_is_storage_full_at_the_client(tmp_path):
    """A real chunk server in a process whose files cannot grow past 4 MiB."""
    from blobtier.blockstore_sim.remote import RemoteChunkStore
    from blobtier.checksum import xxh3

    proc = subprocess.Popen([sys.executable, "-m", "blobtier.cli", "block", "serve", "--root",
                             str(tmp_path / "disk"), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, preexec_fn=_limit_file_size)
    store = None
    try:
        addr = proc.stdout.readline().split(" on ")[1].split(",")[0].strip()
        store = RemoteChunkStore(addr, timeout_s=30)
        data = os.urandom(1 << 20)
        with pytest.raises(errors.StorageFull) as err:
            for i in range(8):
                store.put_many([(i.to_bytes(16, "little"), data, xxh3(data))])
        assert err.value.errno == errno.ENOSPC and addr in str(err.value)
    finally:
        if store is not None:
            store.close()
        proc.terminate()
        proc.wait(timeout=30)
