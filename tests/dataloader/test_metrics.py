"""The trainer's metrics endpoint shows the stall and every DataLoader worker's reads."""

from __future__ import annotations

import errno
import urllib.request

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from blobtier.dataloader import BlobDataLoader, BlobDataset, DataStallMeter, serve_metrics, stop_metrics
from blobtier.metrics import StallMetrics


def scrape(server) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


@pytest.fixture
def endpoint(client):
    registry = CollectorRegistry()
    server = serve_metrics(0, client, registry=registry)
    yield server, StallMetrics(registry)
    stop_metrics(server)


def test_endpoint_shows_stall_and_worker_counters(client, endpoint):
    server, stall = endpoint
    client.put_many({f"met/{i:02d}": bytes([i]) * 2000 for i in range(40)})
    ds = BlobDataset("met/", client=client)
    assert client.stats()["origin"]["hits"] == 0
    meter = DataStallMeter(count=len, metrics=stall)
    loader = BlobDataLoader(ds, batch_size=8, num_workers=2, collate_fn=list)
    assert sum(len(b) for b in meter.iterate(loader)) == 40
    got = scrape(server)
    # The reads happened in the two worker processes only; the trainer read nothing.
    assert got[("blobtier_tier_hits_total", (("tier", "origin"),))] >= 40
    assert got[("blobtier_tier_bytes_total", (("tier", "origin"),))] >= 40 * 2000
    assert got[("blobtier_samples_total", ())] == 40
    assert got[("blobtier_data_wait_seconds_count", ())] == 5
    assert got[("blobtier_data_stall_seconds_total", ())] > 0
    assert ("blobtier_step_seconds_total", ()) in got


def test_default_registry_endpoint_has_the_stall_series():
    server = serve_metrics(0)
    try:
        got = scrape(server)
    finally:
        stop_metrics(server)
    assert ("blobtier_data_stall_seconds_total", ()) in got
    assert not any(name.startswith("blobtier_tier_") for name, _ in got)


def test_a_taken_port_is_an_error_naming_it_and_stop_is_idempotent(client):
    first = serve_metrics(0, client)
    try:
        port = first.server_port
        with pytest.raises(OSError, match=f"127.0.0.1:{port}") as caught:
            serve_metrics(port, client)
        assert caught.value.errno == errno.EADDRINUSE
    finally:
        stop_metrics(first)
        stop_metrics(first)  # twice: nothing to do, no hang
