"""The services `blobtier up` runs, as the region config describes them."""

from __future__ import annotations

import pytest


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
