"""The services `blobtier up` runs, as the region config describes them."""

from __future__ import annotations

import pytest

from blobtier.errors import InvalidRequest


def test_daemon_l2_flags_and_their_validation(tmp_path):
    from blobtier.config import from_mapping
    from blobtier.errors import InvalidRequest
    from blobtier.region.services import specs

    base = {"root": str(tmp_path), "services": {"base_port": 17400, "daemon_peer_port": 17450,
                                                 "daemon_peers": ["127.0.0.1:17450", "10.0.0.2:17450"]}}
    config = from_mapping(base, env={})
    daemon = next(s for s in specs(config) if s.kind == "daemon")
    argv = " ".join(daemon.argv)
    assert "--listen 127.0.0.1:17450" in argv and "--peers 127.0.0.1:17450,10.0.0.2:17450" in argv
    with pytest.raises(InvalidRequest, match="services.daemon_peers"):
        from_mapping({"root": str(tmp_path), "services": {"daemon_peers": ["10.0.0.2:17450"]}}, env={})
    with pytest.raises(InvalidRequest, match="services.daemon_peers"):
        from_mapping({"root": str(tmp_path), "services": {"daemon_peer_port": 17450,
                                                           "daemon_peers": ["10.0.0.2:1@3"]}}, env={})
    with pytest.raises(InvalidRequest, match="services.daemon_peer_port"):
        from_mapping({"root": str(tmp_path), "services": {"base_port": 17400, "daemon_peer_port": 17401}},
                     env={})


def test_servers_check_the_token_file_and_flash_nodes_present_the_token(tmp_path):
    from blobtier.config import from_mapping
    from blobtier.region.services import specs

    tokens = tmp_path / "tokens.toml"
    tokens.write_text("")
    config = from_mapping({"root": str(tmp_path), "services": {"base_port": 17400},
                           "auth": {"token_file": str(tokens), "token": "s3cret"}}, env={})
    for spec in specs(config):
        assert spec.argv[-2:] == ["--token-file", str(tokens)], spec.name  # no metadata service: no grants
        assert "s3cret" not in " ".join(spec.argv)  # never on a command line
    config = from_mapping({"root": str(tmp_path), "services": {"base_port": 17400, "meta_servers": 1},
                           "auth": {"token_file": str(tokens), "token": "s3cret"}}, env={})
    key = str(tmp_path / "run" / "grant.key")
    for spec in specs(config):  # with one, every service is given the key file's path, never a key
        assert spec.argv[-4:] == ["--token-file", str(tokens), "--grant-key-file", key], spec.name
    flash = [s for s in specs(config) if s.kind == "flash"]
    assert flash and all(s.env == {"BLOBTIER_AUTH_TOKEN": "s3cret"} for s in flash)
    with pytest.raises(InvalidRequest, match="auth.token_file"):
        from_mapping({"root": str(tmp_path), "auth": {"token_file": str(tmp_path / "none")}}, env={})
