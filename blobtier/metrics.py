"""Metrics: per-tier counters shared by a process and its forked DataLoader workers.

``TierStats`` keeps int64 counters in shared memory (``multiprocessing.RawArray``) so that
the workers a DataLoader forks add to the counters their parent reads: the demo and the
data-stall report see every process's hits, not one worker's. ``TierStatsCollector``
exposes them through prometheus-client's ``Collector`` protocol; register it on whichever
registry serves your metrics endpoint.
"""

from __future__ import annotations

import multiprocessing
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from blobtier import forks

FIELDS = ("hits", "misses", "bytes", "errors", "corrupt")
"""hits/misses: chunk lookups; bytes: bytes served by the tier; errors: the tier failed and
was skipped; corrupt: chunks that failed their checksum at that tier."""
TIERS = ("l1", "l2", "l3", "origin")


class TierStats:
    """Counters per (tier, field), safe across threads and forked processes."""

    def __init__(self, tiers: Sequence[str] = TIERS) -> None:
        self.tiers = tuple(tiers)
        self._row = {t: i * len(FIELDS) for i, t in enumerate(self.tiers)}
        self._values = multiprocessing.RawArray("q", len(self.tiers) * len(FIELDS))
        self._lock = multiprocessing.Lock()

    def add(self, tier: str, hits: int = 0, misses: int = 0, nbytes: int = 0, errors: int = 0,
            corrupt: int = 0) -> None:
        base = self._row[tier]
        v = self._values
        with self._lock:
            v[base] += hits
            v[base + 1] += misses
            v[base + 2] += nbytes
            v[base + 3] += errors
            v[base + 4] += corrupt

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            values = list(self._values)
        return {t: dict(zip(FIELDS, values[self._row[t]:self._row[t] + len(FIELDS)]))
                for t in self.tiers}

    def reset(self) -> None:
        with self._lock:
            for i in range(len(self._values)):
                self._values[i] = 0


def delta(after: dict[str, dict[str, int]], before: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """Per-tier difference of two snapshots (what happened between them)."""
    return {t: {f: after[t][f] - before.get(t, {}).get(f, 0) for f in FIELDS} for t in after}


class TierStatsCollector(Collector):
    """Exposes a ``TierStats`` as ``blobtier_tier_<field>_total{tier=...}``."""

    def __init__(self, stats: TierStats, namespace: str = "blobtier") -> None:
        self.stats = stats
        self.namespace = namespace

    def collect(self) -> Iterator[CounterMetricFamily]:
        snap = self.stats.snapshot()
        for f in FIELDS:
            fam = CounterMetricFamily(f"{self.namespace}_tier_{f}", f"Chunk {f} per cache tier",
                                      labels=["tier"])
            for tier, values in snap.items():
                fam.add_metric([tier], values[f])
            yield fam


class StallMetrics:
    """The data-stall series of one registry (``DataStallMeter`` feeds them)."""

    def __init__(self, registry: CollectorRegistry | None = None, namespace: str = "blobtier") -> None:
        registry = registry if registry is not None else REGISTRY
        self.wait = Counter(f"{namespace}_data_stall_seconds", "Time the training loop waited for data",
                            registry=registry)
        self.step = Counter(f"{namespace}_step_seconds", "Time of training steps, waits included",
                            registry=registry)
        self.samples = Counter(f"{namespace}_samples", "Samples delivered to the training loop",
                               registry=registry)
        self.wait_per_step = Histogram(f"{namespace}_data_wait_seconds", "Wait for one batch",
                                       registry=registry,
                                       buckets=(0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                0.5, 1, 2.5, 5, 10))


_default_stall: StallMetrics | None = None


def default_stall_metrics() -> StallMetrics:
    """The series on the default registry, created once per process."""
    global _default_stall
    if _default_stall is None:
        _default_stall = StallMetrics()
    return _default_stall


LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
"""Seconds: the buckets of every per-request latency histogram."""


class RpcMetrics:
    """Per-method series of one gRPC service on ``registry``:
    ``blobtier_<subsystem>_requests_total``, ``..._errors_total`` (answered with an error
    status) and the histogram ``..._request_seconds``, each labelled ``method``."""

    def __init__(self, subsystem: str, methods: Sequence[str], registry: CollectorRegistry,
                 namespace: str = "blobtier") -> None:
        prefix = f"{namespace}_{subsystem}"
        self.requests = Counter(f"{prefix}_requests", "RPCs received", ["method"], registry=registry)
        self.errors = Counter(f"{prefix}_errors", "RPCs answered with an error", ["method"],
                              registry=registry)
        self.seconds = Histogram(f"{prefix}_request_seconds", "Time to answer one RPC", ["method"],
                                 registry=registry, buckets=LATENCY_BUCKETS)
        for method in methods:  # every series exists (at 0) before its first request
            self.requests.labels(method)
            self.errors.labels(method)
            self.seconds.labels(method)

    @contextmanager
    def observe(self, method: str) -> Iterator[None]:
        """Count and time one call of ``method``; an exception out of it is an error."""
        start = time.perf_counter()
        self.requests.labels(method).inc()
        try:
            yield
        except GeneratorExit:  # the client stopped reading a stream (e.g. a cancelled hedge)
            raise
        except BaseException:
            self.errors.labels(method).inc()
            raise
        finally:
            self.seconds.labels(method).observe(time.perf_counter() - start)


class _Endpoints:
    """The metrics endpoints of this process. A forked child closes its copies of their
    listening sockets before any of its code runs: a child holding one would keep the
    port bound (and its connections unanswered) after the parent exits."""

    def __init__(self) -> None:
        self.serving: weakref.WeakSet[Any] = weakref.WeakSet()
        self.inherited: weakref.WeakSet[Any] = weakref.WeakSet()

    def _after_fork_in_child(self) -> None:
        for server in list(self.serving):
            server.socket.close()  # closed, not shut down: the parent still serves on it
            self.inherited.add(server)
        self.serving = weakref.WeakSet()


_ENDPOINTS = _Endpoints()
forks.register(_ENDPOINTS)


def serve_metrics(port: int, registry: CollectorRegistry) -> Any:
    """Serve ``registry`` on ``127.0.0.1:port`` (0 picks a port: ``.server_port``); every
    service's endpoint starts here, and ``stop_metrics`` frees its port."""
    from prometheus_client import start_http_server

    server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    _ENDPOINTS.serving.add(server)
    return server


def stop_metrics(server: Any) -> None:
    if server in _ENDPOINTS.inherited:
        return  # the parent's, served by a thread this child does not have
    server.shutdown()
    server.server_close()  # or the port stays bound until the object is collected
