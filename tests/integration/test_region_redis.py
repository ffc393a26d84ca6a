"""A region whose metadata is a Redis Cluster, run as a user runs it: `blobtier up` starts
3 Redis masters, 2 metadata servers and the chunk servers; two "hosts" (client processes,
each with a host daemon of its own) write and read the region at once, with no region
lock; one metadata server is killed and the clients go on through the other; `down`
leaves no process and no port, and keeps the cluster's data for the next `up`."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys

import pytest

import blobtier
from blobtier import runstate as state
from tests.integration.region_support import blobtier as run_cli
from tests.integration.region_support import free_base_port, kill_leftovers, port_free, write_config
from tests.redis_cluster import require_redis

KEYS = 12  # per host and phase

# One "host": its own client process, attached to its own daemon; it writes its keys and
# reads every key either host has written so far, checking each byte, in two phases.
HOST = r"""
import hashlib, json, os, sys, time
import blobtier

config, name, daemon, go, keys = sys.argv[1:6]
keys = int(keys)

def data(key):
    return hashlib.sha256(key.encode()).digest() * (2 + len(key) * 997 % 5000)

client = blobtier.connect(config, cache={"daemon": daemon})
seen = {"written": 0, "read": 0, "metadata": list(client.config.metadata.endpoints)}

def phase(p):
    for i in range(keys):
        key = f"ns/{name}/{p}-{i:03d}"
        client.put(key, data(key))
        seen["written"] += 1
        for info in client.ls("ns/"):
            if bytes(client.get(info.key)) != data(info.key):
                raise SystemExit(f"wrong bytes for {info.key}")
            seen["read"] += 1

phase(1)
print("phase1", flush=True)
while not os.path.exists(go):
    time.sleep(0.02)
phase(2)
client.close()
print(json.dumps(seen), flush=True)
"""


def data(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest() * (2 + len(key) * 997 % 5000)


@pytest.fixture
def region(tmp_path):
    require_redis()
    root = tmp_path / "region"
    base = free_base_port(offsets=(0, 10000))  # and the cluster buses, 10000 above
    path = write_config(tmp_path / "region.toml", root, base, extra="""meta_servers = 2
flash_nodes = 0
[metadata]
backend = "redis-cluster"
""")
    yield path, str(root)
    kill_leftovers(str(root))


def _ports(root: str) -> set[int]:
    out = set()
    for s in state.read(root).services:
        port = int(s.address.rpartition(":")[2]) if s.address else None
        if port:
            out |= {port, port + 10000} if s.kind == "redis" else {port}
        if s.metrics_port:
            out.add(s.metrics_port)
    return out


def test_two_hosts_share_a_region_on_a_redis_cluster(region, tmp_path):
    path, root = region
    up = run_cli("up", "-c", path)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "formed a Redis Cluster of 3 masters" in up.stdout
    status = run_cli("status", "-c", path)
    assert status.returncode == 0, status.stdout  # every row SERVING
    for name in ("redis-0", "redis-1", "redis-2", "meta-0", "meta-1", "block-0", "block-2", "daemon"):
        assert name in status.stdout
    region_state = state.read(root)
    ports = _ports(root)

    # Host B: a daemon of its own (host A's is the region's).
    sock_b = str(tmp_path / "b.sock")
    daemon_b = subprocess.Popen([sys.executable, "-m", "blobtier.cli", "daemon", "--memory", "16MiB",
                                 "--socket", sock_b], stdout=subprocess.PIPE, text=True)
    go = str(tmp_path / "go")
    hosts = {}
    try:
        assert daemon_b.stdout.readline()  # its ready line
        for name, daemon in (("a", "auto"), ("b", sock_b)):
            hosts[name] = subprocess.Popen([sys.executable, "-c", HOST, path, name, daemon, go, str(KEYS)],
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, proc in hosts.items():
            line = proc.stdout.readline()
            assert line == "phase1\n", f"host {name}: {line!r} {proc.stderr.read()}"
        # Both wrote at once: no writer lock is held, and no embedded metadata was made.
        assert not os.path.isdir(os.path.join(root, "metadata"))

        meta0 = next(s for s in region_state.services if s.name == "meta-0")
        os.kill(meta0.pid, signal.SIGKILL)
        open(go, "w").close()
        results = {}
        for name, proc in hosts.items():
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, f"host {name}: {err}"
            results[name] = json.loads(out.strip().splitlines()[-1])
    finally:
        for proc in [*hosts.values(), daemon_b]:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    for seen in results.values():
        assert seen["metadata"] == [s.address for s in region_state.of_kind("meta")]
        assert seen["written"] == 2 * KEYS and seen["read"] >= 2 * KEYS
    status = run_cli("status", "-c", path)
    assert status.returncode == 1 and "dead" in status.stdout  # meta-0

    # A third process reads every key both hosts wrote, through the surviving server.
    written = sorted(f"ns/{h}/{p}-{i:03d}" for h in "ab" for p in (1, 2) for i in range(KEYS))
    with blobtier.connect(path, cache={"daemon": "off", "l1_bytes": 0}) as reader:
        assert [info.key for info in reader.ls("ns/")] == written
        assert all(bytes(reader.get(k)) == data(k) for k in written)

    down = run_cli("down", "-c", path)
    assert down.returncode == 0, down.stderr
    assert "meta-0   pid" in down.stdout and "was not running" in down.stdout
    assert state.read(root) is None
    assert not [s.pid for s in region_state.services if state.pid_alive(s.pid)]
    assert all(port_free(p) for p in ports), [p for p in ports if not port_free(p)]
    # The cluster's data stays for the next `up` (AOF and nodes.conf of every node).
    for n in range(3):
        node = os.path.join(root, "redis", f"{n:03d}")
        assert os.path.exists(os.path.join(node, "nodes.conf"))
        assert os.listdir(os.path.join(node, "appendonlydir"))
    with socket.socket() as s:  # nothing answers where a Redis node was
        assert s.connect_ex(("127.0.0.1", int(region_state.of_kind("redis")[0].address.rpartition(":")[2])))


def test_restart_then_down_and_up_bring_the_same_cluster_back(region):
    path, root = region
    assert run_cli("up", "-c", path).returncode == 0
    with blobtier.connect(path, cache={"daemon": "off", "l1_bytes": 0}) as client:
        client.put("ns/kept", b"survives restarts, down and up")
    # A Redis master and a metadata server die: `restart` brings both back, the node into
    # its cluster (from its nodes.conf and AOF), on the same ports.
    before = {s.name: s for s in state.read(root).services}
    for name in ("redis-1", "meta-1"):
        os.kill(before[name].pid, signal.SIGKILL)
    restart = run_cli("restart", "-c", path)
    assert restart.returncode == 0, restart.stderr
    assert "restarted redis-1" in restart.stdout and "restarted meta-1" in restart.stdout
    status = run_cli("status", "-c", path)
    assert status.returncode == 0, status.stdout  # every node sees its cluster serving every slot
    node, was = {s.name: s for s in state.read(root).services}["redis-1"], before["redis-1"]
    assert node.address == was.address and node.pid != was.pid
    with blobtier.connect(path, cache={"daemon": "off", "l1_bytes": 0}) as client:
        assert bytes(client.get("ns/kept")) == b"survives restarts, down and up"
    assert run_cli("down", "-c", path).returncode == 0
    again = run_cli("up", "-c", path)
    assert again.returncode == 0, again.stderr
    assert "formed a Redis Cluster" not in again.stdout  # re-formed from nodes.conf, not joined anew
    with blobtier.connect(path, cache={"daemon": "off", "l1_bytes": 0}) as client:
        assert bytes(client.get("ns/kept")) == b"survives restarts, down and up"
    assert run_cli("down", "-c", path).returncode == 0
