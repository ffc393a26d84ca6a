"""Channels that open lazily, once per process.

A gRPC channel must not cross ``fork``: a DataLoader worker that uses its parent's channel
can hang or misbehave (grpc/grpc #13873, #15334). ``LazyChannel`` opens on first use; in a
forked child it forgets the parent's channel before any code of the child runs
(``blobtier.forks``), never closing it, and the child's first use opens its own.
"""

from __future__ import annotations

import os
import threading

import grpc

from blobtier import forks
from blobtier.rpc.auth import with_token
from blobtier.rpc.server import MAX_MESSAGE_BYTES
from blobtier.rpc.tls import Tls

_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # A restarted server should be reachable again within a fraction of a second, not
    # after gRPC's default reconnect backoff (1 s growing to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    # Not a backoff: gRPC's connect timeout (TCP and the server's HTTP/2 SETTINGS). Its
    # default, 20 s, so a server slow to answer on a loaded host is waited for (each call
    # still ends at its own deadline); at 100 ms such calls failed UNAVAILABLE at once.
    ("grpc.min_reconnect_backoff_ms", 20_000),
]


class LazyChannel:
    """A channel to ``addr`` (``host:port``), opened on first ``get()`` in each process."""

    def __init__(self, addr: str, tls: Tls | None = None, token: str | None = None) -> None:
        self.addr = addr
        self.tls = tls
        self.token = token
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._pid = os.getpid()
        forks.register(self)

    def get(self) -> grpc.Channel:
        channel = self._channel
        if channel is not None and self._pid == os.getpid():
            return channel
        with self._lock:
            if self._channel is None or self._pid != os.getpid():
                self._pid = os.getpid()
                raw = (grpc.secure_channel(self.addr, self.tls.channel_credentials(), _OPTIONS)
                       if self.tls else grpc.insecure_channel(self.addr, _OPTIONS))
                self._channel = with_token(raw, self.token)
            return self._channel

    def close(self) -> None:
        with self._lock:
            channel, self._channel = self._channel, None
        if channel is not None and self._pid == os.getpid():
            channel.close()

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # a parent thread may have held it across fork
        forks.keep_inherited(self._channel)  # the parent's: never used, closed or collected here
        self._channel = None
