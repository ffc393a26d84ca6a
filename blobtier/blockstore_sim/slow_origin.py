"""``slowfile://``: local files behind a fixed latency per request, an origin object store
as the read path sees one (benchmarks and tests; ``register()`` makes fsspec know it).

It is a synchronous fsspec filesystem, as most are (its ``cat_ranges`` reads one range
after the other), so it shows whether a reader keeps many requests in flight. It counts
what it serves: ``requests`` and ``max_in_flight`` per instance, and, across processes,
one byte appended per request to ``counter_path`` when given (``requests_at``).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

PROTOCOL = "slowfile"


class SlowFileSystem(LocalFileSystem):
    """Local files; every opening for reading (``open``, ``cat_file``, each range of
    ``cat_ranges``) first waits ``latency_s`` seconds.

    Args:
        latency_s: the wait per request.
        counter_path: a file that gets one byte per request (any process), or "".
    """

    protocol = PROTOCOL
    cachable = False  # each storage_options set gets its own counters

    def __init__(self, latency_s: float = 0.002, counter_path: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.latency_s = latency_s
        self.counter_path = counter_path
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._count_lock = threading.Lock()

    def _request(self) -> None:
        with self._count_lock:
            self.requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if self.counter_path:
            fd = os.open(self.counter_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, b".")
            finally:
                os.close(fd)
        time.sleep(self.latency_s)

    def _done(self) -> None:
        with self._count_lock:
            self.in_flight -= 1

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if "r" in mode:  # every read (cat_file and cat_ranges open the file) is a request
            self._request()
            self._done()
        return super()._open(path, mode=mode, **kwargs)

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        if path.startswith(f"{PROTOCOL}://"):
            path = path[len(PROTOCOL) + 3:]
        return LocalFileSystem._strip_protocol(path)


def register() -> None:
    """Make ``slowfile://`` known to fsspec in this process (and its forked children)."""
    fsspec.register_implementation(PROTOCOL, SlowFileSystem, clobber=True)


def requests_at(counter_path: str) -> int:
    """Requests counted in ``counter_path`` by every process (0 if none yet)."""
    try:
        return os.path.getsize(counter_path)
    except FileNotFoundError:
        return 0
