from __future__ import annotations

import multiprocessing

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from blobtier.metrics import FIELDS, TIERS, TierStats, TierStatsCollector, delta


def test_add_snapshot_reset():
    stats = TierStats()
    assert set(stats.snapshot()) == set(TIERS)
    assert all(v == 0 for row in stats.snapshot().values() for v in row.values())
    stats.add("l1", hits=3, nbytes=100)
    stats.add("l1", misses=2, errors=1, corrupt=4)
    stats.add("origin", hits=1)
    snap = stats.snapshot()
    assert snap["l1"] == {"hits": 3, "misses": 2, "bytes": 100, "errors": 1, "corrupt": 4}
    assert snap["origin"]["hits"] == 1 and snap["l2"] == dict.fromkeys(FIELDS, 0)
    stats.reset()
    assert all(v == 0 for row in stats.snapshot().values() for v in row.values())


def test_custom_tiers_and_delta():
    stats = TierStats(["a", "b"])
    before = stats.snapshot()
    stats.add("b", misses=5)
    d = delta(stats.snapshot(), before)
    assert d["b"]["misses"] == 5 and d["a"]["misses"] == 0
    assert set(d) == {"a", "b"}


def _child(stats: TierStats) -> None:
    for _ in range(100):
        stats.add("l2", hits=1, nbytes=10)


def test_forked_children_count_into_parent():
    stats = TierStats()
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_child, args=(stats,)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert stats.snapshot()["l2"]["hits"] == 300
    assert stats.snapshot()["l2"]["bytes"] == 3000


def _samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    text = generate_latest(registry).decode()
    return {(s.name, s.labels["tier"]): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_prometheus_collector():
    stats = TierStats()
    stats.add("l1", hits=7)
    stats.add("origin", corrupt=2)
    registry = CollectorRegistry()
    registry.register(TierStatsCollector(stats))
    text = generate_latest(registry).decode()
    assert 'blobtier_tier_hits_total{tier="l1"} 7.0' in text
    samples = _samples(registry)
    assert samples[("blobtier_tier_corrupt_total", "origin")] == 2
    assert {name for name, _ in samples} == {f"blobtier_tier_{f}_total" for f in FIELDS}
    assert {tier for _, tier in samples} == set(TIERS)
    stats.add("l1", hits=1)
    assert _samples(registry)[("blobtier_tier_hits_total", "l1")] == 8
