"""TLS settings for servers and channels: PEM files, read when credentials are built.

A failed handshake reaches a gRPC client as UNAVAILABLE, like a server that is down, and
a read path retries those. ``refusal`` tells the two apart (``status.error_of`` asks it):
a client-side handshake failure names itself in the status details (the server's
certificate is not signed by our CA, or does not name the address dialled); a server
that refuses *us* (we spoke plaintext, or sent no or another CA's client certificate)
just closes the socket, so then the address is probed once with a TLS handshake of our
own: a server that completes one speaks TLS, and the connection it closed was refused.
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from blobtier import forks

if TYPE_CHECKING:
    from blobtier.config import TlsConfig

PROBE_TIMEOUT_S = 1.0
_VERDICT_TTL_S = 5.0  # a failing client asks again and again: probe an address this seldom


@dataclass(frozen=True)
class Tls:
    """Certificates for one side of a connection.

    Args:
        cert_file: this side's certificate chain (PEM); a server needs one, a client
            presents it (mutual TLS).
        key_file: its private key (PEM).
        ca_file: the CA this side trusts. A client verifies the server against it; a
            server verifies the client certificates it is sent.
        require_client_cert: a server refuses clients without a certificate signed by
            ``ca_file`` (mutual TLS).
    """

    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None
    require_client_cert: bool = False

    @classmethod
    def from_config(cls, config: TlsConfig) -> Tls | None:
        """The TLS ``[tls]`` describes (None: plaintext). Raises ``InvalidRequest``
        (``config.validate``) for a mode ``up`` must resolve first (``auto``)."""
        if not config.enabled:
            return None
        return cls(config.cert or None, config.key or None, config.ca, config.require_client_cert)

    def server_credentials(self) -> grpc.ServerCredentials:
        if not (self.cert_file and self.key_file):
            raise ValueError("a TLS server needs cert_file and key_file")
        if self.require_client_cert and not self.ca_file:
            raise ValueError("a TLS server that requires client certificates needs ca_file")
        return grpc.ssl_server_credentials([(_read(self.key_file), _read(self.cert_file))],
                                           root_certificates=_read(self.ca_file),
                                           require_client_auth=self.require_client_cert)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=_read(self.ca_file),
                                            private_key=_read(self.key_file),
                                            certificate_chain=_read(self.cert_file))


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


# -- telling a refused handshake from a server that is down ------------------------------
_CLIENT_SIDE = re.compile(r"handshake failed|CERTIFICATE_VERIFY_FAILED|is not in peer certificate", re.I)
_REASON = re.compile(r"OPENSSL_internal:([A-Z_]+)(?::\s*([^:]+))?")
_ADDRESS = re.compile(r"ipv4:([0-9.]+):(\d+)|ipv6:\[([0-9a-fA-F:]+)\]:(\d+)")


class _Verdicts:
    """What each address was found to be, for ``_VERDICT_TTL_S``; per process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.found: dict[tuple[str, int], tuple[float, str | None]] = {}

    def _after_fork_in_child(self) -> None:
        self.lock = threading.Lock()  # a parent thread may have held it across the fork


_VERDICTS = _Verdicts()
forks.register(_VERDICTS)


def refusal(details: str) -> str | None:
    """Why a connection that failed with ``details`` (a status's details) was a refused
    TLS handshake, or None if it was not one (the server is down, slow, ...)."""
    if "failed to connect" not in details:
        return None  # connected; whatever failed later is not the handshake
    if _CLIENT_SIDE.search(details):
        return _client_side(details)
    if "Socket closed" not in details and "Connection reset" not in details:
        return None
    m = _ADDRESS.search(details)
    if m is None:
        return None
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    return _probe_cached(host, int(port))


def _client_side(details: str) -> str:
    m = _REASON.search(details)
    code = m.group(1) if m else ""
    reason = f" ({code}{': ' + m.group(2).strip() if m and m.group(2) else ''})" if m else ""
    if "is not in peer certificate" in details:
        return ("TLS handshake failed: the server's certificate does not name the address dialled "
                "(its subject alternative names must cover it)")
    if code == "CERTIFICATE_VERIFY_FAILED":
        return f"TLS handshake failed: the server's certificate is not signed by the CA in tls.ca{reason}"
    if code == "WRONG_VERSION_NUMBER":
        return "TLS handshake failed: the server does not speak TLS (started without a certificate?)"
    return f"TLS handshake failed{reason}"


def _probe_cached(host: str, port: int) -> str | None:
    now = time.monotonic()
    with _VERDICTS.lock:
        hit = _VERDICTS.found.get((host, port))
    if hit is not None and now - hit[0] < _VERDICT_TTL_S:
        return hit[1]
    verdict = _probe(host, port)
    with _VERDICTS.lock:
        _VERDICTS.found[(host, port)] = (now, verdict)
    return verdict


_NEEDS_CERT = ("the server requires TLS with a client certificate signed by its CA and refused this "
               "client (plaintext, or no or another CA's certificate: set tls.ca, tls.cert and tls.key)")
_SPEAKS_TLS = ("the server speaks TLS and this client connected without it (set tls.ca to the CA "
               "that signed the server's certificate)")


def _probe(host: str, port: int) -> str | None:
    """Handshake with ``host:port`` trusting any certificate and presenting none: what
    the server then does says why it closed the connection of the failed call. A gRPC
    server sends its HTTP/2 settings first; one that requires a client certificate
    closes the connection instead (TLS 1.3 checks it after the client's handshake ends)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only asking whether it speaks TLS, sending nothing
    context.set_alpn_protocols(["h2"])  # gRPC servers refuse a handshake without it
    try:
        with socket.create_connection((host, port), PROBE_TIMEOUT_S) as raw, \
                context.wrap_socket(raw) as conn:
            conn.settimeout(PROBE_TIMEOUT_S)
            try:
                first = conn.recv(1)
            except TimeoutError:
                return _SPEAKS_TLS  # it took our handshake and waits for us to speak
            except OSError:  # ssl.SSLError too: an alert, a reset
                return _NEEDS_CERT
            return _SPEAKS_TLS if first else _NEEDS_CERT
    except ssl.SSLError as exc:
        if "CERTIFICATE_REQUIRED" in str(exc).upper():
            return _NEEDS_CERT
        return None  # it does not speak TLS (or not ours): not a refused handshake
    except OSError:
        return None  # down or unreachable: the failure was that
