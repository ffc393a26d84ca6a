"""The region CA and certificates `blobtier up` makes for ``tls.mode = "auto"``."""

from __future__ import annotations

import ipaddress
import os
import stat

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from blobtier import tlsconf


def _cert(path: str) -> x509.Certificate:
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


def test_every_service_gets_a_certificate_signed_by_the_region_ca_naming_what_clients_dial(tmp_path):
    root = str(tmp_path / "region")
    files = tlsconf.make_region(root, ["block-0", "flash-0"], tlsconf.default_hosts(["10.1.2.3", "node7"]))
    assert set(files) == {"block-0", "flash-0", tlsconf.CLIENT}
    ca = _cert(files["block-0"].ca)
    for name, f in files.items():
        cert = _cert(f.cert)
        cert.verify_directly_issued_by(ca)
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.CLIENT_AUTH in usages
        if name == tlsconf.CLIENT:
            assert ExtendedKeyUsageOID.SERVER_AUTH not in usages
            continue
        assert ExtendedKeyUsageOID.SERVER_AUTH in usages
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        ips = set(san.get_values_for_type(x509.IPAddress))
        assert {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"),
                ipaddress.ip_address("10.1.2.3")} <= ips
        assert {"localhost", "node7"} <= set(san.get_values_for_type(x509.DNSName))


def test_keys_are_private_and_the_ca_survives_the_next_up(tmp_path):
    root = str(tmp_path / "region")
    old = os.umask(0)  # a umask that would leave files world-readable
    try:
        first = tlsconf.make_region(root, ["block-0"], ["127.0.0.1"])
    finally:
        os.umask(old)
    d = tlsconf.tls_dir(root)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    for name in os.listdir(d):
        assert stat.S_IMODE(os.stat(os.path.join(d, name)).st_mode) == 0o600, name
    ca_before = open(first["block-0"].ca, "rb").read()
    cert_before = open(first["block-0"].cert, "rb").read()
    again = tlsconf.make_region(root, ["block-0"], ["127.0.0.1"])  # the next `up`
    assert open(again["block-0"].ca, "rb").read() == ca_before  # clients keep trusting it
    assert open(again["block-0"].cert, "rb").read() != cert_before  # certificates are made again
    kept = tlsconf.make_region(root, ["block-0", "block-1"], ["127.0.0.1"], renew=False)  # `restart`
    assert open(kept["block-0"].cert, "rb").read() == open(again["block-0"].cert, "rb").read()
    assert os.path.exists(kept["block-1"].cert)
