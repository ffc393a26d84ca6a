"""Is a service answering? The standard gRPC health service, or the daemon's socket."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from blobtier.region.state import ServiceRecord, pid_alive

SERVING, NOT_SERVING, UNREACHABLE, DEAD = "SERVING", "NOT_SERVING", "unreachable", "dead"


def grpc_health(address: str, timeout_s: float = 1.0) -> str:
    """``SERVING`` / ``NOT_SERVING`` as the server says, or ``unreachable``."""
    channel = grpc.insecure_channel(address)
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


def health(kind: str, pid: int, address: str | None, socket_path: str | None,
           timeout_s: float = 1.0) -> str:
    if kind == "daemon":
        return daemon_health(socket_path or "", pid)
    return grpc_health(address or "", timeout_s)


def service_health(record: ServiceRecord) -> str:
    if not pid_alive(record.pid):
        return DEAD
    return health(record.kind, record.pid, record.address, record.socket)
