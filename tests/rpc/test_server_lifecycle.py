"""The server lifecycle (``rpc/server.Service``), over a toy service and each real server:
a failed start leaves no port bound and nothing open, ``stop`` undoes everything once, in
reverse, and a server is a context manager."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from blobtier.blockstore_sim.chunk_server import ChunkServer
from blobtier.cache_l1_l2.daemon import HostDaemon
from blobtier.cache_l1_l2.owner import ArenaOwner
from blobtier.cache_l1_l2.peers import PeerServer
from blobtier.chunks import ChunkKey
from blobtier.config import FlashNodeConfig
from blobtier.errors import TierUnavailable
from blobtier.flash_l3.service import FlashNode
from blobtier.metadata.schema import new_blob_id
from blobtier.rpc.server import Service
from tests.flash_l3.helpers import MemorySource
from tests.integration.region_support import port_free

MiB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def taken_port() -> Iterator[int]:
    """A port another socket listens on while the block runs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def open_under(root: str) -> list[str]:
    """Files under ``root`` this process holds open."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the listing's own descriptor, closed by now
        if target.startswith(root + os.sep):
            found.append(target)
    return found


def health_of(address: str, service: str = "") -> str:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


class Toy(Service):
    """A server that serves only health, owns one resource and has a ``_close`` hook."""

    def __init__(self, log: list[str], *, addr: str = "127.0.0.1:0", metrics_port: int | None = None) -> None:
        self.log = log
        with ExitStack() as owned:
            owned.callback(log.append, "owned closed")
            self._start([], addr, metrics_port=metrics_port, registry=CollectorRegistry(),
                        services=("toy.v1.Toy",), owned=owned.pop_all())

    def _close(self) -> None:
        self.log.append("_close")


# -- the helper -------------------------------------------------------------------------

def test_a_port_in_use_fails_the_start_and_the_metrics_port_is_freed():
    log: list[str] = []
    metrics = free_port()
    with taken_port() as port:
        with pytest.raises(TierUnavailable, match=str(port)):
            Toy(log, addr=f"127.0.0.1:{port}", metrics_port=metrics)
    assert port_free(metrics)  # the endpoint started first, and was stopped
    assert log == ["owned closed"]  # the hook is for a started server only


def test_a_metrics_port_in_use_fails_the_start_before_anything_serves():
    log: list[str] = []
    port = free_port()
    with taken_port() as metrics:
        with pytest.raises(OSError):
            Toy(log, addr=f"127.0.0.1:{port}", metrics_port=metrics)
    assert port_free(port)
    assert log == ["owned closed"]


def test_the_context_manager_serves_then_stops_everything_once():
    log: list[str] = []
    with Toy(log, metrics_port=0) as toy:
        assert health_of(toy.address) == "SERVING" and health_of(toy.address, "toy.v1.Toy") == "SERVING"
        port, metrics = toy.port, toy.metrics_port
        assert not port_free(port) and not port_free(metrics) and log == []
    assert log == ["owned closed", "_close"]
    assert port_free(port) and port_free(metrics)
    toy.stop()
    toy.stop(0)
    assert log == ["owned closed", "_close"]


def test_stop_from_two_threads_closes_once_and_both_return_stopped():
    log: list[str] = []
    toy = Toy(log)
    threads = [threading.Thread(target=toy.stop) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert log == ["owned closed", "_close"]
    assert port_free(toy.port)


def test_set_serving_answers_for_the_server_and_each_service():
    with Toy([]) as toy:
        toy.set_serving(False)
        assert health_of(toy.address) == "NOT_SERVING" == health_of(toy.address, "toy.v1.Toy")
        toy.set_serving(True)
        assert health_of(toy.address) == "SERVING"


# -- every server -----------------------------------------------------------------------

def chunk_server(root: str, port: int, metrics: int | None) -> Service:
    return ChunkServer(root, addr=f"127.0.0.1:{port}", metrics_port=metrics)


def flash_node(root: str, port: int, metrics: int | None) -> Service:
    config = FlashNodeConfig(root, 4 * MiB, region_bytes=MiB, addr=f"127.0.0.1:{port}", metrics_port=metrics)
    return FlashNode(config, MemorySource())


SERVERS: dict[str, Callable[[str, int, int | None], Service]] = {
    "chunk server": chunk_server, "flash node": flash_node}


@pytest.mark.parametrize("taken", ["grpc", "metrics"])
@pytest.mark.parametrize("make", SERVERS.values(), ids=SERVERS.keys())
def test_a_server_that_fails_to_start_leaves_no_port_bound_and_nothing_open(tmp_path, make, taken):
    root, free = str(tmp_path / "disk"), free_port()
    with taken_port() as busy:
        port, metrics = (busy, free) if taken == "grpc" else (free, busy)
        with pytest.raises(TierUnavailable if taken == "grpc" else OSError):
            make(root, port, metrics)
    assert port_free(free)
    assert open_under(root) == []
    with make(root, port, metrics) as server:  # the same start works once the port is free
        assert health_of(server.address) == "SERVING"


@pytest.mark.parametrize("make", SERVERS.values(), ids=SERVERS.keys())
def test_a_server_stops_once_however_often_it_is_told(tmp_path, make):
    root = str(tmp_path / "disk")
    server = make(root, 0, 0)
    ports = (server.port, server.metrics_port)
    with server:
        if isinstance(server, FlashNode):  # its region files open on the first write
            server.cache.put(ChunkKey(new_blob_id(), 1, 0), b"x" * 4096)
        assert open_under(root) != []
    server.stop()
    server.stop(0)
    assert open_under(root) == [] and all(port_free(p) for p in ports)


def test_a_peer_server_that_cannot_listen_ends_its_session_on_the_arena():
    owner = ArenaOwner(4 * MiB, "sieve")
    try:
        with taken_port() as port:
            with pytest.raises(TierUnavailable):
                PeerServer(owner, f"127.0.0.1:{port}")
        # Its L1 session was ended: one opened now is the only one the arena has.
        session = owner.open_session()
        assert list(owner._session_pins) == [session]
        with PeerServer(owner, "127.0.0.1:0") as peers:
            assert health_of(peers.address, "blobtier.flash.v1.CacheService") == "SERVING"
    finally:
        owner.close()


def test_a_daemon_that_cannot_listen_for_peers_leaves_no_socket(tmp_path):
    # A socket path short enough for sun_path, in a directory of ours.
    sock = os.path.join(str(tmp_path), "d.sock")
    if len(sock) > 100:
        pytest.skip("the temp dir is too deep for a Unix socket path")
    with taken_port() as port:
        with pytest.raises(TierUnavailable):
            HostDaemon(4 * MiB, socket_path=sock, listen=f"127.0.0.1:{port}", metrics_port=free_port())
    assert not os.path.exists(sock)  # the socket was closed and removed, the arena freed
    daemon = HostDaemon(4 * MiB, socket_path=sock)  # so a daemon starts there again
    daemon.stop()
    assert not os.path.exists(sock)
