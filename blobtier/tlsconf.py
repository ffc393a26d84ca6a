"""A region's TLS files: the ones ``[tls]`` names, or a CA and certificates made for it.

With ``tls.mode = "auto"``, ``blobtier up`` makes (``make_region``) under ``<root>/run/tls``::

    ca.pem  ca.key          the region's CA (kept across ups: clients keep trusting it)
    <service>.pem/.key      one per service (block-0, flash-0, meta-0, daemon), for serving
                            and as its client certificate (a flash node reads chunk servers)
    client.pem/.key         what the region's clients present (mutual TLS)

Keys are EC P-256 (cheap handshakes), written 0600 in a 0700 directory
(``fsutil``): whoever can read the run directory (the region's owner) can be a client.
Every certificate names what clients dial: 127.0.0.1, ::1, localhost, this host's name
and ``services.host`` (as IP or DNS name), so no ``ssl_target_name_override`` is needed.
``cryptography`` is imported only when certificates are made.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from blobtier.fsutil import private_dir, private_file

CA_DAYS = 3650  # the region CA
LEAF_DAYS = 365  # service and client certificates (made again at every `up`)
CLIENT = "client"


@dataclass(frozen=True)
class TlsFiles:
    """PEM file paths of one party: the CA it trusts, its certificate and key."""

    ca: str
    cert: str
    key: str


def tls_dir(root: str) -> str:
    return os.path.join(root, "run", "tls")


def files_of(root: str, name: str) -> TlsFiles:
    """Where ``make_region`` puts ``name``'s files (a service name, or ``CLIENT``)."""
    d = tls_dir(root)
    return TlsFiles(os.path.join(d, "ca.pem"), os.path.join(d, f"{name}.pem"), os.path.join(d, f"{name}.key"))


def default_hosts(extra: Iterable[str] = ()) -> list[str]:
    """What a region's certificates name: loopback, this host's name, and ``extra``."""
    hosts = ["127.0.0.1", "::1", "localhost", socket.gethostname(), *extra]
    return list(dict.fromkeys(h for h in hosts if h))


def make_region(root: str, services: Sequence[str], hosts: Sequence[str], *,
                renew: bool = True) -> dict[str, TlsFiles]:
    """The files of ``services`` and ``CLIENT`` under ``<root>/run/tls``, signed by the
    region CA (made if missing). ``renew``: issue every certificate again (``up``); else
    only the missing ones (``restart``). Returns name -> files.

    Raises:
        OSError: the directory or a file cannot be written.
    """
    d = private_dir(tls_dir(root))
    ca_cert, ca_key = _region_ca(d)
    out = {}
    for name in (*services, CLIENT):
        files = files_of(root, name)
        if renew or not (os.path.exists(files.cert) and os.path.exists(files.key)):
            _issue(files, name, ca_cert, ca_key, hosts, server=name != CLIENT)
        out[name] = files
    return out


def _region_ca(d: str):
    """The region CA's certificate and key: loaded if present and valid for another day,
    else made (and written)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert_path, key_path = os.path.join(d, "ca.pem"), os.path.join(d, "ca.key")
    if os.path.exists(cert_path) and os.path.exists(key_path):
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), None)
        if cert.not_valid_after_utc > _now() + datetime.timedelta(days=1):
            return cert, key
    key = _new_key()
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, f"blobtier region CA {_short(d)}")])
    cert = (_builder(name, name, key.public_key(), CA_DAYS)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, _hash()))
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return cert, key


def _issue(files: TlsFiles, name: str, ca_cert, ca_key, hosts: Sequence[str], *, server: bool) -> None:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = _new_key()
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server \
        else [ExtendedKeyUsageOID.CLIENT_AUTH]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"blobtier {name}")])
    builder = (_builder(subject, ca_cert.subject, key.public_key(), LEAF_DAYS)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(_alt_names(hosts)), critical=False)
    _write_key(files.key, key)
    _write_cert(files.cert, builder.sign(ca_key, _hash()))


def _alt_names(hosts: Sequence[str]) -> list:
    from cryptography import x509

    out: list = []
    for h in dict.fromkeys(hosts):
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            out.append(x509.DNSName(h))
    return out


def _builder(subject, issuer, public_key, days: int):
    from cryptography import x509

    now = _now()
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))  # clocks a little apart
            .not_valid_after(now + datetime.timedelta(days=days)))


def _new_key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _hash():
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()


def _write_key(path: str, key) -> None:
    from cryptography.hazmat.primitives import serialization

    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    _replace(path, pem)


def _write_cert(path: str, cert) -> None:
    from cryptography.hazmat.primitives import serialization

    _replace(path, cert.public_bytes(serialization.Encoding.PEM))


def _replace(path: str, data: bytes) -> None:
    """Write ``path`` (0600) whole or not at all: a reader never sees half a PEM."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with private_file(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _short(d: str) -> str:
    import hashlib

    return hashlib.sha256(os.fsencode(os.path.abspath(d))).hexdigest()[:8]
