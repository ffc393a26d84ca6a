"""What `blobtier up` passes its services for ``[tls]``: file paths, never key material."""

from __future__ import annotations

import pytest

from blobtier import tlsconf
from blobtier.config import from_mapping
from blobtier.errors import InvalidRequest
from blobtier.region.services import check_directories, client_tls_files, specs

SERVICES = {"base_port": 17400, "meta_servers": 1, "daemon_peer_port": 17450}


def _flags(argv: list[str]) -> dict[str, str | bool]:
    out: dict[str, str | bool] = {}
    for i, a in enumerate(argv):
        if a.startswith("--tls-"):
            nxt = argv[i + 1] if i + 1 < len(argv) else ""
            out[a] = True if a == "--tls-require-client-cert" else nxt
    return out


def test_files_named_in_the_config_go_to_every_service_and_to_clients(tmp_path):
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("-----BEGIN PRIVATE KEY-----\nsecret\n")
    tls = {"ca": str(tmp_path / "ca.pem"), "cert": str(tmp_path / "cert.pem"),
           "key": str(tmp_path / "key.pem"), "require_client_cert": True}
    config = from_mapping({"root": str(tmp_path / "r"), "services": SERVICES, "tls": tls}, env={})
    for spec in specs(config):
        assert _flags(spec.argv) == {"--tls-ca": tls["ca"], "--tls-cert": tls["cert"],
                                     "--tls-key": tls["key"], "--tls-require-client-cert": True}, spec.name
        assert not any("BEGIN" in a or "secret" in a for a in spec.argv)
    assert client_tls_files(config) == {"ca": tls["ca"], "cert": tls["cert"], "key": tls["key"]}


def test_auto_gives_each_service_its_own_files_under_the_run_directory(tmp_path):
    root = str(tmp_path / "r")
    config = from_mapping({"root": root, "services": SERVICES, "tls": {"mode": "auto"}}, env={})
    for spec in specs(config):
        files = tlsconf.files_of(root, spec.name)
        assert _flags(spec.argv) == {"--tls-ca": files.ca, "--tls-cert": files.cert,
                                     "--tls-key": files.key}, spec.name
    assert client_tls_files(config)["key"] == tlsconf.files_of(root, tlsconf.CLIENT).key


def test_plaintext_by_default_and_a_ca_without_a_certificate_cannot_serve(tmp_path):
    config = from_mapping({"root": str(tmp_path / "r"), "services": SERVICES}, env={})
    assert all(not _flags(s.argv) for s in specs(config)) and client_tls_files(config) is None
    (tmp_path / "ca.pem").write_text("")
    client_only = from_mapping({"root": str(tmp_path / "r"), "tls": {"ca": str(tmp_path / "ca.pem")}}, env={})
    with pytest.raises(InvalidRequest, match="tls.cert"):
        check_directories(client_only)
