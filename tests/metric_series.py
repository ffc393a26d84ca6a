"""Every service's Prometheus endpoint, started for real on a free port and scraped: what the
metric-name, README-table and Grafana tests compare against."""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

from prometheus_client.parser import text_string_to_metric_families

Series = dict[str, tuple[str, tuple[str, ...]]]
"""exposed name (counters with ``_total``) -> (type, label names)"""


def scrape(port: int) -> Series:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    out: Series = {}
    for fam in text_string_to_metric_families(text):
        if not fam.name.startswith("blobtier_") or fam.name.endswith("_created"):
            continue  # the client library's own (process_*; each counter's creation time)
        labels = sorted({k for s in fam.samples for k in s.labels if k not in ("le", "quantile")})
        name = fam.name + "_total" if fam.type == "counter" else fam.name
        out[name] = (fam.type, tuple(labels))
    return out


def _chunk_server(stack: ExitStack, tmp: str) -> int:
    from blobtier.blockstore_sim.chunk_server import ChunkServer

    s = ChunkServer(os.path.join(tmp, "block"), metrics_port=0)
    stack.callback(s.stop, 0)
    return s.metrics_port


def _flash_node(stack: ExitStack, tmp: str) -> int:
    from blobtier.config import FlashNodeConfig
    from blobtier.flash_l3.service import FlashNode
    from tests.flash_l3.helpers import MemorySource

    node = FlashNode(FlashNodeConfig(os.path.join(tmp, "flash"), 8 << 20, region_bytes=1 << 20,
                                     metrics_port=0), MemorySource())
    stack.callback(node.stop, 0)
    return node.metrics_port


def _host_daemon(stack: ExitStack, tmp: str) -> int:
    from blobtier.cache_l1_l2.daemon import HostDaemon

    sock_dir = os.path.join(tmp, "run")
    os.makedirs(sock_dir, mode=0o700)
    daemon = HostDaemon(8 << 20, socket_path=os.path.join(sock_dir, "d.sock"), metrics_port=0,
                        listen="127.0.0.1:0")  # an L2 peer: its served_* series too
    stack.callback(daemon.stop)
    return daemon.metrics_port


def _metadata_service(stack: ExitStack, tmp: str) -> int:
    from blobtier.metadata.rocksdb_store import RocksDBStore
    from blobtier.metadata.service import MetadataServer

    server = MetadataServer(RocksDBStore(os.path.join(tmp, "meta"), writable=True), metrics_port=0)
    stack.callback(server.stop, 0)
    return server.metrics_port


def _scrub(stack: ExitStack, tmp: str) -> int:
    from prometheus_client import CollectorRegistry

    from blobtier.metrics import serve_metrics, stop_metrics
    from blobtier.sdk.scrub import ScrubMetrics

    registry = CollectorRegistry()
    ScrubMetrics(registry)  # what `blobtier scrub --metrics-port` serves
    http = serve_metrics(0, registry)
    stack.callback(stop_metrics, http)
    return http.server_port


def _trainer(stack: ExitStack, tmp: str) -> int:
    from prometheus_client import CollectorRegistry

    import blobtier
    from blobtier.dataloader.metrics import serve_metrics, stop_metrics
    from blobtier.metrics import StallMetrics

    client = blobtier.connect(os.path.join(tmp, "region"))
    stack.callback(client.close)
    # The stall series on a registry of their own, as a trainer's default registry holds
    # them: this test process's default registry also holds what other tests registered
    # there (scrub's counters), which a trainer does not export.
    registry = CollectorRegistry()
    StallMetrics(registry)
    http = serve_metrics(0, client, registry)
    stack.callback(stop_metrics, http)
    return http.server_port


SERVICES: dict[str, Callable[[ExitStack, str], int]] = {
    "chunk server": _chunk_server, "flash node": _flash_node, "host daemon": _host_daemon,
    "metadata service": _metadata_service, "scrub": _scrub, "trainer": _trainer}
"""The README's names for them (the first column of its metrics table)."""


@contextmanager
def every_service(tmp: str) -> Iterator[dict[str, Series]]:
    """Start every service in this process (in ``tmp``), yield what each exports, stop them."""
    with ExitStack() as stack:
        yield {name: scrape(start(stack, tmp)) for name, start in SERVICES.items()}


@contextmanager
def service_pid() -> Iterator[int]:
    """The pid of a live process whose command line names blobtier, as ``runstate.pid_alive``
    asks of a service (the services these tests start run in the test's own process)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "blobtier-stand-in"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()
