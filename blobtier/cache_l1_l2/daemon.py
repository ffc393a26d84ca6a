"""``blobtier daemon``: the host cache daemon on every GPU host.

It owns the host's L1: one shared-memory arena with a hard memory cap, its index, its
eviction policy and its pins (``owner.py``), served to every trainer process and
DataLoader worker on the host over a Unix socket (``wire.py``). Clients find it at
``cache.daemon`` in the region config, ``$BLOBTIER_CACHE_DAEMON``, or the well-known
socket ``/tmp/blobtier-<uid>/daemon.sock``; without one, each client owns an arena of
its own. If the daemon dies, clients read on from the tiers below and reattach when it
is back. The arena is a memfd: nothing is left in /dev/shm, even after SIGKILL.

With ``listen`` (``--listen host:port``) the daemon also serves its arena to the other
daemons' clients as their L2, and tells its own clients the cluster (``--peers``) so
they ask a chunk's home daemon before L3 (``peers.py``).

The daemon never imports torch.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from blobtier.cache_l1_l2.l1 import socket_dir
from blobtier.cache_l1_l2.owner import ArenaOwner
from blobtier.cache_l1_l2.trust import check_socket_dir
from blobtier.cache_l1_l2.wire import OwnerClient, OwnerServer
from blobtier.chunks import ChunkSource
from blobtier.errors import Forbidden, InvalidRequest, TierUnavailable, UntrustedPath
from blobtier.metrics import serve_metrics, stop_metrics

if TYPE_CHECKING:  # grpc loads only in a daemon that serves peers
    from blobtier.cache_l1_l2.peers import PeerServer
    from blobtier.grants import KeyRing
    from blobtier.rpc.auth import TokenTable
    from blobtier.rpc.tls import Tls

log = logging.getLogger(__name__)


def default_socket() -> str:
    return os.path.join(socket_dir(), "daemon.sock")


def find_daemon(setting: str) -> str | None:
    """The socket of a running daemon per the ``cache.daemon`` setting, or None.

    ``auto``: the well-known socket, if a daemon answers there; ``off``: never; else a
    socket path, used if a daemon answers there.
    """
    info = daemon_info(setting)
    return info["socket"] if info is not None else None


def daemon_info(setting: str) -> dict | None:
    """What the daemon per ``setting`` says of itself (its INFO, plus ``socket``), or None
    when none answers. ``peer`` and ``peers`` name its L2 cluster when it has one.

    Raises ``UntrustedPath`` for a socket in a directory another user could control, or
    served by another user's process, and ``Forbidden`` when the daemon will not serve
    this process's user (``trust.py``); with ``auto`` these are logged and mean no daemon,
    so another user cannot stop this one's clients by squatting the well-known directory.
    """
    if setting == "off":
        return None
    if setting != "auto":
        return _ask(setting)
    try:
        return _ask(default_socket())
    except (UntrustedPath, Forbidden) as exc:
        log.warning("no host daemon (cache.daemon = auto): %s", exc)
        return None


def _ask(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    probe = OwnerClient(path, timeout_s=2.0)
    try:
        info, fd = probe.info()
        os.close(fd)
        return {**info, "socket": path}
    except TierUnavailable:
        return None
    finally:
        probe.close()


class ArenaCollector(Collector):
    """The arena's counters as ``blobtier_l1_*`` series; what it served peers as
    ``blobtier_l2_served_*``."""

    def __init__(self, owner: ArenaOwner, peers: PeerServer | None = None) -> None:
        self.owner = owner
        self.peers = peers

    def collect(self) -> Iterator:
        stats = self.owner.stats()
        for name in ("hits", "misses", "hit_bytes", "inserts", "evictions", "rejected", "corrupt",
                     "refused_commits"):
            fam = CounterMetricFamily(f"blobtier_l1_{name}", f"L1 arena {name}")
            fam.add_metric([], stats.get(name, 0))
            yield fam
        for key, name, what in (("used_bytes", "used_bytes", "bytes of slots in use"),
                                ("capacity", "capacity_bytes", "arena bytes"),
                                ("chunks", "chunks", "chunks indexed"),
                                ("pinned", "pinned", "slots pinned by readers")):
            fam = GaugeMetricFamily(f"blobtier_l1_{name}", f"L1 arena {what}")
            fam.add_metric([], stats.get(key, 0))
            yield fam
        if self.peers is not None:
            served = self.peers.cache.counters
            for name in ("hits", "misses", "bytes", "puts_admitted", "puts_rejected"):
                fam = CounterMetricFamily(f"blobtier_l2_served_{name}", f"L2 requests from peers: {name}")
                fam.add_metric([], served.get(name, 0))
                yield fam
            fill = self.peers.fill
            for name, what in (("filled", "chunks homed here read from below for peers"),
                               ("failed", "chunks homed here that could not be read from below"),
                               ("coalesced", "requests that waited for a fill already in flight")):
                fam = CounterMetricFamily(f"blobtier_l2_home_{name}", f"L2 home fills: {what}")
                fam.add_metric([], fill.counters.get(name, 0) if fill is not None else 0)
                yield fam


class HostDaemon:
    """Args:
        memory: the arena's size in bytes (the host L1's hard cap).
        policy: eviction policy name (the default of every namespace).
        socket_path: where local clients connect (default: the well-known socket).
        metrics_port: serve Prometheus metrics on 127.0.0.1:PORT (0 picks one).
        listen: serve the arena to L2 peers at ``host:port`` (None: no L2).
        peers: the cluster's daemons (``host:port`` as each listens), for clients' L2.
        tls: serve peers with TLS.
        auth: the tokens peers must present (None: none needed).
        namespace_policies: ``{namespace: policy name}`` for namespaces that evict by
            another policy than ``policy`` (``owner.py``).
        fill_source: with ``listen``, where the chunks homed here that peers miss are
            read from (``peers.HomeFill``); None: a peer's miss is a MISS. Closed by
            ``stop``.
        host_id: the simulated host this daemon is (``blobtier up`` with
            ``services.hosts``), told to clients in its INFO.
        grants: the region key ring: peers are served chunks only under its grants
            (``rpc/cache_service.py``; None: no grants needed).
    """

    def __init__(self, memory: int, policy: str = "sieve", socket_path: str | None = None,
                 metrics_port: int | None = None, listen: str | None = None,
                 peers: tuple[str, ...] = (), tls: Tls | None = None, auth: TokenTable | None = None,
                 namespace_policies: Mapping[str, str] | None = None,
                 fill_source: ChunkSource | None = None, host_id: str = "",
                 grants: KeyRing | None = None) -> None:
        self.socket_path = socket_path or default_socket()
        check_socket_dir(os.path.dirname(self.socket_path) or ".")  # a clear refusal, first
        if listen is None and peers:
            raise InvalidRequest("a daemon with peers must --listen for them")
        if find_daemon(self.socket_path):
            raise TierUnavailable(f"a daemon already serves {self.socket_path}")
        # Each part is undone in reverse when a later one fails to start (a peer port in
        # use...) and by stop(): no socket file, arena or port outlives the daemon.
        with ExitStack() as running:
            self.owner = ArenaOwner(memory, policy, namespace_policies=namespace_policies)
            running.callback(self.owner.close)
            self.server = OwnerServer(self.owner, self.socket_path)
            running.callback(self.server.close)
            self.peer_server: PeerServer | None = None
            if listen is not None:
                from blobtier.cache_l1_l2.peers import PeerServer, cluster

                self.peer_server = PeerServer(self.owner, listen, tls, auth=auth, source=fill_source,
                                              grants=grants)
                running.callback(self.peer_server.stop, 1)
                self.server.info = {"peer": self.peer_server.address,
                                    "peers": cluster(self.peer_server.address, peers),
                                    "fills": fill_source is not None}
            elif fill_source is not None:
                raise InvalidRequest("a daemon that fills its peers' misses must --listen for them")
            if host_id:
                self.server.info = {**(self.server.info or {}), "host": host_id}
            self.metrics_port = None
            if metrics_port is not None:
                registry = CollectorRegistry()
                registry.register(ArenaCollector(self.owner, self.peer_server))
                http = serve_metrics(metrics_port, registry)
                running.callback(stop_metrics, http)
                self.metrics_port = http.server_port
            self._running = running.pop_all()
        self._stopped = threading.Event()

    def wait(self) -> None:
        self._stopped.wait()

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._running.close()  # metrics, peers, the socket, then the arena
        self._stopped.set()

    def serve_until_signalled(self, ready: Callable[[], None] | None = None) -> None:
        """Serve until SIGTERM or SIGINT, then stop. ``ready`` runs once the signals are
        handled: a supervisor told "ready" before that could kill a daemon that never
        cleans up (its socket file left behind)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stopped.set())
        if ready is not None:
            ready()
        try:
            self._stopped.wait()
        finally:
            self._stopped.clear()
            self.stop()
