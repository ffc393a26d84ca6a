"""A chunk server's Prometheus series.

Per RPC method (``method`` label: Get, Put, Delete, Stat, List, Compact):
``blobtier_chunkserver_requests_total``, ``blobtier_chunkserver_errors_total`` (answered
with an error status) and the histogram ``blobtier_chunkserver_request_seconds`` (a
streamed Get is timed to its last piece). Read from the fault injector when scraped:
``blobtier_chunkserver_sent_bytes_total`` (chunk bytes served: the block layer's egress),
``blobtier_chunkserver_received_bytes_total``, and ``blobtier_chunkserver_faults_total``
(``kind``: refused, errors, delayed, stragglers, throttled, corrupted, cancelled), plus the
gauge ``blobtier_chunkserver_down`` (1 while set down).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from blobtier.blockstore_sim.faults import FaultInjector
from blobtier.metrics import RpcMetrics

METHODS = ("Get", "Put", "Delete", "Stat", "List", "Compact")
FAULT_KINDS = ("refused", "errors", "delayed", "stragglers", "throttled", "corrupted", "cancelled")


class FaultCollector(Collector):
    def __init__(self, faults: FaultInjector, prefix: str) -> None:
        self.faults = faults
        self.prefix = prefix

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        counters = self.faults.counters()
        for name in ("sent", "received"):  # the unit last: <what>_bytes_total
            yield CounterMetricFamily(f"{self.prefix}_{name}_bytes", f"chunk bytes {name}",
                                      value=counters[f"bytes_{name}"])
        fam = CounterMetricFamily(f"{self.prefix}_faults", "requests hit by an injected fault",
                                  labels=["kind"])
        for kind in FAULT_KINDS:
            fam.add_metric([kind], counters[kind])
        yield fam
        yield GaugeMetricFamily(f"{self.prefix}_down", "1 while the server is set down",
                                value=float(self.faults.profile.down))


class ChunkServerMetrics(RpcMetrics):
    """Every series of one chunk server, on ``registry``."""

    def __init__(self, faults: FaultInjector, registry: CollectorRegistry | None = None,
                 namespace: str = "blobtier") -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        super().__init__("chunkserver", METHODS, self.registry, namespace)
        self.registry.register(FaultCollector(faults, f"{namespace}_chunkserver"))
