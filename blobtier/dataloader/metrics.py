"""The trainer's metrics endpoint: data stall and the cache, DataLoader workers included.

``serve_metrics(port, client)`` serves, on one endpoint, the data-stall series that
``DataStallMeter`` feeds (``blobtier_data_stall_seconds_total``, the per-batch wait
histogram ``blobtier_data_wait_seconds``, ``blobtier_step_seconds_total``,
``blobtier_samples_total``) and the client's per-tier counters
(``blobtier_tier_{hits,misses,bytes,errors,corrupt}_total{tier=...}``). The tier counters
live in shared memory (``blobtier.metrics.TierStats``): DataLoader workers forked from the
trainer add their reads to them, so the endpoint counts every worker's reads, not only the
trainer process's.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.registry import Collector

import blobtier
from blobtier import metrics
from blobtier.metrics import TierStatsCollector, default_stall_metrics


class _Joined(Collector):
    """Several collectors (or registries) as one."""

    def __init__(self, parts: Iterable[Any]) -> None:
        self.parts = list(parts)

    def collect(self) -> Iterator[Any]:
        for part in self.parts:
            yield from part.collect()


def serve_metrics(port: int = 0, client: blobtier.Client | None = None,
                  registry: CollectorRegistry | None = None) -> Any:
    """Serve the data-stall series and ``client``'s tier counters on ``127.0.0.1:port``.

    Args:
        port: 0 picks a free one (``server.server_port``).
        client: whose tier counters to add (its DataLoader workers' included); None: the
            stall series only.
        registry: where the stall series are (the one given to ``StallMetrics``);
            default the process's default registry, which ``DataStallMeter`` feeds.

    Returns the HTTP server; ``stop_metrics(server)`` frees the port.

    Raises:
        OSError: the port is taken (the message names it; errno EADDRINUSE).
    """
    if registry is None:
        registry = REGISTRY
        default_stall_metrics()  # the series exist (at 0) before the first batch
    parts: list[Any] = [registry]
    if client is not None:
        parts.append(TierStatsCollector(client.tier_stats))
    endpoint = CollectorRegistry(auto_describe=False)
    endpoint.register(_Joined(parts))
    try:
        return metrics.serve_metrics(port, endpoint)
    except OSError as exc:  # the bare "Address already in use" names no port
        raise OSError(exc.errno, f"cannot serve metrics on 127.0.0.1:{port}: {exc.strerror}") from exc


def stop_metrics(server: Any) -> None:
    """Stop an endpoint ``serve_metrics`` started and free its port."""
    metrics.stop_metrics(server)
