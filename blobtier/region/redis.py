"""The Redis Cluster a region keeps its metadata in (``metadata.backend = "redis-cluster"``),
and throwaway ``redis-server`` processes (``RedisNode``, ``LocalCluster``) for tests and
benchmarks.

``blobtier up`` runs ``metadata.redis_nodes`` redis-server processes as services of the
region (3 masters, each with ``metadata.replicas`` replicas; ``server_argv``), all bound to
127.0.0.1 whatever ``services.host`` says: only this host's metadata servers reach them.
Once every node answers, ``form`` joins fresh nodes into a cluster (what ``redis-cli
--cluster create`` does, without its fixed sleeps) or waits for nodes that were a cluster
before to find each other again from their ``nodes.conf``.

Durability: every node appends each write to its AOF and fsyncs it before it answers
(``appendfsync always``), so a commit a metadata server acknowledged survives the kill of
any process of the region, and a power cut. With ``replicas = 1`` the metadata servers
also ``WAIT`` for the replica of the master a commit went to (``wait_replicas=1``), so a
master's death and its replica's promotion lose no acknowledged commit either; the price:
while a master has no live replica, commits to its slots fail (``TierUnavailable``) until
``blobtier restart redis-N`` brings it back. With ``replicas = 0`` a dead master stops the
whole cluster (every slot must be served) until it is restarted; nothing is lost.

Data: ``<root>/redis/NNN/`` (0700) per node: ``nodes.conf`` (the topology) and
``appendonlydir/``; ``<root>/redis/cluster.json`` records the layout (ports, replicas).
``down`` keeps it all: the metadata is the region's truth (the chunks of every blob it
names), so the next ``up`` starts the same nodes on the same ports and they re-form the
same cluster. An ``up`` whose config would move the nodes (other ports, other replicas)
is refused: their ``nodes.conf`` would name addresses no node listens on. To start over
empty, remove ``<root>/redis`` while the region is down; every blob of the region is then
lost (``gc`` reclaims their chunks).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence

from blobtier.config import REDIS_BUS_OFFSET
from blobtier.errors import InvalidRequest, TierUnavailable
from blobtier.fsutil import private_dir, private_file

HOST = "127.0.0.1"
SLOTS = 16384
START_TIMEOUT_S = 20.0
NODE_TIMEOUT_MS = 5000  # region clusters: a master silent this long is failed over
# What the region's nodes call themselves in ps and /proc/PID/cmdline (a region's ``pid_alive``
# knows its processes by "blobtier" there; Redis rewrites its title, so argv would not do).
PROC_TITLE = "{title} {listen-addr} {server-mode} blobtier"


def redis_server() -> str:
    """The path of ``redis-server``. Raises ``InvalidRequest`` saying how to install it."""
    path = shutil.which("redis-server")
    if path is None:
        raise InvalidRequest("metadata.backend redis-cluster needs redis-server on PATH "
                             "(Debian/Ubuntu: apt-get install redis-server; `make test` installs it)")
    return path


def server_argv(server: str, port: int, data_dir: str, *, bus_port: int | None = None,
                cluster: bool = True, aof: bool = True, node_timeout_ms: int = NODE_TIMEOUT_MS,
                logfile: str = "", extra: Sequence[str] = ()) -> list[str]:
    """The command line of one node on 127.0.0.1:``port`` keeping its files in ``data_dir``.

    ``logfile`` "" logs to stdout (the region's ``logs/redis-N.log``). Always
    ``noeviction`` (an evicted record is a lost blob) and no RDB snapshots; ``aof``:
    ``appendonly yes`` + ``appendfsync always`` (see the module docstring)."""
    argv = [server, "--port", str(port), "--bind", HOST, "--dir", data_dir, "--daemonize", "no",
            "--save", "", "--logfile", logfile, "--maxmemory-policy", "noeviction",
            "--appendonly", "yes" if aof else "no", "--appendfsync", "always",
            "--proc-title-template", PROC_TITLE,
            "--repl-diskless-sync-delay", "0"]  # a replica syncs at once, not after 5 s
    if cluster:
        argv += ["--cluster-enabled", "yes",
                 "--cluster-port", str(bus_port if bus_port is not None else port + REDIS_BUS_OFFSET),
                 "--cluster-config-file", os.path.join(data_dir, "nodes.conf"),
                 "--cluster-node-timeout", str(node_timeout_ms)]
    return [*argv, *extra]


def ping(port: int, timeout_s: float = 0.5) -> bool:
    """Whether a Redis server answers PING on 127.0.0.1:``port`` (no client library needed)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout_s) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def client(address: str, timeout_s: float = 5.0):  # noqa: ANN201 - redis.Redis, an optional import
    """A ``redis.Redis`` of one node. Raises ``InvalidRequest`` naming the extra when the
    client is not installed."""
    try:
        import redis
    except ImportError:
        raise InvalidRequest("the Redis metadata backend needs the redis client: "
                             "pip install 'blobtier[redis]'") from None
    host, _, port = address.rpartition(":")
    return redis.Redis(host=host, port=int(port), socket_timeout=timeout_s)


def _command(address: str, *args: object):  # noqa: ANN202 - the command's reply
    c = client(address)
    try:
        return c.execute_command(*args)
    finally:
        c.close()


def cluster_info(address: str) -> dict[str, str]:
    """``CLUSTER INFO`` of the node at ``address``."""
    return _command(address, "CLUSTER INFO")


# -- forming a cluster -----------------------------------------------------------------
def join(addresses: Sequence[str], bus_ports: Sequence[int], masters: int,
         timeout_s: float = START_TIMEOUT_S) -> None:
    """Make fresh cluster nodes one cluster: meet, split the slots evenly over the first
    ``masters``, make the rest replicas (node ``masters + j`` of master ``j % masters``)."""
    first = addresses[0]
    for addr, bus in zip(addresses[1:], bus_ports[1:]):
        host, _, port = addr.rpartition(":")
        _command(first, "CLUSTER MEET", host, int(port), bus)
    ids = [_command(a, "CLUSTER MYID") for a in addresses]
    for i, addr in enumerate(addresses[:masters]):
        _command(addr, "CLUSTER ADDSLOTSRANGE", SLOTS * i // masters, SLOTS * (i + 1) // masters - 1)
    deadline = time.monotonic() + timeout_s
    for j, addr in enumerate(addresses[masters:]):
        while True:  # a node can only replicate a master it has heard of
            try:
                _command(addr, "CLUSTER REPLICATE", ids[j % masters])
                break
            except Exception:  # noqa: BLE001 - "Unknown node" until the gossip arrives
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def healthy(addresses: Sequence[str], masters: int) -> tuple[bool, list[str]]:
    """Whether every node reports ``cluster_state:ok`` with ``masters`` masters serving every
    slot; and, if not, what each that is not says."""
    import redis

    problems = []
    for addr in addresses:
        try:
            info = cluster_info(addr)
        except redis.RedisError as exc:
            problems.append(f"{addr}: {exc}")
            continue
        if not (info["cluster_state"] == "ok" and int(info["cluster_size"]) == masters
                and int(info["cluster_slots_ok"]) == SLOTS):
            problems.append(f"{addr}: cluster_state {info['cluster_state']}, {info['cluster_size']} "
                            f"masters, {info['cluster_slots_ok']}/{SLOTS} slots ok")
    return not problems, problems


def wait_healthy(addresses: Sequence[str], masters: int, timeout_s: float = START_TIMEOUT_S) -> None:
    """Until ``healthy``. Raises ``TierUnavailable`` with what the nodes say after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        ok, problems = healthy(addresses, masters)
        if ok:
            return
        if time.monotonic() > deadline:
            raise TierUnavailable(f"the Redis Cluster is not healthy after {timeout_s:.0f}s: "
                                  + "; ".join(problems))
        time.sleep(0.05)


def _fresh(address: str) -> bool:
    info = cluster_info(address)
    return int(info["cluster_known_nodes"]) == 1 and int(info["cluster_slots_assigned"]) == 0


def form(addresses: Sequence[str], masters: int, timeout_s: float = START_TIMEOUT_S) -> bool:
    """Make the running nodes at ``addresses`` a healthy cluster: join them if all are
    fresh, else wait for them to re-form from their ``nodes.conf``. Returns whether they
    were joined now. Raises ``InvalidRequest`` when only some are fresh (a node's data
    was removed: joining would not give its slots back), ``TierUnavailable`` when the
    cluster does not become healthy."""
    fresh = [_fresh(a) for a in addresses]
    if all(fresh):
        join(addresses, [int(a.rpartition(":")[2]) + REDIS_BUS_OFFSET for a in addresses], masters,
             timeout_s)
    elif any(fresh):
        new = ", ".join(a for a, f in zip(addresses, fresh) if f)
        raise InvalidRequest(f"Redis nodes {new} start empty while the others were one cluster: "
                             "their data (nodes.conf) is gone; restore it, or remove the region's "
                             "redis/ directory to start an empty cluster (its blobs are then lost)")
    wait_healthy(addresses, masters, timeout_s)
    return all(fresh)


def reset_unused(addresses: Sequence[str]) -> None:
    """Forget a join that never finished (an ``up`` stopped while it joined the nodes): when
    no node holds a key and not all are fresh, ``CLUSTER RESET HARD`` each, so ``form``
    joins them anew. Nodes that hold data are left alone."""
    if all(_fresh(a) for a in addresses) or any(_command(a, "DBSIZE") for a in addresses):
        return
    for a in addresses:
        _command(a, "CLUSTER RESET", "HARD")


def _replicas_online(address: str) -> int | None:
    """How many replicas of the master at ``address`` are in sync; None if not a master."""
    info = _command(address, "INFO", "replication")
    if info.get("role") != "master":
        return None
    return sum(1 for k, v in info.items()
               if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online")


def wait_replicas(addresses: Sequence[str], replicas: int, timeout_s: float = START_TIMEOUT_S) -> None:
    """Until every master among ``addresses`` has ``replicas`` replicas in sync (a commit
    that WAITs for one needs it). Raises ``TierUnavailable`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while replicas:
        online = {a: _replicas_online(a) for a in addresses}
        short = [a for a, n in online.items() if n is not None and n < replicas]
        if not short:
            return
        if time.monotonic() > deadline:
            raise TierUnavailable(f"Redis masters {', '.join(short)} have fewer than {replicas} replicas "
                                  f"in sync after {timeout_s:.0f}s")
        time.sleep(0.05)


# -- the layout a region's data was made with --------------------------------------------
def layout_path(data_root: str) -> str:
    return os.path.join(data_root, "cluster.json")


def check_layout(data_root: str, ports: Sequence[int], replicas: int) -> None:
    """Before starting the nodes of ``data_root``: the config must put them where they ran.
    Raises ``InvalidRequest`` naming the fields that moved them."""
    try:
        with open(layout_path(data_root)) as f:
            was = json.load(f)
    except FileNotFoundError:
        return
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"{layout_path(data_root)} is unreadable ({exc}); it records the "
                             "layout of the region's Redis Cluster") from None
    if was.get("replicas") != replicas:
        raise InvalidRequest(f"config field metadata.replicas is {replicas}, but the region's Redis "
                             f"Cluster under {data_root} was made with {was.get('replicas')}; set it "
                             "back (changing it would need a migration)")
    if was.get("ports") != list(ports):
        raise InvalidRequest(f"the region's Redis Cluster under {data_root} runs on ports "
                             f"{was.get('ports')}, but the config now gives its nodes {list(ports)}; "
                             "set services.base_port / services.redis_ports back (its nodes.conf "
                             "names those ports)")


def write_layout(data_root: str, ports: Sequence[int], replicas: int) -> None:
    private_dir(data_root)
    tmp = layout_path(data_root) + ".tmp"
    with private_file(tmp, "w") as f:
        json.dump({"masters": len(ports) // (1 + replicas), "replicas": replicas, "ports": list(ports)}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, layout_path(data_root))


# -- throwaway servers (tests, benchmarks) ----------------------------------------------
def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (held open together so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class RedisNode:
    """One ``redis-server`` process on a free loopback port, its files and log under ``root``,
    owned by this process (``stop()`` it).

    Args:
        root: its data directory (created).
        cluster: a cluster node (its bus on another free port).
        aof: ``appendonly yes`` + ``appendfsync always``.
        extra: more redis-server arguments.
    """

    def __init__(self, root: str, *, cluster: bool = False, aof: bool = False,
                 extra: Sequence[str] = ()) -> None:
        self.root = root
        os.makedirs(root, exist_ok=True)
        self.port, self.bus_port = free_ports(2)
        # Fast failover for fault tests: no loopback node is ever slow.
        self.args = server_argv(redis_server(), self.port, root, bus_port=self.bus_port, cluster=cluster,
                                aof=aof, node_timeout_ms=1000, logfile=os.path.join(root, "redis.log"),
                                extra=["--protected-mode", "no",
                                       *(["--cluster-replica-validity-factor", "0"] if cluster else []),
                                       *extra])
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        """(Re)start the server on its port, with its data dir (AOF, nodes.conf) as left."""
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ping(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on {self.address} exited: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on {self.address} did not start: {self.log_tail()}")
            time.sleep(0.02)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"redis://{self.address}"

    def client(self):  # noqa: ANN201 - redis.Redis
        return client(self.address)

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
    """A Redis Cluster of ``masters`` masters, each with ``replicas`` replicas, on free
    loopback ports under ``root``, owned by this process (``close()`` it)."""

    def __init__(self, root: str, masters: int = 3, replicas: int = 0, *, aof: bool = False) -> None:
        self.nodes: list[RedisNode] = []
        self.n_masters = masters
        try:
            for i in range(masters * (1 + replicas)):
                self.nodes.append(RedisNode(os.path.join(root, f"node{i}"), cluster=True, aof=aof))
            join(self.addresses, [n.bus_port for n in self.nodes], masters)
            wait_healthy(self.addresses, masters)
        except BaseException:
            self.close()
            raise

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
        """Until every live node serves the cluster (also: after a failover)."""
        wait_healthy([n.address for n in self.alive()], masters, timeout_s)

    def close(self) -> None:
        for n in self.nodes:
            n.stop()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
