"""``serve``: start a gRPC server for some servicers; loopback and bounded by default."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Self

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from blobtier.errors import TierUnavailable
from blobtier.metrics import serve_metrics, stop_metrics
from blobtier.rpc.auth import TokenAuth, TokenTable
from blobtier.rpc.tls import Tls

MAX_PIECE_BYTES = 1 << 20
"""Bytes of chunk data in one message, either way."""
MAX_MESSAGE_BYTES = 4 << 20
"""Transport limit on one message: a data piece plus headers fits with room to spare.
Larger messages are refused by gRPC itself (RESOURCE_EXHAUSTED) before any handler runs."""

Servicer = tuple[Callable[[Any, grpc.Server], None], Any]
"""(generated ``add_XServicer_to_server``, servicer instance)."""


def serve(servicers: Sequence[Servicer], addr: str = "127.0.0.1:0", tls: Tls | None = None, *,
          max_workers: int = 32, max_message_bytes: int = MAX_MESSAGE_BYTES,
          auth: TokenTable | None = None) -> tuple[grpc.Server, int]:
    """Start a server on ``addr`` (port 0 picks a free one); return it and its port.

    Binds loopback unless told otherwise: exposing a server is a deliberate choice. With
    ``auth``, every call but health checks needs a token with its right (``auth.py``).
    """
    options = [("grpc.max_receive_message_length", max_message_bytes),
               ("grpc.max_send_message_length", max_message_bytes),
               # gRPC sets SO_REUSEPORT by default, which lets a second server bind a port
               # that is in use and silently take half its connections.
               ("grpc.so_reuseport", 0)]
    server = grpc.server(ThreadPoolExecutor(max_workers, thread_name_prefix="blobtier-rpc"),
                         options=options, interceptors=[TokenAuth(auth)] if auth is not None else None)
    for add, servicer in servicers:
        add(servicer, server)
    try:
        port = (server.add_secure_port(addr, tls.server_credentials()) if tls
                else server.add_insecure_port(addr))
    except RuntimeError as exc:  # newer grpcio raises where older ones returned 0
        raise TierUnavailable(f"cannot listen on {addr}: {exc}") from None
    if port == 0:
        raise TierUnavailable(f"cannot listen on {addr}")
    server.start()
    return server, port


class Service:
    """The lifecycle every blobtier server object shares: ``_start`` serves its servicers
    (``serve``) and, optionally, its Prometheus series on ``127.0.0.1:metrics_port``;
    ``stop`` ends both, then closes what it served (``_close``)."""

    server: grpc.Server
    port: int
    host: str
    metrics_port: int | None = None
    _http: Any = None

    def _start(self, servicers: Sequence[Servicer], addr: str, tls: Tls | None, *, workers: int,
               auth: TokenTable | None, metrics_port: int | None, registry: Any) -> None:
        """Serve (``serve``'s arguments); on failure nothing is left running, and the
        caller closes what it opened."""
        self.server, self.port = serve(servicers, addr, tls, max_workers=workers, auth=auth)
        try:
            if metrics_port is not None:
                self._http = serve_metrics(metrics_port, registry)
                self.metrics_port = self._http.server_port
        except BaseException:
            self.server.stop(0)
            raise
        self.host = addr.rsplit(":", 1)[0]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def wait(self) -> None:
        self.server.wait_for_termination()

    def stop(self, grace_s: float | None = None) -> None:
        """Stop serving (in-flight calls get ``grace_s`` to finish), free the metrics port,
        then close what it served."""
        self.server.stop(grace_s).wait()
        if self._http is not None:
            stop_metrics(self._http)
            self._http = None
        self._close()

    def _close(self) -> None:
        """Close what the server served (its store, its cache)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def health_servicer(services: Sequence[str]) -> tuple[health.HealthServicer, Servicer]:
    """A standard ``grpc.health.v1`` servicer reporting SERVING for '' and ``services``."""
    servicer = health.HealthServicer()
    for name in ("", *services):
        servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return servicer, (health_pb2_grpc.add_HealthServicer_to_server, servicer)
