"""Is a service answering? The standard gRPC health service, the daemon's socket, or a
Redis node's PING (and, in ``status``, its view of the cluster)."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from blobtier.rpc.tls import Tls
from blobtier.runstate import ServiceRecord, pid_alive

SERVING, NOT_SERVING, UNREACHABLE, DEAD = "SERVING", "NOT_SERVING", "unreachable", "dead"


def client_tls(files: dict[str, str] | None) -> Tls | None:
    """The TLS of a region's clients, from its state file's ``tls`` (None: plaintext)."""
    if not files:
        return None
    return Tls(files.get("cert") or None, files.get("key") or None, files["ca"])


def grpc_health(address: str, timeout_s: float = 1.0, tls: Tls | None = None) -> str:
    """``SERVING`` / ``NOT_SERVING`` as the server says, or ``unreachable``."""
    channel = (grpc.secure_channel(address, tls.channel_credentials()) if tls
               else grpc.insecure_channel(address))
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""),
                                                           timeout=timeout_s)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.RpcError:
        return UNREACHABLE
    finally:
        channel.close()


def daemon_health(socket_path: str, pid: int) -> str:
    """``SERVING`` if the daemon answering on ``socket_path`` is process ``pid`` (another
    daemon may hold the socket: then ours is not the one serving)."""
    from blobtier.cache_l1_l2.daemon import daemon_info

    info = daemon_info(socket_path)
    if info is None:
        return UNREACHABLE
    return SERVING if info.get("pid") == pid else f"pid {info.get('pid')} holds its socket"


def redis_health(address: str, timeout_s: float = 1.0) -> str:
    """``SERVING`` if the node answers and sees its cluster serving every slot; else what
    it says of the cluster (``cluster fail``), or ``unreachable``."""
    from blobtier.region import redis

    if not redis.ping(int(address.rpartition(":")[2]), timeout_s):
        return UNREACHABLE
    try:
        state = redis.cluster_info(address)["cluster_state"]
    except Exception:  # noqa: BLE001 - a node that cannot say is not serving
        return UNREACHABLE
    return SERVING if state == "ok" else f"cluster {state}"


def health(kind: str, pid: int, address: str | None, socket_path: str | None,
           timeout_s: float = 1.0, tls: Tls | None = None) -> str:
    """Whether a starting service answers (a Redis node: PING; it joins its cluster after)."""
    if kind == "daemon":
        return daemon_health(socket_path or "", pid)
    if kind == "redis":
        from blobtier.region import redis

        return SERVING if redis.ping(int((address or ":0").rpartition(":")[2]), timeout_s) else UNREACHABLE
    return grpc_health(address or "", timeout_s, tls)


def service_health(record: ServiceRecord, tls: Tls | None = None) -> str:
    """``tls``: the region's client TLS (``client_tls``), for services that serve it."""
    if not pid_alive(record.pid):
        return DEAD
    if record.kind == "redis":
        return redis_health(record.address or "")
    return health(record.kind, record.pid, record.address, record.socket, tls=tls)
