"""``blobtier plan`` against real runs over the same trace: the predicted hit ratios and
egress are what a real client measures, within 2 points.

Each real run reads a dataset in ``BlobSampler``'s order for 2 epochs through a real
client: its own L1 arena (smaller than the dataset), or a real flash node (L3) over real
chunk servers. The planner runs the same synthetic workload (and the run's recorded trace).
"""

from __future__ import annotations

import os

import pytest

import blobtier
from blobtier.config import FlashNodeConfig
from blobtier.flash_l3.service import FlashNode
from blobtier.plan import Recorder, Region, Synthetic, Timing, predict, recorded
from tests.integration.test_flash_tier import chunk_servers, node_source, served  # noqa: F401 (a fixture)

torch = pytest.importorskip("torch")
from blobtier.dataloader.sampler import BlobSampler  # noqa: E402  (needs torch)

SIZE, CHUNK, SEED, EPOCHS, BATCH = 60_000, 64 * 1024, 3, 2, 8


def read_epochs(client: blobtier.Client, keys: list[str], recorder: Recorder | None = None,
                announce: bool = False) -> None:
    sampler = BlobSampler(keys, seed=SEED, rank=0, world_size=1)
    for epoch in range(EPOCHS):
        order = sampler.order(epoch)
        if announce:  # what BlobSampler does through BlobDataset (no progress: no prefetcher)
            client.announce([keys[i] for i in order + sampler.order(epoch + 1)])
        for start in range(0, len(order), BATCH):  # a DataLoader batch: one get_many
            batch = [keys[i] for i in order[start:start + BATCH]]
            assert [len(v) for v in client.get_many(batch)] == [SIZE] * len(batch)
            for key in batch if recorder is not None else ():
                recorder.record(host=0, job=0, key=key, size=SIZE, epoch=epoch)


def ratio(stats: dict, tier: str) -> float:
    return stats[tier]["hits"] / (stats[tier]["hits"] + stats[tier]["misses"])


def plan(n: int, region: Region) -> dict:
    spec = Synthetic(hosts=1, jobs=1, samples=n, sample_bytes=SIZE, chunk_bytes=CHUNK, epochs=EPOCHS,
                     seeds=(SEED,))
    return predict(spec.reads(1.0), region, Timing(batch=BATCH), SIZE)


@pytest.mark.parametrize("policy", ["sieve", "keep", "clairvoyant"])
def test_l1_hit_ratio_matches_a_real_run(region, tmp_path, policy):
    n, l1 = 240, 4 << 20  # 14 MB of samples over a 4 MiB arena (64 slots)
    keys = [f"ds/{i:04d}" for i in range(n)]
    cfg = {"client": {"chunk_size": CHUNK}, "cache": {"l1_bytes": l1, "l1_policy": policy}}
    with blobtier.connect(region, **cfg) as c:
        c.put_many({k: os.urandom(SIZE) for k in keys})
    trace = str(tmp_path / "trace.jsonl")
    with blobtier.connect(region, **cfg) as c, Recorder(trace) as rec:
        read_epochs(c, keys, rec, announce=policy == "clairvoyant")
        real = ratio(c.stats(), "l1")
    predicted = plan(n, Region(l1_bytes=l1, l1_policy=policy, prefetch=False))
    assert abs(predicted.hit_ratio["L1"] - real) <= 0.02, (predicted.hit_ratio, real)
    # One host, one job, no sampling: the replay is the run itself, hit for hit (a model
    # that looked up each sample of a batch after the previous one's eviction is not).
    assert round(predicted.hit_ratio["L1"] * n * EPOCHS) == round(real * n * EPOCHS)
    assert abs(predicted.served["L1"] - real) <= 0.02
    replayed = predict(recorded(trace, 1.0), Region(l1_bytes=l1, l1_policy=policy, prefetch=False),
                       Timing(batch=BATCH), SIZE)
    assert abs(replayed.hit_ratio["L1"] - real) <= 0.02
    if policy == "keep":  # a kept cache holds its share of the dataset: it must show
        assert real > 0.1  # 64 of 240 samples held: 13% over 2 epochs


def test_l3_hit_ratio_and_egress_match_a_real_run(region, tmp_path, chunk_servers):  # noqa: F811
    n = 160  # 9.6 MB over a 6 MiB flash node of 1 MiB regions (16 entries each)
    keys = [f"ds/{i:04d}" for i in range(n)]
    block = {"endpoints": [s.address for s in chunk_servers]}
    no_l1 = {"l1_bytes": 0, "daemon": "off"}
    with blobtier.connect(region, block=block, client={"chunk_size": CHUNK}, cache=no_l1) as c:
        c.put_many({k: os.urandom(SIZE) for k in keys})
    source = node_source(block["endpoints"])
    config = FlashNodeConfig(str(tmp_path / "flash"), 6 << 20, region_bytes=1 << 20, node_id=0)
    node = FlashNode(config, source)
    try:
        before = served(chunk_servers)
        with blobtier.connect(region, block=block, client={"chunk_size": CHUNK}, cache=no_l1,
                              flash={"endpoints": [node.address], "request_timeout_s": 10}) as c:
            read_epochs(c, keys)
            real = ratio(c.stats(), "l3")
        egress = served(chunk_servers)[1] - before[1]
    finally:
        node.stop(0)
        source.close()
    predicted = plan(n, Region(l1_bytes=0, l3_bytes=6 << 20, l3_region_bytes=1 << 20, prefetch=False))
    assert 0.05 < real < 0.5  # the flash node holds part of the dataset: some hits, not all
    assert abs(predicted.hit_ratio["L3"] - real) <= 0.02, (predicted.hit_ratio, real)
    assert abs(sum(predicted.egress) - egress) <= 0.05 * egress, (predicted.egress, egress)
