"""The flash series on an injected registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from blobtier.flash_l3.cache import FlashCache
from blobtier.flash_l3.metrics import FlashMetrics
from blobtier.flash_l3.readthrough import ReadThrough
from tests.flash_l3.helpers import MemorySource, keys_and_data


def test_series_follow_the_cache_and_the_fills(tmp_path):
    cache = FlashCache(str(tmp_path), 4 << 20, region_size=1 << 20)
    registry = CollectorRegistry()
    metrics = FlashMetrics(cache, registry)
    source = MemorySource()
    rt = ReadThrough(cache, source, on_fill=metrics.observe_fill)
    metrics.track(rt)
    rec, _ = source.add(100_000)
    rt.read([(rec, 0), (rec, 1)])
    rt.read([(rec, 0)])
    for key, data in keys_and_data(40, 200_000).items():  # fills the cache: regions evicted
        cache.put(key, data)
    value = registry.get_sample_value
    assert value("blobtier_flash_hits_total") == 1
    assert value("blobtier_flash_misses_total") == 2
    assert value("blobtier_flash_fills_total") == 2
    assert value("blobtier_flash_fill_seconds_count") == 1
    assert value("blobtier_flash_evicted_regions_total") >= 1
    assert value("blobtier_flash_entries") == cache.stats()["entries"]
    assert 0 < value("blobtier_flash_region_fill_ratio") <= 1
    assert value("blobtier_flash_capacity_bytes") == 4 << 20
    assert value("blobtier_flash_admissions_rejected_total") == 0
    cache.close()
