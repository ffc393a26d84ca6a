"""Real ``redis-server`` processes for tests: one node, or a Redis Cluster of 3 masters
(optionally with a replica each), on free loopback ports in a temp dir, always stopped.

A test that needs Redis skips when ``redis-server`` (or the ``redis`` client) is missing,
except under CI (``CI`` set): there it fails, so a broken install never passes as green.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence

import pytest

START_TIMEOUT_S = 20.0


def require_redis() -> str:
    """The path of ``redis-server``; skip the test without it (fail it under CI)."""
    server = shutil.which("redis-server")
    missing = []
    if server is None or shutil.which("redis-cli") is None:
        missing.append("redis-server/redis-cli (apt-get install redis-server)")
    try:
        import redis  # noqa: F401
    except ImportError:
        missing.append("the redis client (pip install -e '.[test]')")
    if missing:
        why = "needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Redis tests: {why}", pytrace=False)
        pytest.skip(why)
    return server


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (held open together so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class RedisNode:
    """One ``redis-server`` on loopback with its data and log under ``root``."""

    def __init__(self, root: str, *, cluster: bool = False, aof: bool = False,
                 extra: Sequence[str] = ()) -> None:
        server = require_redis()
        self.root = root
        os.makedirs(root, exist_ok=True)
        self.port, self.bus_port = free_ports(2)
        args = [server, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", root,
                "--daemonize", "no", "--protected-mode", "no", "--save", "",
                "--logfile", os.path.join(root, "redis.log"),
                "--maxmemory-policy", "noeviction",
                "--appendonly", "yes" if aof else "no", "--appendfsync", "always"]
        if cluster:
            args += ["--cluster-enabled", "yes", "--cluster-port", str(self.bus_port),
                     "--cluster-config-file", os.path.join(root, "nodes.conf"),
                     # Fast failover for the fault tests; no loopback node is ever slow.
                     "--cluster-node-timeout", "1000", "--cluster-replica-validity-factor", "0"]
        args += ["--repl-diskless-sync-delay", "0"]  # replicas sync at once, not after 5 s
        self.args = [*args, *extra]
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        """(Re)start the server on its port, with its data dir (AOF, nodes.conf) as left."""
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        self._wait_ready()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"redis://{self.address}"

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on {self.address} exited: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on {self.address} did not start: {self.log_tail()}")
            time.sleep(0.02)

    def wait_replicating(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until this replica's link to its master is up (its initial sync done)."""
        deadline = time.monotonic() + timeout_s
        while self.client().info("replication").get("master_link_status") != "up":
            if time.monotonic() > deadline:
                raise RuntimeError(f"replica {self.address} did not sync: {self.log_tail()}")
            time.sleep(0.02)

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(os.path.join(self.root, "redis.log")) as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final fsync (a crashed machine)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class LocalCluster:
    """A Redis Cluster of ``masters`` masters, each with ``replicas`` replicas, on loopback."""

    def __init__(self, root: str, masters: int = 3, replicas: int = 0, *, aof: bool = False) -> None:
        self.nodes: list[RedisNode] = []
        self.n_masters = masters
        try:
            for i in range(masters * (1 + replicas)):
                self.nodes.append(RedisNode(os.path.join(root, f"node{i}"), cluster=True, aof=aof))
            self._join(masters, replicas)
            self.wait_healthy(masters)
        except BaseException:
            self.close()
            raise

    def _join(self, masters: int, replicas: int) -> None:
        """What ``redis-cli --cluster create`` does, without its fixed one-second sleeps:
        meet, split the slots evenly over the masters, attach the replicas."""
        first = self.nodes[0].client()
        for n in self.nodes[1:]:
            first.execute_command("CLUSTER MEET", "127.0.0.1", n.port, n.bus_port)
        ids = [n.client().execute_command("CLUSTER MYID") for n in self.nodes]
        for i, n in enumerate(self.nodes[:masters]):
            lo, hi = 16384 * i // masters, 16384 * (i + 1) // masters - 1
            n.client().execute_command("CLUSTER ADDSLOTSRANGE", lo, hi)
        for j, n in enumerate(self.nodes[masters:]):
            master_id = ids[j % masters]
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:  # a node can only replicate a master it has heard of
                try:
                    n.client().execute_command("CLUSTER REPLICATE", master_id)
                    break
                except Exception:  # noqa: BLE001 - "Unknown node" until gossip arrives
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)

    @property
    def addresses(self) -> list[str]:
        return [n.address for n in self.nodes]

    @property
    def url(self) -> str:
        return "redis://" + ",".join(self.addresses)

    def alive(self) -> list[RedisNode]:
        return [n for n in self.nodes if n.proc.poll() is None]

    def topology(self) -> dict[str, dict]:
        """address -> CLUSTER NODES entry (node_id, flags, master_id, slots) as a live node
        sees it."""
        import redis

        for node in self.alive():
            try:
                return node.client().execute_command("CLUSTER NODES")
            except redis.RedisError:
                continue
        raise RuntimeError("no live node answers CLUSTER NODES")

    def masters(self) -> list[RedisNode]:
        topo = self.topology()
        return [n for n in self.alive() if "master" in topo[n.address]["flags"].split(",")]

    def replicas_of(self, master: RedisNode) -> list[RedisNode]:
        topo = self.topology()
        master_id = topo[master.address]["node_id"]
        return [n for n in self.alive() if topo[n.address]["master_id"] == master_id]

    def wait_healthy(self, masters: int, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until every live node reports ``cluster_state:ok`` and ``masters`` masters
        serve every slot (also: after a failover)."""
        import redis

        deadline = time.monotonic() + timeout_s
        infos: list[dict] = []
        while True:
            try:
                infos = [n.client().execute_command("CLUSTER INFO") for n in self.alive()]
                if all(i["cluster_state"] == "ok" and int(i["cluster_size"]) == masters and
                       int(i["cluster_slots_ok"]) == 16384 for i in infos):
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster not healthy: {infos}")
            time.sleep(0.05)

    def kill_master(self) -> tuple[RedisNode, RedisNode]:
        """SIGKILL a master that has a replica; return (the dead master, its replica) once
        the replica has taken over and the cluster serves every slot again."""
        master = next(m for m in self.masters() if self.replicas_of(m))
        replica = self.replicas_of(master)[0]
        master.kill()
        deadline = time.monotonic() + START_TIMEOUT_S
        while replica.client().info("replication")["role"] != "master":
            if time.monotonic() > deadline:
                raise RuntimeError(f"no failover of {master.address} to {replica.address}")
            time.sleep(0.05)
        self.wait_healthy(self.n_masters)
        return master, replica

    def close(self) -> None:
        for n in self.nodes:
            n.stop()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture(scope="session")
def redis_node(tmp_path_factory) -> Iterator[RedisNode]:
    """One node shared by a session (stores isolate by key prefix); a test that changes
    the server's settings or kills it starts its own ``RedisNode``."""
    node = RedisNode(str(tmp_path_factory.mktemp("redis")))
    yield node
    node.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory) -> Iterator[LocalCluster]:
    """3 masters, no replicas: shared by a session (stores isolate by key prefix)."""
    require_redis()
    with LocalCluster(str(tmp_path_factory.mktemp("redis-cluster"))) as c:
        yield c
