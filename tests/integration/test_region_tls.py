"""A region on mutual TLS from its config (``tls.mode = "auto"``, client certificates
required): `blobtier up` makes the CA and certificates, every service serves TLS, status
probes and clients connect with the region's client certificate, and clients that speak
plaintext, trust another CA or present no certificate are refused, saying why."""

from __future__ import annotations

import dataclasses
import os
import stat

import pytest

import blobtier
from blobtier import runstate as state
from blobtier import tlsconf
from blobtier.config import CacheConfig, TlsConfig
from blobtier.errors import TlsRefused
from tests.integration.region_support import blobtier as run_cli
from tests.integration.region_support import free_base_port, kill_leftovers, processes_under, write_config

TLS = '\n[tls]\nmode = "auto"\nrequire_client_cert = true\n'
NO_L1 = CacheConfig(l1_bytes=0, daemon="off")  # the daemon's L1 is local (same uid), not the network


@pytest.fixture
def tls_region(tmp_path):
    root = tmp_path / "region"
    path = write_config(tmp_path / "region.toml", root, free_base_port(), extra=TLS)
    yield path, str(root)
    kill_leftovers(str(root))


def _as(path: str, tls: TlsConfig):
    """A client of the running region with ``tls`` instead of the region's client files."""
    config = state.resolve_running(path)
    return blobtier.connect(dataclasses.replace(config, tls=tls, cache=NO_L1))


def _refused(client, match: str) -> None:
    with pytest.raises(TlsRefused, match=match):
        client.put("refused/x", b"never stored")
    with pytest.raises(TlsRefused, match=match):  # a read: at once, not after retry rounds
        client.get("tls/blob")


def test_mutual_tls_region_up_put_get_refusals_down(tls_region, tmp_path):
    path, root = tls_region
    up = run_cli("up", "-c", path)
    assert up.returncode == 0, up.stderr
    region = state.read(root)
    client_files = tlsconf.files_of(root, tlsconf.CLIENT)
    assert region.tls == {"ca": client_files.ca, "cert": client_files.cert, "key": client_files.key}
    for name in os.listdir(tlsconf.tls_dir(root)):
        assert stat.S_IMODE(os.stat(os.path.join(tlsconf.tls_dir(root), name)).st_mode) == 0o600
    for s in region.services:  # file paths in argv, never key material
        with open(f"/proc/{s.pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        assert b"BEGIN" not in b" ".join(argv)
        if s.kind != "daemon" or s.address:
            assert os.fsencode(tlsconf.files_of(root, s.name).key) in argv, s.name
            assert b"--tls-require-client-cert" in argv, s.name

    status = run_cli("status", "-c", path)  # health probes over mutual TLS
    assert status.returncode == 0 and status.stdout.count("SERVING") == len(region.services), status.stdout
    blob = os.urandom(300_000)
    (tmp_path / "blob").write_bytes(blob)
    put = run_cli("-r", path, "put", str(tmp_path / "blob"), "tls/blob")
    assert put.returncode == 0, put.stderr
    with blobtier.connect(path, cache={"l1_bytes": 0, "daemon": "off"}) as client:  # no local L1
        assert client.get("tls/blob") == blob

    with _as(path, TlsConfig(mode="off")) as plaintext:
        _refused(plaintext, "requires TLS with a client certificate")
    other = tlsconf.make_region(str(tmp_path / "other"), [], ["127.0.0.1"])[tlsconf.CLIENT]
    with _as(path, TlsConfig(ca=other.ca, cert=other.cert, key=other.key)) as other_ca:
        _refused(other_ca, "not signed by the CA in tls.ca")
    with _as(path, TlsConfig(ca=client_files.ca)) as no_cert:
        _refused(no_cert, "requires TLS with a client certificate")

    down = run_cli("down", "-c", path)
    assert down.returncode == 0, down.stderr
    assert processes_under(root) == []


HOSTS_TLS = '''hosts = 2
[block]
servers = 1
replicas = 1
[tls]
mode = "auto"
require_client_cert = true
'''


def test_hosts_read_through_their_l2_peers_over_mutual_tls(tmp_path, monkeypatch):
    """Two simulated hosts: each daemon serves its L2 peers over TLS and fills the chunks
    homed at it from the flash node and chunk server over TLS, presenting its own
    certificate (a fill refused there would send the client below L2: origin reads)."""
    root = tmp_path / "region"
    path = write_config(tmp_path / "region.toml", root, free_base_port(), extra=HOSTS_TLS)
    path_text = open(path).read().replace("[block]\nservers = 3\n", "")  # the section above instead
    with open(path, "w") as f:
        f.write(path_text)
    try:
        up = run_cli("up", "-c", path)
        assert up.returncode == 0, up.stderr
        data = {f"ds/{i}": os.urandom(64 << 10) for i in range(8)}  # a chunk each
        with blobtier.connect(path, cache={"daemon": "off", "l1_bytes": 0}) as client:
            client.put_many(data)
        for host in ("host-0", "host-1"):
            monkeypatch.setenv("BLOBTIER_HOST", host)
            with blobtier.connect(path) as client:
                assert [bytes(v) for v in client.get_many(list(data))] == list(data.values())
                stats = client.stats()
            # Every byte came from the hosts' L1 and L2 (a home daemon's fills included): none
            # from the flash node or the chunk server directly.
            assert stats["l3"]["bytes"] == stats["origin"]["bytes"] == 0, (host, stats)
            assert stats["l1"]["bytes"] + stats["l2"]["bytes"] == sum(map(len, data.values())), (host, stats)
        assert run_cli("down", "-c", path).returncode == 0
    finally:
        kill_leftovers(str(root))
