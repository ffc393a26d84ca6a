"""A chunk server's Prometheus series.

Per RPC method (``method`` label: Get, Put, Delete, Stat, List, Compact):
``blobtier_chunkserver_requests_total``, ``blobtier_chunkserver_errors_total`` (answered
with an error status) and the histogram ``blobtier_chunkserver_request_seconds`` (a
streamed Get is timed to its last piece). Read from the fault injector when scraped:
``blobtier_chunkserver_bytes_sent_total`` (chunk bytes served: the block layer's egress),
``blobtier_chunkserver_bytes_received_total``, and ``blobtier_chunkserver_faults_total``
(``kind``: refused, errors, delayed, stragglers, throttled, corrupted, cancelled), plus the
gauge ``blobtier_chunkserver_down`` (1 while set down).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from blobtier.blockstore_sim.faults import FaultInjector

METHODS = ("Get", "Put", "Delete", "Stat", "List", "Compact")
FAULT_KINDS = ("refused", "errors", "delayed", "stragglers", "throttled", "corrupted", "cancelled")
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class FaultCollector(Collector):
    def __init__(self, faults: FaultInjector, prefix: str) -> None:
        self.faults = faults
        self.prefix = prefix

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        counters = self.faults.counters()
        for name in ("bytes_sent", "bytes_received"):
            yield CounterMetricFamily(f"{self.prefix}_{name}", f"chunk bytes {name.split('_')[1]}",
                                      value=counters[name])
        fam = CounterMetricFamily(f"{self.prefix}_faults", "requests hit by an injected fault",
                                  labels=["kind"])
        for kind in FAULT_KINDS:
            fam.add_metric([kind], counters[kind])
        yield fam
        yield GaugeMetricFamily(f"{self.prefix}_down", "1 while the server is set down",
                                value=float(self.faults.profile.down))


class ChunkServerMetrics:
    """Every series of one chunk server, on ``registry``."""

    def __init__(self, faults: FaultInjector, registry: CollectorRegistry | None = None,
                 namespace: str = "blobtier") -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        prefix = f"{namespace}_chunkserver"
        self.requests = Counter(f"{prefix}_requests", "RPCs received", ["method"], registry=self.registry)
        self.errors = Counter(f"{prefix}_errors", "RPCs answered with an error", ["method"],
                              registry=self.registry)
        self.seconds = Histogram(f"{prefix}_request_seconds", "Time to answer one RPC", ["method"],
                                 registry=self.registry, buckets=LATENCY_BUCKETS)
        self.registry.register(FaultCollector(faults, prefix))
        for method in METHODS:  # every series exists (at 0) before its first request
            self.requests.labels(method)
            self.errors.labels(method)
            self.seconds.labels(method)

    @contextmanager
    def observe(self, method: str) -> Iterator[None]:
        start = time.perf_counter()
        self.requests.labels(method).inc()
        try:
            yield
        except GeneratorExit:  # the client stopped reading (e.g. a hedge it cancelled)
            raise
        except BaseException:
            self.errors.labels(method).inc()
            raise
        finally:
            self.seconds.labels(method).observe(time.perf_counter() - start)
