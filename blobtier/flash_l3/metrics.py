"""A flash node's Prometheus series, read from its components' counters when scraped.

Counters (``blobtier_flash_<name>_total``): hits, misses, read_bytes, written_bytes,
inserts, admissions_rejected, evicted_regions, evicted_entries, reinserted, corrupt,
io_errors, write_errors, disk_full, dropped, and read-through fills, fill_failures and
coalesced (requests that waited on another's fill). Gauges: entries (index), region_fill_ratio
(share of the capacity written), used_bytes, capacity_bytes, regions. Histograms:
``blobtier_flash_fill_seconds``, the time of each batch read from the block layer, and
``blobtier_flash_get_seconds``, the time to answer one Get (hits and read-through alike).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from blobtier.flash_l3.cache import FlashCache
from blobtier.flash_l3.readthrough import ReadThrough

_COUNTERS = ("hits", "located", "misses", "bytes_read", "bytes_written", "inserts", "admissions_rejected",
             "evicted_regions", "evicted_entries", "reinserted", "corrupt", "io_errors",
             "write_errors", "disk_full", "dropped")
_EXPORTED = {"bytes_read": "read_bytes", "bytes_written": "written_bytes"}  # the unit last
_GAUGES = (("entries", "entries", "chunks in the index"),
           ("region_fill", "region_fill_ratio", "share of the capacity written"),
           ("used_bytes", "used_bytes", "bytes of entries in the regions"),
           ("capacity", "capacity_bytes", "most bytes the regions may take"),
           ("regions", "regions", "region files"))


class FlashCollector(Collector):
    def __init__(self, cache: FlashCache, readthrough: ReadThrough | None = None,
                 namespace: str = "blobtier") -> None:
        self.cache = cache
        self.readthrough = readthrough
        self.prefix = f"{namespace}_flash"

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats = self.cache.stats()
        for name in _COUNTERS:
            yield CounterMetricFamily(f"{self.prefix}_{_EXPORTED.get(name, name)}", f"flash cache {name}",
                                      value=stats[name])
        for key, name, what in _GAUGES:
            yield GaugeMetricFamily(f"{self.prefix}_{name}", f"flash cache {what}", value=stats[key])
        if self.readthrough is not None:
            for name, value in self.readthrough.counters.items():
                yield CounterMetricFamily(f"{self.prefix}_{name}", f"flash read-through {name}",
                                          value=value)


class FlashMetrics:
    """Every series of one node, on ``registry``. The read-through layer reports its fills
    to ``observe_fill`` and its counters once ``track``-ed."""

    def __init__(self, cache: FlashCache, registry: CollectorRegistry, namespace: str = "blobtier") -> None:
        self.registry = registry
        self._collector = FlashCollector(cache, None, namespace)
        registry.register(self._collector)
        self.fill_seconds = Histogram(f"{namespace}_flash_fill_seconds",
                                      "Time of one batch read from the block layer", registry=registry,
                                      buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                               1, 2.5, 5, 10))
        self.get_seconds = Histogram(f"{namespace}_flash_get_seconds", "Time to answer one Get",
                                     registry=registry,
                                     buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                              0.5, 1, 2.5, 5, 10))

    def observe_get(self, seconds: float) -> None:
        self.get_seconds.observe(seconds)

    def observe_fill(self, seconds: float) -> None:
        self.fill_seconds.observe(seconds)

    def track(self, readthrough: ReadThrough) -> None:
        self._collector.readthrough = readthrough
