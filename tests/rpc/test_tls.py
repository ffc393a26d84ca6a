"""TLS on real gRPC servers: mutual TLS works, and every refused handshake is a
``TlsRefused`` saying why (never ``TierUnavailable``, which read paths retry and fail over
from), while a server that is down stays ``TierUnavailable``."""

from __future__ import annotations

import pytest

from blobtier import tlsconf
from blobtier.blockstore_sim.chunk_server import ChunkServer
from blobtier.blockstore_sim.remote import RemoteChunkStore
from blobtier.checksum import xxh3
from blobtier.errors import BlobNotFound, TierUnavailable, TlsRefused
from blobtier.rpc.tls import Tls

DIGEST = b"d" * 16


@pytest.fixture(scope="module")
def regions(tmp_path_factory):
    """Two regions' certificates: ``a`` serves, ``b`` is another CA."""
    hosts = tlsconf.default_hosts()
    return {name: tlsconf.make_region(str(tmp_path_factory.mktemp(name)), ["block-0"], hosts)
            for name in ("a", "b")}


def _server_tls(files: tlsconf.TlsFiles, require: bool) -> Tls:
    return Tls(files.cert, files.key, files.ca, require_client_cert=require)


def _client(files: tlsconf.TlsFiles | None, *, ca: str | None = None, cert: bool = True) -> Tls | None:
    if files is None:
        return None
    return Tls(files.cert if cert else None, files.key if cert else None, ca or files.ca)


def _read(addr: str, tls: Tls | None) -> bytes:
    store = RemoteChunkStore(addr, tls=tls, timeout_s=10)
    try:
        return bytes(store.get(DIGEST))
    finally:
        store.close()


@pytest.fixture
def mutual(tmp_path, regions):
    """A chunk server requiring client certificates of region a's CA, holding one chunk."""
    with ChunkServer(str(tmp_path / "s"), tls=_server_tls(regions["a"]["block-0"], True)) as server:
        store = RemoteChunkStore(server.address, tls=_client(regions["a"]["client"]), timeout_s=10)
        store.put_many([(DIGEST, b"secret bytes", xxh3(b"secret bytes"))])
        store.close()
        yield server


def test_mutual_tls_round_trip(mutual, regions):
    assert _read(mutual.address, _client(regions["a"]["client"])) == b"secret bytes"


def test_a_plaintext_client_is_refused_naming_tls(mutual):
    with pytest.raises(TlsRefused, match="requires TLS with a client certificate"):
        _read(mutual.address, None)


def test_a_client_trusting_another_ca_is_refused_naming_the_ca(mutual, regions):
    with pytest.raises(TlsRefused, match="not signed by the CA in tls.ca.*CERTIFICATE_VERIFY_FAILED"):
        _read(mutual.address, _client(regions["b"]["client"]))


@pytest.mark.parametrize("how", ["no certificate", "another CA's certificate"])
def test_a_client_without_a_certificate_of_the_ca_is_refused(mutual, regions, how):
    if how == "no certificate":
        tls = _client(regions["a"]["client"], cert=False)
    else:  # trusts the server, presents a certificate the server's CA did not sign
        tls = _client(regions["b"]["client"], ca=regions["a"]["client"].ca)
    with pytest.raises(TlsRefused, match="requires TLS with a client certificate"):
        _read(mutual.address, tls)


def test_without_require_client_cert_a_client_needs_only_the_ca(tmp_path, regions):
    with ChunkServer(str(tmp_path / "s"), tls=_server_tls(regions["a"]["block-0"], False)) as server:
        with pytest.raises(BlobNotFound):  # an answer: the handshake succeeded
            _read(server.address, _client(regions["a"]["client"], cert=False))
        with pytest.raises(TlsRefused, match="speaks TLS and this client connected without it"):
            _read(server.address, None)


def test_a_tls_client_of_a_plaintext_server_is_refused(tmp_path, regions):
    with ChunkServer(str(tmp_path / "s")) as server:
        with pytest.raises(TlsRefused, match="does not speak TLS"):
            _read(server.address, _client(regions["a"]["client"]))


def test_a_server_that_is_down_stays_unavailable(tmp_path, regions):
    server = ChunkServer(str(tmp_path / "s"), tls=_server_tls(regions["a"]["block-0"], True))
    addr = server.address
    server.stop()
    for tls in (None, _client(regions["a"]["client"])):
        with pytest.raises(TierUnavailable) as err:
            _read(addr, tls)
        assert not isinstance(err.value, TlsRefused)


def test_server_settings_are_checked(regions):
    a = regions["a"]["block-0"]
    with pytest.raises(ValueError, match="cert_file and key_file"):
        Tls(ca_file=a.ca).server_credentials()
    with pytest.raises(ValueError, match="needs ca_file"):
        Tls(a.cert, a.key, require_client_cert=True).server_credentials()


def test_a_forked_child_probes_with_a_lock_of_its_own():
    """The probe verdicts' lock, held by a parent thread at the fork, is free in the child."""
    import os

    from blobtier.rpc import tls

    with tls._VERDICTS.lock:
        pid = os.fork()
        if pid == 0:  # the child: exits 0 only if it can take the lock
            os._exit(0 if tls._VERDICTS.lock.acquire(timeout=10) else 1)
    _, code = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(code) == 0
