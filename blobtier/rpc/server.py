"""``serve``: start a gRPC server for some servicers; loopback and bounded by default.
``Service``: the lifecycle of a server object (start, metrics, health, stop, clean-up)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any, Self

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from blobtier.errors import InvalidRequest, TierUnavailable
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
    """The lifecycle every blobtier server shares, written once.

    A server (chunk server, flash node, L2 peer server, metadata server) subclasses it:
    it opens what its servicers use, registers how to close each in an ``ExitStack``, and
    calls ``_start``, which starts the Prometheus endpoint (if asked), then the gRPC
    server: last, so that no call is answered before all it needs runs. A failure on the
    way unwinds what already started, the resources handed over included: a failed start
    leaves no port bound and nothing open, with no catch-all block in the subclass::

        with ExitStack() as owned:
            self.store = Store(root)
            owned.callback(self.store.close)
            self._start(servicers, addr, tls, services=SERVICES, owned=owned.pop_all())

    ``stop()`` undoes it all in reverse, once however often it is called; a ``Service``
    is a context manager too.
    """

    server: grpc.Server
    port: int
    host: str
    metrics_port: int | None = None
    health: health.HealthServicer | None = None

    def _start(self, servicers: Sequence[Servicer], addr: str = "127.0.0.1:0", tls: Tls | None = None,
               *, workers: int = 32, auth: TokenTable | None = None, metrics_port: int | None = None,
               registry: Any = None, services: Sequence[str] | None = None, serving: bool = True,
               owned: ExitStack | None = None) -> None:
        """Start serving.

        Args:
            servicers: ``(add_XServicer_to_server, servicer)`` pairs.
            addr, tls, auth: as ``serve``; ``workers``: its ``max_workers``.
            metrics_port: serve ``registry`` on 127.0.0.1:PORT (0 picks one, then
                ``.metrics_port``; None: no endpoint).
            registry: the ``CollectorRegistry`` the endpoint serves.
            services: serve the standard health service for these names and '' (None:
                the caller put its own in ``servicers``); ``serving`` is its first status.
            owned: closed after the server stopped, or at once if the start fails.

        Raises:
            TierUnavailable: ``addr`` cannot be listened on.
            OSError: ``metrics_port`` cannot be listened on.
        """
        self.host = addr.rsplit(":", 1)[0]
        self._stop_lock = threading.Lock()
        self._stopped = False
        self._grace_s: float | None = 0.0  # a failed start waits for no call
        if services is not None:
            self.health, entry = health_servicer(services)
            self._services = tuple(services)
            servicers = [*servicers, entry]
            self.set_serving(serving)
        with ExitStack() as stack:
            if owned is not None:
                stack.push(owned)  # first in: closed last, once nothing uses it
            if metrics_port is not None:
                http = serve_metrics(metrics_port, registry)
                stack.callback(stop_metrics, http)
                self.metrics_port = http.server_port
            self.server, self.port = serve(servicers, addr, tls, max_workers=workers, auth=auth)
            stack.callback(self._stop_server)
            self._running = stack.pop_all()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def set_serving(self, serving: bool) -> None:
        """What the health service (``services`` of ``_start``) answers, for the whole
        server and each of its services: SERVING or NOT_SERVING."""
        if self.health is None:
            raise InvalidRequest(f"{type(self).__name__} serves no health service of its own")
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", *self._services):
            self.health.set(name, status)

    def wait(self) -> None:
        """Block until the gRPC server stops (``stop``, or its own ``stop``)."""
        self.server.wait_for_termination()

    def stop(self, grace_s: float | None = None) -> None:
        """Stop serving (in-flight calls get ``grace_s`` seconds; None: as long as they
        take), free the metrics port, then close what was served. Later calls return at
        once; a call during another returns when that one is done."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped, self._grace_s = True, grace_s
            try:
                self._running.close()
            finally:
                self._close()

    def _stop_server(self) -> None:
        self.server.stop(self._grace_s).wait()

    def _close(self) -> None:
        """Close what the server served, after it stopped; for a subclass that does not
        hand it over as ``owned``. Not called when the start fails."""

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
