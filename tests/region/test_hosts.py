"""Simulated hosts (``services.hosts``): the daemons `blobtier up` would run, and which one
a client attaches to (region/hosts.py, runstate.host_daemon)."""

from __future__ import annotations

import pytest

from blobtier import runstate
from blobtier.config import from_mapping
from blobtier.errors import InvalidRequest
from blobtier.region.hosts import host_address, loopback_aliases
from blobtier.region.services import specs


def region(tmp_path, **services):
    return from_mapping({"root": str(tmp_path), "block": {"servers": 2, "replicas": 1},
                         "services": {"base_port": 17400, **services}}, env={})


def test_a_daemon_per_host_each_the_others_peer_reading_its_homes_through(tmp_path):
    daemons = [s for s in specs(region(tmp_path, hosts=3)) if s.kind == "daemon"]
    assert [d.name for d in daemons] == ["daemon-0", "daemon-1", "daemon-2"]
    assert len({d.socket for d in daemons}) == 3 and len({d.metrics_port for d in daemons}) == 3
    listen = [d.address for d in daemons]
    assert len(set(listen)) == 3 and len({a.rpartition(":")[2] for a in listen}) == 3  # own port each
    for n, d in enumerate(daemons):
        argv = " ".join(d.argv)
        assert f"--listen {listen[n]}" in argv and f"--peers {','.join(listen)}" in argv
        assert f"--host-id host-{n}" in argv
        assert "--fill-block-endpoints 127.0.0.1:17400,127.0.0.1:17401" in argv
        assert "--fill-flash-endpoints 127.0.0.1:17402" in argv
    # Their ports come after every other service's: the rest keep theirs.
    one = {s.name: s.address for s in specs(region(tmp_path))}
    many = {s.name: s.address for s in specs(region(tmp_path, hosts=3))}
    assert all(many[name] == addr for name, addr in one.items() if name != "daemon")


def test_hosts_listen_on_loopback_aliases_where_they_bind():
    if loopback_aliases():
        assert [host_address("127.0.0.1", n) for n in range(3)] == ["127.0.1.1", "127.0.1.2", "127.0.1.3"]
    assert host_address("10.0.0.5", 2) == "10.0.0.5"  # not loopback: the configured interface


def test_hosts_need_a_daemon_each_and_no_hand_listed_peers(tmp_path):
    with pytest.raises(InvalidRequest, match="services.hosts"):
        region(tmp_path, hosts=2, daemon=False)
    with pytest.raises(InvalidRequest, match="services.hosts"):
        region(tmp_path, hosts=2, daemon_peer_port=17450, daemon_peers=["127.0.0.1:17450"])
    with pytest.raises(InvalidRequest, match="services.hosts"):
        region(tmp_path, hosts=0)


def state_of(root: str, names: list[str]) -> runstate.RegionState:
    return runstate.RegionState(root, services=[
        runstate.ServiceRecord(n, "daemon", 1, None, None, f"/run/{n}.sock", 0.0, "") for n in names])


def test_a_client_attaches_to_its_hosts_daemon(tmp_path, monkeypatch):
    config = region(tmp_path)
    st = state_of(str(tmp_path), ["daemon-0", "daemon-1", "daemon-2"])
    monkeypatch.delenv("BLOBTIER_HOST", raising=False)
    assert runstate.host_daemon(config, st).name == "daemon-0"  # no host named: the first
    monkeypatch.setenv("BLOBTIER_HOST", "host-2")
    assert runstate.host_daemon(config, st).name == "daemon-2"
    monkeypatch.setenv("BLOBTIER_HOST", "1")
    assert runstate.host_daemon(config, st).name == "daemon-1"
    pinned = from_mapping({"root": str(tmp_path), "cache": {"host": "host-0"}}, env={})
    assert runstate.host_daemon(pinned, st).name == "daemon-0"  # cache.host wins
    monkeypatch.setenv("BLOBTIER_HOST", "host-5")
    with pytest.raises(InvalidRequest, match="BLOBTIER_HOST is 'host-5'.*host-0, host-1, host-2"):
        runstate.host_daemon(config, st)
    single = state_of(str(tmp_path), ["daemon"])
    monkeypatch.setenv("BLOBTIER_HOST", "host-0")
    assert runstate.host_daemon(config, single).name == "daemon"


def test_blobtier_host_is_a_known_variable(tmp_path):
    config = from_mapping({"root": str(tmp_path)}, env={"BLOBTIER_HOST": "host-1"})  # not "no field"
    assert config.cache.host == ""
