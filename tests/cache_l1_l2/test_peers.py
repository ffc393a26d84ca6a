"""L2: two host daemons pool their arenas; a chunk read on one host is served to the other
from the first one's memory, not from the tiers below."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

import blobtier
from blobtier.cache_l1_l2.daemon import HostDaemon, daemon_info
from blobtier.errors import InvalidRequest
from blobtier.placement import rank

MiB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_RUN = tempfile.mkdtemp(prefix="bt-peer-")  # 0700 and ours (trust.py); sun_path is short
atexit.register(shutil.rmtree, _RUN, True)


def sock_path(tag: str) -> str:
    return os.path.join(_RUN, f"{tag}-{time.monotonic_ns()}.sock")


def payload(i: int) -> bytes:
    return bytes([i % 251]) * (40_000 + (i * 7919) % 30_000)


@pytest.fixture
def region(tmp_path):
    root = str(tmp_path / "region")
    with blobtier.connect(root, cache={"daemon": "off"}) as c:
        c.put_many([(f"ds/{i}", payload(i)) for i in range(48)])
    return root


@pytest.fixture
def pair():
    ports = [free_port(), free_port()]
    addrs = tuple(f"127.0.0.1:{p}" for p in ports)
    daemons = [HostDaemon(16 * MiB, socket_path=sock_path(tag), listen=addr, peers=addrs)
               for tag, addr in zip("ab", addrs)]
    yield daemons
    for d in daemons:
        d.stop()
        assert not os.path.exists(d.socket_path)


def read_all(root: str, daemon: HostDaemon, n: int = 48) -> dict:
    with blobtier.connect(root, cache={"daemon": daemon.socket_path}) as c:
        keys = [f"ds/{i}" for i in range(n)]
        for key, view in zip(keys, c.get_many(keys)):
            assert bytes(view) == payload(int(key.split("/")[1]))
        homes = {}
        for key in keys:
            rec = c._record(key)
            homes[key] = rank(rec.chunk_key(0).digest(), sorted(daemon.server.info["peers"]), [1.0, 1.0])[0]
        stats = c.stats()
    return {"stats": stats, "homes": homes}


def test_daemon_tells_clients_its_cluster(pair):
    a, b = pair
    info = daemon_info(a.socket_path)
    assert info["peer"] == a.peer_server.address
    assert info["peers"] == sorted([a.peer_server.address, b.peer_server.address])


def test_chunk_read_on_one_host_is_served_to_the_other_from_memory(region, pair):
    a, b = pair
    first = read_all(region, a)
    assert first["stats"]["origin"]["hits"] == 48  # cold: every chunk from the block layer
    on_a = sum(1 for h in first["homes"].values() if h == a.peer_server.address)
    on_b = 48 - on_a
    assert 0 < on_a < 48

    second = read_all(region, b)
    s = second["stats"]
    assert s["origin"]["hits"] == 0  # nothing read from below on host B
    assert s["l2"]["hits"] == on_a  # chunks homed at A: from A's arena over gRPC
    assert s["l1"]["hits"] == on_b  # homed at B: A's client offered them to B's arena
    assert a.peer_server.cache.counters["hits"] == on_a
    assert b.peer_server.cache.counters["puts_admitted"] == on_b


def test_dead_peer_is_skipped(region, pair):
    a, b = pair
    read_all(region, a)
    a.stop()
    after = read_all(region, b)  # every read still succeeds, A's chunks come from below
    s = after["stats"]
    assert s["l2"]["hits"] == 0
    assert s["origin"]["hits"] + s["l3"]["hits"] + s["l1"]["hits"] == 48  # L3: the embedded one


def test_peers_need_listen():
    with pytest.raises(InvalidRequest, match="listen"):
        HostDaemon(16 * MiB, socket_path=sock_path("x"), peers=("127.0.0.1:1",))


def test_cli_daemon_with_peers_serves_them(tmp_path):
    sock, port = sock_path("cli"), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "blobtier.cli", "daemon", "--memory", "16MiB",
                             "--socket", sock, "--listen", f"127.0.0.1:{port}",
                             "--peers", f"127.0.0.1:{port},127.0.0.1:1"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert f"L2 peers served on 127.0.0.1:{port}" in line, line
        assert daemon_info(sock)["peers"] == sorted([f"127.0.0.1:{port}", "127.0.0.1:1"])
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
    assert not os.path.exists(sock)


def test_cli_rejects_weighted_peers():
    out = subprocess.run([sys.executable, "-m", "blobtier.cli", "daemon", "--socket", sock_path("w"),
                          "--listen", "127.0.0.1:0", "--peers", "127.0.0.1:5@2"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "--peers" in out.stderr


def test_sdk_files_chunks_under_their_namespace(tmp_path):
    """A daemon with per-namespace policies: the client's fills and announcements name
    each blob's namespace, so a `keep` namespace keeps its chunks while another churns."""
    root = str(tmp_path / "region")
    size = 1 << 20
    with blobtier.connect(root, cache={"daemon": "off"}) as c:
        c.put_many([(f"kept/{i}", bytes([i]) * size) for i in range(6)])
        c.put_many([(f"churn/{i}", bytes([i]) * size) for i in range(40)])
    daemon = HostDaemon(16 * MiB, policy="lru", socket_path=sock_path("ns"),
                        namespace_policies={"kept": "keep"})
    try:
        with blobtier.connect(root, cache={"daemon": daemon.socket_path}) as c:
            c.announce([f"kept/{i}" for i in range(6)])
            c.get_many([f"kept/{i}" for i in range(6)])
            for start in range(0, 40, 8):  # much more than the arena: the lru namespace churns
                c.get_many([f"churn/{i}" for i in range(start, start + 8)])
            before = c.stats()["l1"]["hits"]
            views = c.get_many([f"kept/{i}" for i in range(6)])
            assert [bytes(v[:1]) for v in views] == [bytes([i]) for i in range(6)]
            assert c.stats()["l1"]["hits"] - before == 6  # every kept chunk survived
        owner = daemon.owner
        assert set(owner._ns_bytes) >= {"kept", "churn"}
        assert owner._ns_bytes["kept"] >= 6 * size
    finally:
        daemon.stop()
